//! One progress event per committed batch, with the field names of Spark's
//! `StreamingQueryProgress` where a field means the same thing.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
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
    pub num_dead_letters: u64,
    pub input_bytes: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    /// Milliseconds per step: `read` (poll and decode, overlapped with the
    /// previous batch's write), `plan` (offsets log), `write` (Parquet and
    /// commit of both tables), `offsetCommit`, `triggerExecution`.
    pub duration_ms: BTreeMap<String, u64>,
    pub sources: Vec<SourceProgress>,
    pub sink: SinkProgress,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub description: String,
    /// `{topic: {partition: offset}}`, as Spark prints Kafka offsets.
    pub start_offset: BTreeMap<String, BTreeMap<String, i64>>,
    pub end_offset: BTreeMap<String, BTreeMap<String, i64>>,
    /// Newest offset of each partition the consumer may read to.
    pub latest_offset: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    pub description: String,
    /// Table version this batch created (absent when it had already landed).
    pub table_version: Option<u64>,
    pub num_files: usize,
    pub num_bytes: u64,
    pub dead_letter_table_version: Option<u64>,
}
