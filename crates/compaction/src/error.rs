use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error(transparent)]
    Delta(#[from] tributary_delta::DeltaSinkError),
    #[error("z-order: {0}")]
    ZOrder(String),
    #[error("Arrow error: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for CompactionError {
    fn kind(&self) -> ErrorKind {
        match self {
            CompactionError::Delta(e) => e.kind(),
            CompactionError::ZOrder(_) => ErrorKind::User,
            CompactionError::Arrow(_) | CompactionError::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = CompactionError> = std::result::Result<T, E>;
