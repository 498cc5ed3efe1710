use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Avro(#[from] tributary_avro::AvroError),
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::KafkaSourceError),
    #[error(transparent)]
    Delta(#[from] tributary_delta::DeltaSinkError),
    #[error(transparent)]
    State(#[from] tributary_state::StateError),
    #[error("event-time operators: {0}")]
    Stream(#[from] tributary_stream::StreamError),
    #[error("offsets log at {path}: {message}")]
    OffsetLog { path: String, message: String },
    #[error(
        "offsets log file {path} is unreadable ({message}); move it aside and start again: \
         its batch is then adopted from the table if it landed there, or planned anew"
    )]
    CorruptPlan { path: String, message: String },
    #[error("a re-run batch differs from its plan: {0}; retrying")]
    ReplayDiffers(String),
    #[error("spec problem: {0}")]
    Spec(String),
    #[error("records do not fit the table: {0}")]
    Schema(String),
    #[error("another instance is writing this group: {0}; re-syncing from the table")]
    ConcurrentInstance(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for EngineError {
    fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Avro(e) => e.kind(),
            EngineError::Kafka(e) => e.kind(),
            EngineError::Delta(e) => e.kind(),
            EngineError::State(e) => e.kind(),
            EngineError::Stream(e) => e.kind(),
            EngineError::OffsetLog { .. }
            | EngineError::ConcurrentInstance(_)
            | EngineError::ReplayDiffers(_) => ErrorKind::External,
            EngineError::Spec(_) | EngineError::Schema(_) => ErrorKind::User,
            EngineError::CorruptPlan { .. } => ErrorKind::Corrupt,
            EngineError::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
