use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    #[error("Kafka {operation} failed: {source}")]
    Client {
        operation: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic} does not exist or has no partitions")]
    NoSuchTopic { topic: String },
    #[error("the broker listed no offset for partition {partition} of topic {topic}")]
    NoOffsetListed { topic: String, partition: i32 },
    #[error(
        "records of topic {topic} were lost before they were ingested: {detail}. \
         The offsets this pipeline resumes from no longer exist (retention deleted them). \
         Tributary refuses to skip data silently; to accept the loss, reset the checkpoint"
    )]
    DataLoss { topic: String, detail: String },
    #[error(
        "the offsets of topic {topic} went backwards: {detail}. The topic was deleted and \
         recreated, or truncated; reading on would skip or repeat records, so the pipeline \
         stops. To ingest the new topic from its start, give the pipeline a new checkpoint \
         location and table (or a new pipeline name)"
    )]
    OffsetsWentBack { topic: String, detail: String },
    #[error(
        "republisher fenced: another one with transactional.id {transactional_id} took over ({detail}); \
         this one stops without publishing anything more"
    )]
    Fenced {
        transactional_id: String,
        detail: String,
    },
}

impl Classify for KafkaSourceError {
    fn kind(&self) -> ErrorKind {
        match self {
            KafkaSourceError::Config(_)
            | KafkaSourceError::DataLoss { .. }
            | KafkaSourceError::OffsetsWentBack { .. }
            | KafkaSourceError::Fenced { .. } => ErrorKind::User,
            KafkaSourceError::NoSuchTopic { .. }
            | KafkaSourceError::NoOffsetListed { .. }
            | KafkaSourceError::Client { .. } => ErrorKind::External,
        }
    }
}

pub type Result<T, E = KafkaSourceError> = std::result::Result<T, E>;
