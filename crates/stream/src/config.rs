//! The operators' own configuration: what the engine derives from a table
//! spec, in the operators' terms (durations in microseconds, no YAML).

pub use tributary_core::{WINDOW_END, WINDOW_START};

/// An aggregate column of a window row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    /// The output column.
    pub name: String,
    pub function: AggregateFunction,
    /// The input column; `count` without one counts rows.
    pub column: Option<String>,
}

/// Rolling features: each row gets its key's aggregates over the rows in
/// `[t - range, t]` read before it (see `features`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub group_by: Vec<String>,
    /// Microseconds.
    pub range: i64,
    /// Not `first` / `last`.
    pub aggregations: Vec<Aggregation>,
}

/// Aggregate functions. Null inputs are ignored, as in SQL, except by
/// `First` and `Last`, which return the value of the earliest / latest row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFunction {
    Count,
    /// Exact.
    CountDistinct,
    Sum,
    Min,
    Max,
    Avg,
    /// Value of the row with the earliest event time (ties: the row read first).
    First,
    /// Value of the row with the latest event time (ties: the row read last).
    Last,
}

impl AggregateFunction {
    /// The function's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::Count => "count",
            AggregateFunction::CountDistinct => "count_distinct",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Min => "min",
            AggregateFunction::Max => "max",
            AggregateFunction::Avg => "avg",
            AggregateFunction::First => "first",
            AggregateFunction::Last => "last",
        }
    }
}

/// When window rows are emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// Once, when the watermark passes the window's end.
    #[default]
    Append,
    /// Every batch, for each window it changed (the table upserts them).
    Update,
}
