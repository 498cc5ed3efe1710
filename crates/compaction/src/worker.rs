//! One compaction pass, and the worker that runs passes beside ingest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deltalake::arrow::compute::concat_batches;
use serde::Serialize;
use tributary_delta::{BatchEncoder, DeltaTableSink, Rewrite, TableOptions};
use tributary_spec::TableSpec;

use crate::error::{CompactionError, Result};
use crate::plan::{Bin, plan_bins};
use crate::zorder::z_order;

/// What a pass does besides rewriting files.
#[derive(Debug, Clone, Copy)]
pub struct PassOptions {
    /// Vacuum after rewriting (the worker does so once per `vacuum.interval`).
    pub vacuum: bool,
}

/// What one pass did: logged, exported as metrics, printed by `tributary compact`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassReport {
    pub pipeline: String,
    pub table: String,
    /// When the pass started (RFC 3339, UTC).
    pub timestamp: String,
    pub duration_ms: u64,
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    /// Live data files before and after the pass.
    pub files_before: usize,
    pub files_after: usize,
    pub partitions_rewritten: usize,
    pub files_removed: usize,
    pub files_added: usize,
    /// Bytes of the files replaced (what the pass read and rewrote).
    pub bytes_rewritten: u64,
    pub bytes_added: u64,
    pub rows_rewritten: u64,
    /// Rewrites dropped because a concurrent commit removed one of their files.
    pub conflicts: usize,
    /// Version of the log checkpoint written, if one was due.
    pub checkpoint_version: Option<u64>,
    pub logs_deleted: usize,
    /// Files deleted by vacuum; `None` when the pass did not vacuum.
    pub files_vacuumed: Option<usize>,
    /// Why the pass failed; the next pass starts over.
    pub error: Option<String>,
}

impl PassReport {
    /// The report of a pass over the spec's table starting now.
    fn starting(spec: &TableSpec) -> PassReport {
        PassReport {
            pipeline: spec.pipeline.clone(),
            table: spec.table.uri.clone(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..PassReport::default()
        }
    }
}

/// Runs one pass over the spec's table: rewrite, checkpoint, log cleanup and
/// (if asked) vacuum. A missing table is not an error: there is nothing to do.
pub async fn compact_once(spec: &TableSpec, options: PassOptions) -> Result<PassReport> {
    let started = Instant::now();
    let policy = &spec.compaction;
    let mut report = PassReport::starting(spec);
    let mut sink = DeltaTableSink::open_existing(TableOptions {
        storage_options: spec.table.storage_options.clone(),
        uri: spec.table.uri.clone(),
        partition_columns: Vec::new(),
        target_file_size: policy.target_file_size.0,
    })
    .await?;
    report.version_before = sink.version();
    let files = sink.data_files()?;
    report.files_before = files.len();
    let now = chrono::Utc::now().timestamp_millis();
    let bins = plan_bins(
        &files,
        policy.target_file_size.0,
        policy.min_files as usize,
        policy.quiet_for.0.as_millis() as i64,
        now,
    );
    let partition_columns = sink.table_partition_columns();
    let mut start = 0;
    while start < bins.len() {
        // The bins of a partition are committed in groups of at most
        // `max_memory` bytes (at least one bin), so a pass holds a bounded
        // number of encoded files however large the partition.
        let mut bytes = 0;
        let end = start
            + bins[start..]
                .iter()
                .enumerate()
                .take_while(|(i, b)| {
                    bytes += b.bytes();
                    b.partition_values == bins[start].partition_values
                        && (*i == 0 || bytes <= policy.max_memory.0)
                })
                .count();
        let partition = &bins[start..end];
        let new_partition =
            start == 0 || bins[start - 1].partition_values != partition[0].partition_values;
        start = end;
        let mut encoded = Vec::with_capacity(partition.len());
        for bin in partition {
            encoded.push(rewrite_bin(&sink, bin, &partition_columns, &policy.z_order_by).await?);
        }
        let replaced: Vec<_> = partition.iter().flat_map(|b| b.files.clone()).collect();
        let rows: u64 = replaced.iter().filter_map(|f| f.rows).sum();
        let bytes: u64 = replaced.iter().map(|f| f.size).sum();
        let removed = replaced.len();
        let committed = sink
            .commit_rewrite(Rewrite {
                replaced,
                files: encoded,
                name: "compact".into(),
                target_size: policy.target_file_size.0,
                info: serde_json::json!({
                    "pipeline": spec.pipeline,
                    "partition": partition_columns.iter().zip(&partition[0].partition_values).collect::<Vec<_>>(),
                    "filesRemoved": removed,
                    "bins": partition.len(),
                }),
            })
            .await?;
        match committed {
            Some(outcome) => {
                report.partitions_rewritten += usize::from(new_partition);
                report.files_removed += removed;
                report.files_added += outcome.files_added;
                report.bytes_rewritten += bytes;
                report.bytes_added += outcome.bytes_added;
                report.rows_rewritten += rows;
            }
            None => report.conflicts += 1,
        }
    }
    sink.refresh().await?;
    report.checkpoint_version = sink.checkpoint_if_due(policy.checkpoint_interval).await?;
    report.logs_deleted = sink.cleanup_expired_logs(policy.log_retention.0).await?;
    if options.vacuum {
        report.files_vacuumed = Some(sink.vacuum(policy.vacuum.retention.0).await?);
    }
    report.version_after = sink.version();
    report.files_after = sink.data_files()?.len();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Reads a bin's files, one at a time, and encodes their rows as one file.
async fn rewrite_bin(
    sink: &DeltaTableSink,
    bin: &Bin,
    partition_columns: &[String],
    z_order_by: &[String],
) -> Result<tributary_delta::EncodedFile> {
    // One file per bin, whatever its size: the bin's size is the limit.
    let mut encoder = BatchEncoder::new(partition_columns.to_vec(), u64::MAX);
    let key = bin.partition_values.clone();
    let mut z_rows = Vec::new();
    for file in &bin.files {
        let batches = sink.read_data_file(file).await?;
        if z_order_by.is_empty() {
            tokio::task::block_in_place(|| {
                batches
                    .iter()
                    .try_for_each(|batch| encoder.push_partition(key.clone(), batch))
            })?;
        } else {
            z_rows.extend(batches);
        }
    }
    if let Some(first) = z_rows.first() {
        let all = concat_batches(&first.schema(), &z_rows)?;
        drop(z_rows);
        let sorted = tokio::task::block_in_place(|| z_order(&all, z_order_by))?;
        drop(all);
        tokio::task::block_in_place(|| encoder.push_partition(key, &sorted))?;
    }
    let encoded = tokio::task::block_in_place(|| encoder.finish())?;
    encoded
        .files
        .into_iter()
        .next()
        .ok_or_else(|| CompactionError::Internal("a bin of files encoded to no file".into()))
}

/// Runs a pass every `compaction.interval` (and vacuums every
/// `compaction.vacuum.interval`) until `stop` is set. A failed pass is
/// reported and the next one starts over; it never stops ingest.
pub async fn run_worker(
    spec: TableSpec,
    stop: Arc<AtomicBool>,
    on_report: Arc<dyn Fn(&PassReport) + Send + Sync>,
) {
    let policy = spec.compaction.clone();
    let mut last_vacuum = Instant::now();
    loop {
        let next = Instant::now() + policy.interval.0;
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(
                next.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(250)),
            )
            .await;
        }
        let vacuum = last_vacuum.elapsed() >= policy.vacuum.interval.0;
        let report = match compact_once(&spec, PassOptions { vacuum }).await {
            Ok(report) => {
                if vacuum {
                    last_vacuum = Instant::now();
                }
                tracing::info!(
                    pipeline = %spec.pipeline,
                    files_before = report.files_before,
                    files_after = report.files_after,
                    files_removed = report.files_removed,
                    files_added = report.files_added,
                    bytes_rewritten = report.bytes_rewritten,
                    conflicts = report.conflicts,
                    checkpoint = ?report.checkpoint_version,
                    vacuumed = ?report.files_vacuumed,
                    duration_ms = report.duration_ms,
                    "compaction pass"
                );
                report
            }
            Err(e) => {
                tracing::warn!(pipeline = %spec.pipeline, error = %e, "compaction pass failed; the next pass starts over");
                PassReport {
                    error: Some(e.to_string()),
                    ..PassReport::starting(&spec)
                }
            }
        };
        on_report(&report);
    }
}
