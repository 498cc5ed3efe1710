//! Kafka in two roles, one folder each: `source` (a blocking reader over
//! librdkafka's `BaseConsumer` and the consumer-group member; offsets are
//! committed to the group after each Delta commit) and `producer` (the
//! republish sink's transactional producer).

mod error;
mod producer;
mod source;

pub use error::{KafkaSourceError, Result};
pub use producer::publisher::{OutRecord, Position, PublisherConfig, TransactionalPublisher};
pub use source::member::{GroupMember, Membership};
pub use source::reader::{
    KafkaHeaders, KafkaReader, Polled, ReaderConfig, StartAt, headers_of, raw_record,
};
