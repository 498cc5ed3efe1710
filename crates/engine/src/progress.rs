//! One progress event per committed batch, with the field names of Spark's
//! `StreamingQueryProgress` where a field means the same thing.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
pub use tributary_core::{LATENCY_BUCKETS, LatencyProgress};

/// One committed batch of one group (`tributary run --progress-json`, the
/// admin server's `/progress`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchProgress {
    /// The pipeline name.
    pub name: String,
    pub batch_id: u64,
    /// The state group (`topic` when the whole topic is one group).
    pub group: String,
    pub timestamp: String,
    /// Whether this batch was a replay of a recorded plan after a restart.
    pub replayed: bool,
    pub num_input_rows: u64,
    /// Offsets not yet read, over all partitions, after this batch (from
    /// librdkafka's statistics, up to a second old); absent until known.
    pub lag: Option<i64>,
    pub num_output_rows: u64,
    /// Records `transform.where` dropped (0 without a transform).
    pub num_filtered_rows: u64,
    pub num_dead_letters: u64,
    pub input_bytes: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    /// Milliseconds per step: `read` (poll and decode, overlapped with the
    /// previous batch's write), `plan` (offsets log), `write` (Parquet and
    /// commit of both tables), `offsetCommit`, `triggerExecution`; for
    /// pipelines with event-time operators, also `operate` (the operators,
    /// part of `write`) and `stateApply` (applying their state change after
    /// the commit, and uploading a state snapshot when one is due; part of
    /// `write`).
    pub duration_ms: BTreeMap<String, u64>,
    pub sources: Vec<SourceProgress>,
    /// Event-time operators; absent for pipelines without them.
    pub event_time: Option<EventTimeProgress>,
    /// From each record's Kafka timestamp to the batch's commit; absent
    /// for a batch without timestamped records.
    pub event_to_commit: Option<LatencyProgress>,
    pub sink: SinkProgress,
}

/// What the event-time operators did in a batch.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeProgress {
    /// The watermark the batch ran with (RFC 3339): windows ending then or
    /// earlier are final. Absent before the first batch with an event time.
    pub watermark: Option<String>,
    /// Late rows (every window they would update had closed at the
    /// previous batch's watermark) and rows without an event time:
    /// dropped, or written to the late-rows table.
    pub num_late_rows: u64,
    /// Rows dropped by deduplication.
    pub num_duplicate_rows: u64,
    /// Version of the late-rows table this batch created.
    pub late_rows_table_version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub description: String,
    /// `{topic: {partition: offset}}`, as Spark prints Kafka offsets.
    pub start_offset: BTreeMap<String, BTreeMap<String, i64>>,
    pub end_offset: BTreeMap<String, BTreeMap<String, i64>>,
    /// Newest offset of each partition the consumer may read to.
    pub latest_offset: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    pub description: String,
    /// Table version this batch created (absent when it had already landed).
    pub table_version: Option<u64>,
    pub num_files: usize,
    pub num_bytes: u64,
    /// Commit attempts redone because another writer took the table version
    /// first (update mode's MERGE from several groups).
    pub num_commit_conflicts: u32,
    pub dead_letter_table_version: Option<u64>,
}

/// A time in microseconds since the epoch as RFC 3339 (UTC).
pub(crate) fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| micros.to_string())
}

/// JSON Schema of a progress event (docs/progress-schema.json is generated from it).
pub fn progress_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(BatchProgress)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    /// The committed schema must match the structs. Regenerate with
    /// `cargo run -p tributary -- progress-schema > docs/progress-schema.json`.
    #[test]
    fn committed_progress_schema_is_current() {
        // At run time: a build cache shared by two checkouts must not read the
        // other checkout's docs.
        let path = format!(
            "{}/../../docs/progress-schema.json",
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests")
        );
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
                .unwrap_or_default();
        assert!(
            committed == super::progress_schema(),
            "docs/progress-schema.json is stale: run `cargo run -p tributary -- progress-schema > docs/progress-schema.json`"
        );
    }
}
