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

/// An event-time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Windows of `size` starting every `slide` microseconds, aligned to the
    /// epoch; tumbling windows have `slide == size`.
    Sliding { size: i64, slide: i64 },
    /// Sessions closed by `gap` microseconds without rows.
    Session { gap: i64 },
}

/// What one pipeline's operators do. Times are in microseconds.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The input column holding the event time (timestamp, or long millis).
    pub time_column: String,
    /// Input columns with each row's Kafka partition and offset: they give
    /// a batch's rows the same order on every replay.
    pub partition_column: String,
    pub offset_column: String,
    /// Input columns that are not the table's (left out of output rows).
    pub hidden_columns: Vec<String>,
    pub watermark_delay: i64,
    /// Empty: no deduplication.
    pub dedup_keys: Vec<String>,
    pub window: Option<Window>,
    pub group_by: Vec<String>,
    pub aggregations: Vec<Aggregation>,
    pub output_mode: OutputMode,
    /// Rolling features of the kept rows; not with a window.
    pub features: Option<Features>,
}

impl OperatorConfig {
    /// The input columns the operators read, when their output holds no
    /// input rows (windows hold aggregates): the rest of each row can be
    /// dropped before a batch is operated, which bounds a stateful
    /// backfill's memory by the columns it aggregates. `None` when the
    /// output carries the rows (dedup alone, features).
    pub fn input_columns(&self) -> Option<Vec<String>> {
        if self.window.is_none() || self.features.is_some() {
            return None;
        }
        let mut columns = vec![
            self.time_column.clone(),
            self.partition_column.clone(),
            self.offset_column.clone(),
        ];
        columns.extend(self.dedup_keys.iter().cloned());
        columns.extend(self.group_by.iter().cloned());
        columns.extend(self.aggregations.iter().filter_map(|a| a.column.clone()));
        Some(columns)
    }
}

/// The two watermarks a batch runs with, as Spark's since 3.5: rows are late
/// against the previous batch's watermark, while windows close and keys are
/// forgotten with this batch's. A row that arrives in the batch that closes
/// its window still counts in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// The previous batch's watermark. A row is late when every window it
    /// would update ends at or before it (a session: its row's time plus
    /// the gap), or, for dedup, when its event time is at or before it.
    pub late: Option<i64>,
    /// This batch's watermark: windows and sessions ending at or before it
    /// are final (written in append mode) and dropped from state, dedup keys
    /// expiring at or before it forgotten.
    pub eviction: Option<i64>,
}

impl Watermarks {
    /// Past every event time: every row is late, every window closes and
    /// every key expires (the end of a finite stream).
    pub const PAST_EVERYTHING: Watermarks = Watermarks {
        late: Some(i64::MAX),
        eviction: Some(i64::MAX),
    };
}
