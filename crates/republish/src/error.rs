use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error(transparent)]
    Delta(#[from] tributary_delta::DeltaSinkError),
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::KafkaSourceError),
    #[error(transparent)]
    Registry(#[from] tributary_avro::AvroError),
    #[error("republish.filter: {0}")]
    Filter(String),
    #[error("republish: {0}")]
    Columns(String),
    #[error(
        "table version {version} is no longer in the Delta log (log retention deleted it) \
         and was never republished; raise compaction.log_retention, or republish from a \
         later version by resetting the republisher's progress"
    )]
    VersionGone { version: u64 },
    #[error("encoding rows: {0}")]
    Encode(String),
    #[error("Arrow error: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
}

impl Classify for RepublishError {
    fn kind(&self) -> ErrorKind {
        match self {
            RepublishError::Delta(e) => e.kind(),
            RepublishError::Kafka(e) => e.kind(),
            RepublishError::Registry(e) => e.kind(),
            RepublishError::Filter(_)
            | RepublishError::Columns(_)
            | RepublishError::VersionGone { .. } => ErrorKind::User,
            RepublishError::Encode(_) | RepublishError::Arrow(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = RepublishError> = std::result::Result<T, E>;
