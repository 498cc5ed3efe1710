use tributary_core::{Classify, ErrorKind};

/// One problem found in a spec: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `table.partition_by[0]`; empty for the document itself.
    pub path: String,
    /// 1-based line of the field in the YAML source, when it can be told.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{} problem(s) in spec {file}", problems.len())]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

impl SpecError {
    /// The problems as `file:line: path: message` lines.
    pub fn report(&self) -> Vec<String> {
        match self {
            SpecError::Read { .. } => vec![self.to_string()],
            SpecError::Invalid { file, problems } => problems
                .iter()
                .map(|p| format!("{file}:{}: {p}", p.line.unwrap_or(1)))
                .collect(),
        }
    }
}

impl Classify for SpecError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::User
    }
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;
