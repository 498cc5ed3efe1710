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
    #[error(
        "the operator state was written in layout {found} by a newer Tributary; this version \
         reads layouts up to {supported} and would miss what it does not know (remembered \
         keys, open windows). Run the newer version, or reset the pipeline's state"
    )]
    NewerLayout { found: u64, supported: u64 },
}

impl Classify for StreamError {
    fn kind(&self) -> ErrorKind {
        match self {
            StreamError::State(e) => e.kind(),
            StreamError::Spec(_) | StreamError::NewerLayout { .. } => ErrorKind::User,
            StreamError::Arrow(_) | StreamError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;
