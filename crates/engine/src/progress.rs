//! One progress event per committed batch, with the field names of Spark's
//! `StreamingQueryProgress` where a field means the same thing.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

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
    /// commit of both tables), `offsetCommit`, `triggerExecution`.
    pub duration_ms: BTreeMap<String, u64>,
    pub sources: Vec<SourceProgress>,
    /// Event-time operators; absent for pipelines without them.
    pub event_time: Option<EventTimeProgress>,
    /// From each record's Kafka timestamp to the batch's commit; absent
    /// for a batch without timestamped records.
    pub event_to_commit: Option<LatencyProgress>,
    pub sink: SinkProgress,
}

/// Upper bounds (seconds) of the event-to-commit histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// How long a batch's records took from their Kafka timestamp (the
/// producer's or the broker's clock) to being committed in the table.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyProgress {
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
    /// Records at or under each of `LATENCY_BUCKETS` (cumulative), for the
    /// metrics' histogram.
    #[serde(skip)]
    #[schemars(skip)]
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    /// Records measured, and the sum of their latencies (seconds).
    #[serde(skip)]
    #[schemars(skip)]
    pub count: u64,
    #[serde(skip)]
    #[schemars(skip)]
    pub sum_seconds: f64,
}

impl LatencyProgress {
    /// The latencies of records with Kafka timestamps `sorted_times` (ms,
    /// ascending) committed at `commit_ms`. Percentiles by nearest rank.
    pub fn of(sorted_times: &[i64], commit_ms: i64) -> Option<LatencyProgress> {
        let n = sorted_times.len();
        let oldest = *sorted_times.first()?;
        // The k-th smallest latency is the k-th newest timestamp.
        let percentile = |p: f64| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            commit_ms - sorted_times[n - rank]
        };
        let mut buckets = [0u64; LATENCY_BUCKETS.len()];
        for (bucket, bound) in buckets.iter_mut().zip(LATENCY_BUCKETS) {
            let newer_than = commit_ms - (bound * 1000.0) as i64;
            *bucket = (n - sorted_times.partition_point(|t| *t < newer_than)) as u64;
        }
        let sum_ms: i128 = sorted_times.iter().map(|t| i128::from(commit_ms - t)).sum();
        Some(LatencyProgress {
            p50_ms: percentile(0.50),
            p95_ms: percentile(0.95),
            p99_ms: percentile(0.99),
            max_ms: commit_ms - oldest,
            buckets,
            count: n as u64,
            sum_seconds: sum_ms as f64 / 1000.0,
        })
    }
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
    use super::LatencyProgress;

    #[test]
    fn latencies_are_nearest_rank_percentiles_of_commit_minus_timestamp() {
        // 100 records stamped 1..=100 ms, committed at 1,000: latencies 900..=999.
        let times: Vec<i64> = (1..=100).collect();
        let l = LatencyProgress::of(&times, 1_000).unwrap();
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (949, 994, 998, 999)
        );
        assert_eq!(l.count, 100);
        assert!((l.sum_seconds - (900..=999).sum::<i64>() as f64 / 1000.0).abs() < 1e-9);
        // Cumulative buckets: none within 0.1 s .. 0.5 s, all within 1 s.
        assert_eq!(l.buckets[..4], [0, 0, 0, 100]);
        let one = LatencyProgress::of(&[0, 4_900], 5_000).unwrap();
        assert_eq!(
            (one.p50_ms, one.p99_ms, one.buckets[0], one.buckets[6]),
            (100, 5_000, 1, 2)
        );
        assert!(LatencyProgress::of(&[], 5).is_none());
    }
    /// The committed schema must match the structs. Regenerate with
    /// `cargo run -p tributary -- progress-schema > docs/progress-schema.json`.
    #[test]
    fn committed_progress_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/progress-schema.json"
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
