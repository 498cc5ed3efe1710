use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {message}")]
    Rocks { path: String, message: String },
    #[error("state store: batch {batch_id} cannot commit after batch {committed}")]
    OutOfOrder { committed: u64, batch_id: u64 },
    #[error("state snapshots at {uri}: {message}")]
    Snapshot { uri: String, message: String },
    #[error("state store at {path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
}

impl Classify for StateError {
    fn kind(&self) -> ErrorKind {
        match self {
            // A local disk failing (full, unwritable): the operator must act.
            StateError::Rocks { .. } | StateError::Snapshot { .. } => ErrorKind::External,
            StateError::OutOfOrder { .. } | StateError::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;
