//! Kafka source: a blocking reader over librdkafka's `BaseConsumer`, which
//! polls without an async hop per message (the hot loop runs on its own
//! thread), and commits offsets to the consumer group after each Delta commit.
//! Also the republish sink's transactional producer.

mod callbacks;
mod error;
mod member;
mod publisher;
mod reader;

pub use error::{KafkaSourceError, Result};
pub use member::{GroupMember, Membership};
pub use publisher::{OutRecord, Position, PublisherConfig, TransactionalPublisher};
pub use reader::{
    KafkaHeaders, KafkaReader, Polled, ReaderConfig, StartAt, headers_of, raw_record,
};
