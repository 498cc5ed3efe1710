//! The development stack: an in-process Kafka (librdkafka's mock cluster,
//! which speaks the real protocol on localhost), a development schema
//! registry (the Confluent REST subset Tributary and producers use), and
//! generators of realistic click streams and of card transactions with
//! planted fraud. `tributary demo`, `tributary dev`
//! and the benchmarks run on it; a production pipeline never does.

pub mod fraud;
pub mod generator;
pub mod kafka;
pub mod registry;

/// What starting the stack can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("the mock Kafka cluster: {0}")]
    MockCluster(#[from] rdkafka::error::KafkaError),
    #[error("Kafka at {bootstrap_servers}: {source}")]
    Broker {
        bootstrap_servers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create topic {topic} on {bootstrap_servers}: {code}")]
    CreateTopic {
        topic: String,
        bootstrap_servers: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
}

pub type Result<T, E = DevError> = std::result::Result<T, E>;
