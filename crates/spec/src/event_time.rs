//! Event-time processing in a spec: the event time and its watermark,
//! deduplication, windows, aggregations, output mode and late rows. The
//! rules are Spark's; docs/event-time.md states each with a worked timeline.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// The columns a windowed table has besides its group keys and aggregates.
pub use tributary_core::{WINDOW_END, WINDOW_START};

/// When each row happened, and how long to wait for rows that arrive late.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    /// The record's event-time column: a timestamp, or a long holding
    /// milliseconds since the epoch. Leave it out to use the Kafka record's
    /// timestamp.
    #[serde(default)]
    pub column: Option<String>,
    /// How far behind the newest event time seen a row may still arrive:
    /// the watermark is the greatest event time of the batches before
    /// minus this delay (Spark's `withWatermark`). A row is late when
    /// every window it would update closed at the previous batch's
    /// watermark (dedup: its time is at or before it), as in Spark.
    pub watermark_delay: HumanDuration,
    /// How far past its Kafka record's timestamp a row's event time may be.
    /// A row further in the future (a producer's broken clock, a mistyped
    /// year) goes to the dead-letter table with the reason, and does not
    /// move the watermark: one such row would otherwise make every later
    /// row late. Checked only with `column`, and only for records with a
    /// Kafka timestamp. Spark has no such bound.
    #[serde(default = "default_max_future")]
    #[schemars(default = "default_max_future")]
    pub max_future: HumanDuration,
}

fn default_max_future() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

/// Deduplication: the first row of each key is kept and later rows with the
/// same key are dropped, until the watermark passes the first row's event
/// time plus the watermark delay (Spark's `dropDuplicatesWithinWatermark`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupSpec {
    /// Columns whose values together identify a row.
    pub keys: Vec<String>,
}

/// Event-time windows; rows are grouped by window and `group_by`. Give
/// exactly one of `tumbling`, `sliding` and `session`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Back-to-back windows of `size`, aligned to the epoch.
    #[serde(default)]
    pub tumbling: Option<TumblingSpec>,
    /// Windows of `size` starting every `slide` (aligned to the epoch); a
    /// row belongs to each window that covers it.
    #[serde(default)]
    pub sliding: Option<SlidingSpec>,
    /// Sessions: a session of a group lasts from its first row to its last
    /// row plus `gap`; a row within `gap` of a session extends it, and
    /// sessions that come to overlap merge.
    #[serde(default)]
    pub session: Option<SessionSpec>,
}

/// Tumbling windows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TumblingSpec {
    /// Length of a window.
    pub size: HumanDuration,
}

/// Sliding windows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlidingSpec {
    /// Length of a window.
    pub size: HumanDuration,
    /// Time between the starts of consecutive windows; at most `size`.
    pub slide: HumanDuration,
}

/// Session windows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// Inactivity that closes a session.
    pub gap: HumanDuration,
}

/// The window a spec describes, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling {
        size: std::time::Duration,
    },
    Sliding {
        size: std::time::Duration,
        slide: std::time::Duration,
    },
    Session {
        gap: std::time::Duration,
    },
}

impl WindowSpec {
    /// The window, when exactly one kind is given.
    pub fn kind(&self) -> Option<WindowKind> {
        match (&self.tumbling, &self.sliding, &self.session) {
            (Some(t), None, None) => Some(WindowKind::Tumbling { size: t.size.0 }),
            (None, Some(s), None) => Some(WindowKind::Sliding {
                size: s.size.0,
                slide: s.slide.0,
            }),
            (None, None, Some(s)) => Some(WindowKind::Session { gap: s.gap.0 }),
            _ => None,
        }
    }
}

/// Rolling features: each row gets the aggregates of its key's rows over
/// the `range` before it (the streaming form of SQL's `OVER (PARTITION BY
/// group_by ORDER BY ts RANGE BETWEEN range PRECEDING AND CURRENT ROW)`).
/// The table keeps the records, with the feature columns after theirs; the
/// keys' recent rows live in the state store and are forgotten as the
/// watermark passes them. See docs/event-time.md.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSpec {
    /// Columns whose values together form the key (`[card_id]`).
    pub group_by: Vec<String>,
    /// How far back a row looks: its features aggregate the rows of its
    /// key with event times from its own minus `range` to its own,
    /// inclusive, that were read before it or are it.
    pub range: HumanDuration,
    /// The feature columns: `count`, `count_distinct`, `sum`, `min`, `max`
    /// or `avg`, typed as a window's aggregates are.
    pub aggregations: Vec<AggregationSpec>,
}

/// An aggregate column of a windowed table, or a rolling feature.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregationSpec {
    /// Name of the output column.
    pub name: String,
    /// What to compute.
    pub function: AggregateFunction,
    /// The input column. `count` without one counts rows.
    #[serde(default)]
    pub column: Option<String>,
}

/// Aggregate functions. Null inputs are ignored, as in SQL, except by
/// `first` and `last`, which return the value of the earliest / latest row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    /// Rows, or non-null values of `column` (long).
    Count,
    /// Distinct non-null values of `column`, exactly (long).
    CountDistinct,
    /// Sum of a numeric column: long for integers, double for floats.
    Sum,
    /// Smallest value.
    Min,
    /// Greatest value.
    Max,
    /// Mean of a numeric column (double).
    Avg,
    /// Value of the row with the earliest event time (ties: the row read first).
    First,
    /// Value of the row with the latest event time (ties: the row read last).
    Last,
}

impl AggregateFunction {
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

/// How windowed results reach the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// A window is written once, when the watermark passes its end: its
    /// row never changes.
    #[default]
    Append,
    /// Every batch upserts the windows it changed (a Delta MERGE keyed by
    /// window and group keys), so results appear at once and are refined.
    Update,
}
