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
use crate::progress::{BatchProgress, EventTimeProgress, SinkProgress, SourceProgress};

/// Milliseconds spent in each step of a batch on the committing task.
pub(crate) struct StepTimes {
    pub plan_ms: u64,
    pub write_ms: u64,
    pub offset_commit_ms: u64,
    pub encode: Duration,
}

/// Everything a batch's progress event says.
pub(crate) struct BatchReport<'a> {
    pub pipeline: &'a str,
    pub plan: &'a BatchPlan,
    pub read: &'a ReadBatch,
    pub committed: &'a Committed,
    pub event_time: Option<EventTimeProgress>,
    pub times: StepTimes,
    /// Newest offset of each partition, as far as known.
    pub latest: BTreeMap<i32, i64>,
    pub output_rows: u64,
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
        BatchProgress {
            name: self.pipeline.to_string(),
            batch_id: plan.batch_id,
            group: plan.group.clone(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            replayed: self.replayed,
            num_input_rows: rows_in,
            lag,
            num_output_rows: self.output_rows,
            num_dead_letters: self.read.dead_letters.len() as u64,
            input_bytes: self.read.bytes,
            input_rows_per_second: per_sec(read_ms),
            processed_rows_per_second: per_sec(processing_ms),
            duration_ms: BTreeMap::from([
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
            ]),
            sources: vec![self.source()],
            event_time: self.event_time,
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
                // One write per line: the groups of a partition-scope pipeline
                // append to the same file at once, and `writeln!` writes the
                // newline separately, so two lines could interleave.
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = written {
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
