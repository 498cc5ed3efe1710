use arrow::error::ArrowError;

/// What can go wrong compiling or evaluating an expression.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The spec's text does not parse (a spec that passed `validate` does).
    #[error("{0}")]
    Parse(String),
    /// The expression does not fit the columns' types, or names a column
    /// the rows do not have.
    #[error("{0}")]
    Type(String),
    /// A value the expression cannot compute (an integer overflow, a
    /// literal that is not a valid timestamp).
    #[error("{0}")]
    Evaluate(String),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

pub type Result<T, E = TransformError> = std::result::Result<T, E>;
