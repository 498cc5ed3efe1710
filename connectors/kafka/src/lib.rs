//! Kafka in three roles: `source` (a blocking reader over librdkafka's
//! `BaseConsumer` and the consumer-group member; offsets are committed to
//! the group after each Delta commit), `producer` (the republish sink's
//! transactional producer) and `shuffle` (the repartition stage's consumer
//! and transactional producer).

mod error;
mod producer;
mod shuffle;
mod source;

pub use error::{KafkaSourceError, Result};
pub use producer::publisher::{
    OutRecord, Position, ProgressTopicCheck, PublisherConfig, TransactionalPublisher,
};
pub use shuffle::{
    SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TOPIC_HEADER, Shuffle, ShuffleConfig,
};
pub use source::member::{GroupMember, Membership};
pub use source::reader::{
    KafkaHeaders, KafkaReader, Polled, ReaderConfig, StartAt, headers_of, raw_record,
};
