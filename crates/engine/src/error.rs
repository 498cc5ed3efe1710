//! The engine's one error enum: each variant knows whose the problem is
//! (`Classify`), which decides between retrying, stopping and refusing.

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
    #[error("offsets log at {path}: {source}")]
    OffsetLogFile {
        path: String,
        source: std::io::Error,
    },
    #[error("offsets log at {path}: {source}")]
    OffsetLogObject {
        path: String,
        source: object_store::Error,
    },
    #[error(
        "offsets log file {path} is unreadable ({source}); move it aside and start again: \
         its batch is then adopted from the table if it landed there, or planned anew"
    )]
    CorruptPlan {
        path: String,
        source: serde_json::Error,
    },
    #[error("a re-run batch differs from its plan: {0}; retrying")]
    ReplayDiffers(String),
    #[error("spec problem: {0}")]
    Spec(String),
    /// A transform expression failed on the batch's records (an integer
    /// overflow); nothing of the batch was written.
    #[error("{0}; nothing of this batch was written")]
    Transform(#[from] tributary_transform::TransformError),
    #[error("records do not fit the table: {0}")]
    Schema(String),
    #[error("another instance is writing this group: {0}; re-syncing from the table")]
    ConcurrentInstance(String),
    #[error(
        "group {group} of pipeline {pipeline} committed batch {batch} to {table} (its txn \
         version), but neither the checkpoint location {checkpoint} nor the table's log (its \
         JSON commits expired) still records that batch's offsets: the pipeline cannot tell \
         where to resume, and starting over would skip records. Restore the checkpoint \
         location (offsets/{group}/); or, to start over on purpose, give the pipeline a new \
         name and choose source.kafka.starting_offsets"
    )]
    UnknownPosition {
        pipeline: String,
        group: String,
        batch: u64,
        table: String,
        checkpoint: String,
    },
    #[error("cannot start the {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        source: std::io::Error,
    },
    #[error("{task} failed: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("Arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Another instance wrote the batch first: this one wrote nothing of it.
    pub fn lost_to_another_writer(&self) -> bool {
        matches!(
            self,
            EngineError::ConcurrentInstance(_)
                | EngineError::Delta(tributary_delta::DeltaSinkError::ConcurrentWriter { .. })
        )
    }
}

impl Classify for EngineError {
    fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Avro(e) => e.kind(),
            EngineError::Kafka(e) => e.kind(),
            EngineError::Delta(e) => e.kind(),
            EngineError::State(e) => e.kind(),
            EngineError::Stream(e) => e.kind(),
            EngineError::OffsetLogFile { .. }
            | EngineError::OffsetLogObject { .. }
            | EngineError::ConcurrentInstance(_)
            | EngineError::ReplayDiffers(_) => ErrorKind::External,
            EngineError::Spec(_)
            | EngineError::Schema(_)
            | EngineError::Transform(_)
            | EngineError::UnknownPosition { .. } => ErrorKind::User,
            EngineError::CorruptPlan { .. } => ErrorKind::Corrupt,
            // The state directory the spec names cannot be used: the
            // operator must act (as for a spec problem).
            EngineError::StateDir { .. } => ErrorKind::User,
            EngineError::Thread { .. }
            | EngineError::Task { .. }
            | EngineError::Arrow(_)
            | EngineError::Json(_)
            | EngineError::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
