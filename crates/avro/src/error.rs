use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("schema registry at {url} unreachable after {attempts} attempt(s): {message}")]
    RegistryUnavailable {
        url: String,
        attempts: u32,
        message: String,
    },
    #[error("schema registry at {url} refused the request ({status}): {message}")]
    RegistryRejected {
        url: String,
        status: u16,
        message: String,
    },
    #[error("invalid registry configuration: {0}")]
    Config(String),
    #[error("Avro schema {id} cannot be used: {message}")]
    UnsupportedSchema { id: u32, message: String },
    #[error("Avro type cannot be stored in Delta: {0}")]
    UnsupportedType(String),
    #[error("Arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Classify for AvroError {
    fn kind(&self) -> ErrorKind {
        match self {
            AvroError::RegistryUnavailable { .. } => ErrorKind::External,
            AvroError::RegistryRejected { status, .. } if *status >= 500 || *status == 429 => {
                ErrorKind::External
            }
            AvroError::RegistryRejected { .. }
            | AvroError::Config(_)
            | AvroError::UnsupportedSchema { .. }
            | AvroError::UnsupportedType(_) => ErrorKind::User,
            AvroError::Arrow(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = AvroError> = std::result::Result<T, E>;
