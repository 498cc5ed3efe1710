//! Reporting a committed batch: its progress event (Spark's
//! `StreamingQueryProgress` shape), appended to `--progress-json` and handed
//! to the caller's callback. A failure to report never fails the batch.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use tributary_core::PartitionRange;

use crate::commit::Committed;
use crate::contracts::ReadBatch;
use crate::options::PipelineOptions;
use crate::plan::BatchPlan;
use crate::progress::{
    BatchProgress, EventTimeProgress, LatencyProgress, SinkProgress, SourceProgress,
};

/// Milliseconds spent in each step of a batch on the committing task.
pub(crate) struct StepTimes {
    pub plan_ms: u64,
    pub write_ms: u64,
    pub offset_commit_ms: u64,
    pub encode: Duration,
    /// A stateful group's operators (with the transform after features),
    /// and applying their state change once the batch is committed.
    pub state: Option<(Duration, Duration)>,
}

/// Everything a batch's progress event says.
pub(crate) struct BatchReport<'a> {
    pub pipeline: &'a str,
    pub plan: &'a BatchPlan,
    pub read: &'a ReadBatch,
    pub committed: &'a Committed,
    pub event_time: Option<EventTimeProgress>,
    /// When the batch's data commit returned (ms since the epoch).
    pub committed_at_ms: i64,
    pub times: StepTimes,
    /// Newest offset of each partition, as far as known.
    pub latest: BTreeMap<i32, i64>,
    pub output_rows: u64,
    pub filtered_rows: u64,
    pub table_uri: &'a str,
    pub replayed: bool,
}

impl BatchReport<'_> {
    pub(crate) fn progress(self) -> BatchProgress {
        let plan = self.plan;
        let t = &self.times;
        let processing_ms = t.plan_ms + t.write_ms + t.offset_commit_ms;
        let read_ms = self.read.read_time.as_millis() as u64;
        let rows_in = self.read.records;
        let per_sec = |ms: u64| rows_in as f64 * 1000.0 / ms.max(1) as f64;
        let lag = (!self.latest.is_empty()).then(|| {
            plan.end_offsets
                .iter()
                .map(|(p, end)| self.latest.get(p).map_or(0, |l| (l - end).max(0)))
                .sum::<i64>()
        });
        let data = &self.committed.data;
        let mut duration_ms = BTreeMap::from([
            ("read".to_string(), read_ms),
            (
                "decode".to_string(),
                self.read.decode_time.as_millis() as u64,
            ),
            ("upload".to_string(), data.upload.as_millis() as u64),
            ("commit".to_string(), data.commit.as_millis() as u64),
            ("encode".to_string(), t.encode.as_millis() as u64),
            ("plan".to_string(), t.plan_ms),
            ("write".to_string(), t.write_ms),
            ("offsetCommit".to_string(), t.offset_commit_ms),
            ("triggerExecution".to_string(), processing_ms),
        ]);
        if let Some((operate, apply)) = t.state {
            duration_ms.insert("operate".to_string(), operate.as_millis() as u64);
            duration_ms.insert("stateApply".to_string(), apply.as_millis() as u64);
        }
        BatchProgress {
            name: self.pipeline.to_string(),
            batch_id: plan.batch_id,
            group: plan.group.clone(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            replayed: self.replayed,
            num_input_rows: rows_in,
            lag,
            num_output_rows: self.output_rows,
            num_filtered_rows: self.filtered_rows,
            num_dead_letters: self.read.dead_letters.len() as u64,
            input_bytes: self.read.bytes,
            input_rows_per_second: per_sec(read_ms),
            processed_rows_per_second: per_sec(processing_ms),
            duration_ms,
            sources: vec![self.source()],
            event_time: self.event_time,
            event_to_commit: LatencyProgress::of(&self.read.kafka_times, self.committed_at_ms),
            sink: SinkProgress {
                description: format!("delta[{}]", self.table_uri),
                table_version: data.version,
                num_files: data.files,
                num_bytes: data.bytes,
                num_commit_conflicts: data.conflicts,
                dead_letter_table_version: self.committed.dead_letters_version,
            },
        }
    }

    fn source(&self) -> SourceProgress {
        let ranges = &self.plan.ranges;
        let offsets = |pick: fn(&PartitionRange) -> i64| {
            let by_partition = ranges
                .ranges
                .iter()
                .map(|r| (r.partition.to_string(), pick(r)))
                .collect::<BTreeMap<_, _>>();
            BTreeMap::from([(ranges.topic.clone(), by_partition)])
        };
        SourceProgress {
            description: format!("kafka[{}]", ranges.topic),
            start_offset: offsets(|r| r.start),
            end_offset: offsets(|r| r.end),
            latest_offset: BTreeMap::from([(
                ranges.topic.clone(),
                self.latest
                    .iter()
                    .map(|(p, o)| (p.to_string(), *o))
                    .collect(),
            )]),
        }
    }
}

/// Appends the event to `--progress-json` and hands it to the callback.
pub(crate) fn publish(options: &PipelineOptions, progress: &BatchProgress) {
    if let Some(path) = &options.progress_json {
        match serde_json::to_string(progress) {
            Ok(mut line) => {
                line.push('\n');
                if let Err(e) = append_rotating(path, &line, options.progress_json_max_bytes) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot append the progress event");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise the progress event"),
        }
    }
    if let Some(callback) = &options.on_progress {
        callback(progress);
    }
}

/// Serialises appends and rotations: the groups of a partition-scope
/// pipeline write to the same file at once.
static PROGRESS_FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Appends `line` in one write, after moving the file to `<path>.1` (the
/// one older file kept) once it holds `max_bytes` or more.
pub fn append_rotating(path: &std::path::Path, line: &str, max_bytes: u64) -> std::io::Result<()> {
    let _serialised = PROGRESS_FILE.lock().unwrap_or_else(|p| p.into_inner());
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= max_bytes) {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        std::fs::rename(path, rotated)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_file_rotates_by_size_keeping_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.jsonl");
        for i in 0..100 {
            append_rotating(&path, &format!("{{\"n\": {i:03}}}\n"), 100).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let older = std::fs::read_to_string(dir.path().join("progress.jsonl.1")).unwrap();
        // 11-byte lines: a file is moved aside once it holds ten (110 bytes).
        assert_eq!(current.lines().count(), 10);
        assert_eq!(older.lines().count(), 10);
        assert_eq!(current.lines().last(), Some("{\"n\": 099}"));
        assert_eq!(older.lines().next(), Some("{\"n\": 080}"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
