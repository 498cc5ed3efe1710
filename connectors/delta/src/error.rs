use deltalake::DeltaTableError;
use tributary_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum DeltaSinkError {
    #[error("invalid table URI {uri}: {message}")]
    Uri { uri: String, message: String },
    #[error("table {uri}: cannot record the data file about to be written: {source}")]
    Announce { uri: String, source: std::io::Error },
    #[error("Delta table {uri}: {source}")]
    Delta {
        uri: String,
        source: Box<DeltaTableError>,
    },
    #[error("table {uri} does not fit the records: {message}")]
    SchemaMismatch { uri: String, message: String },
    #[error(
        "another writer committed batch {batch} of {app_id} to {uri} at the same time; \
         this instance stops writing and re-syncs from the table"
    )]
    ConcurrentWriter {
        uri: String,
        app_id: String,
        batch: u64,
    },
    #[error("table {uri}: {message}")]
    Corrupt { uri: String, message: String },
    #[error(
        "table {uri}: another writer changed the table's metadata while the batch committed \
         ({message}); the batch is retried against the new schema"
    )]
    SchemaMoved { uri: String, message: String },
    #[error(
        "table {uri}: the merge lost the race for the next table version {attempts} times in \
         a row to other writers (other groups' merges, compaction); the batch is retried"
    )]
    Contention { uri: String, attempts: u32 },
    #[error(
        "table {uri}: log file {file} is unreadable ({message}); restore it from the \
         bucket's versioning or a backup: a Delta log commit cannot be rebuilt from data files"
    )]
    CorruptLogFile {
        uri: String,
        file: String,
        message: String,
    },
    #[error("Arrow error: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
}

impl Classify for DeltaSinkError {
    fn kind(&self) -> ErrorKind {
        match self {
            DeltaSinkError::Uri { .. } | DeltaSinkError::SchemaMismatch { .. } => ErrorKind::User,
            DeltaSinkError::Delta { source, .. } => match source.as_ref() {
                DeltaTableError::ObjectStore { .. }
                | DeltaTableError::Io { .. }
                | DeltaTableError::Transaction { .. }
                | DeltaTableError::VersionAlreadyExists(_) => ErrorKind::External,
                DeltaTableError::Arrow { .. } | DeltaTableError::Parquet { .. } => {
                    ErrorKind::Internal
                }
                _ => ErrorKind::External,
            },
            // The checkpoint's disk or store failed (full, unreachable).
            DeltaSinkError::ConcurrentWriter { .. }
            | DeltaSinkError::Announce { .. }
            | DeltaSinkError::Contention { .. }
            | DeltaSinkError::SchemaMoved { .. } => ErrorKind::External,
            DeltaSinkError::CorruptLogFile { .. } => ErrorKind::Corrupt,
            DeltaSinkError::Corrupt { .. } | DeltaSinkError::Arrow(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = DeltaSinkError> = std::result::Result<T, E>;

impl DeltaSinkError {
    pub(crate) fn delta(uri: &str, source: DeltaTableError) -> DeltaSinkError {
        DeltaSinkError::Delta {
            uri: uri.to_string(),
            source: Box::new(source),
        }
    }
}
