use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    State(#[from] tributary_core::StateError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The spec asks for something the records cannot give.
    #[error("{0}")]
    Spec(String),
    #[error("operator state is corrupt: {0}")]
    Corrupt(String),
}

impl Classify for StreamError {
    fn kind(&self) -> ErrorKind {
        match self {
            StreamError::State(e) => e.kind(),
            StreamError::Spec(_) => ErrorKind::User,
            StreamError::Arrow(_) | StreamError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;
