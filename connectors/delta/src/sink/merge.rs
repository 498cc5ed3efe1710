//! Upserts for update mode: a batch's rows replace the table's rows with
//! the same key (window bounds and group keys) and are added where none
//! exists — a copy-on-write MERGE in one commit carrying the batch's txn.

use std::collections::HashSet;

use deltalake::DeltaTableError;
use deltalake::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, MergePredicate};
use serde_json::Value;
use tributary_spec::PartitionColumn;

use crate::COMMIT_INFO_KEY;
use crate::error::{DeltaSinkError, Result};
use crate::sink::files::{
    BatchEncoder, FileIntent, delete_attempt, object_paths, upload_files, version_that_added,
};
use crate::sink::live_files::{DataFile, conform};
use crate::sink::partitioning::add_partition_columns;
use crate::sink::table::{BatchCommit, BatchRows, CommitOutcome, DeltaTableSink, reconcile};

/// Commit attempts before giving up on a table that keeps moving; the
/// batch then fails as an external error and its group retries it later.
const ATTEMPTS: u32 = 40;

/// The wait before attempt `n + 1` after `n` lost races: exponential from
/// 20 ms, capped at 2 s, with full jitter, so groups that collided once do
/// not collide again in lockstep (with 8 groups MERGEing one table, equal
/// waits made the same groups lose round after round).
fn backoff(lost: u32) -> std::time::Duration {
    let ceiling = (20u64 << lost.min(7)).min(2_000);
    // A v4 UUID's bits are random: no random number crate just for this.
    let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % (ceiling / 2 + 1);
    std::time::Duration::from_millis(ceiling / 2 + jitter)
}

/// The upsert's key: its columns and the values the batch writes.
struct Keys<'a> {
    /// The table's URI, for messages.
    uri: &'a str,
    columns: &'a [String],
    converter: RowConverter,
    values: HashSet<Vec<u8>>,
}

impl Keys<'_> {
    fn rows(&self, batch: &RecordBatch) -> Result<Rows> {
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| {
                batch
                    .column_by_name(c)
                    .cloned()
                    .ok_or_else(|| DeltaSinkError::SchemaMismatch {
                        uri: self.uri.to_string(),
                        message: format!("the merge key column {c:?} is missing"),
                    })
            })
            .collect::<Result<_>>()?;
        Ok(self.converter.convert_columns(&columns)?)
    }
}

impl DeltaTableSink {
    /// Upserts one batch (update mode): every row of the batch replaces the
    /// table's row with the same `keys`, or is added. Files holding a
    /// replaced row are rewritten without it (`remove` + `add`,
    /// `dataChange=true`), in one `MERGE` commit tagged `txn {app_id,
    /// batch_id}` like an append, so a batch that already landed is skipped.
    ///
    /// Candidate files are those whose `window_end` statistics overlap the
    /// batch's windows. Each attempt reads the newest version `V` and writes
    /// `V + 1` only if it does not exist yet: a concurrent compaction or
    /// zombie makes it read again, never commit over a file already gone.
    /// `partitions` must derive from key columns (validated in the spec).
    pub async fn upsert(
        &mut self,
        commit: BatchCommit,
        keys: &[String],
        partitions: &[PartitionColumn],
        intent: &dyn FileIntent,
    ) -> Result<CommitOutcome> {
        // A batch that landed already is recognised in the loop below, or
        // by the append.
        self.refresh().await?;
        let BatchRows::Arrow(batches) = &commit.rows else {
            return Err(DeltaSinkError::Corrupt {
                uri: self.uri().to_string(),
                message: "an upsert needs rows, not encoded files".into(),
            });
        };
        let rows: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        // Nothing to replace: a plain append (which also creates the table).
        if self.table.is_none() || rows.is_empty() {
            return self.commit(commit, intent).await;
        }
        let schema = rows[0].schema();
        let converter = RowConverter::new(
            keys.iter()
                .map(|k| {
                    schema
                        .field_with_name(k)
                        .map(|f| SortField::new(f.data_type().clone()))
                        .map_err(DeltaSinkError::from)
                })
                .collect::<Result<_>>()?,
        )?;
        let uri = self.uri().to_string();
        let mut key = Keys {
            uri: &uri,
            columns: keys,
            converter,
            values: HashSet::new(),
        };
        for b in &rows {
            let r = key.rows(b)?;
            key.values.extend(r.iter().map(|row| row.data().to_vec()));
        }
        let (min_end, max_end) = window_end_range(&rows);
        let delta_err = |source| DeltaSinkError::delta(&uri, source);
        for lost in 0..ATTEMPTS {
            if lost > 0 {
                tokio::time::sleep(backoff(lost)).await;
            }
            let table = self.table.as_mut().ok_or_else(|| DeltaSinkError::Corrupt {
                uri: uri.clone(),
                message: "table vanished".into(),
            })?;
            table.update_incremental(None).await.map_err(delta_err)?;
            if self
                .committed_batch(&commit.app_id)
                .await?
                .is_some_and(|done| done >= commit.batch_id)
            {
                return Ok(CommitOutcome::landed());
            }
            // Rows are written in the table's schema when it holds the
            // batch's columns as they are: a column someone added (ALTER
            // TABLE) is kept in the rewritten rows, null in the batch's.
            let target = match self.arrow_schema() {
                Some(table) if reconcile(&schema, &table).is_none() => table,
                _ => schema.clone(),
            };
            // Rows of candidate files that the batch does not replace.
            let mut removed: Vec<DataFile> = Vec::new();
            let mut kept: Vec<RecordBatch> = Vec::new();
            for file in self.data_files()? {
                if !may_hold(&file, min_end, max_end) {
                    continue;
                }
                let mut replaced_any = false;
                let mut file_kept = Vec::new();
                for b in self.read_parquet(&file.path).await? {
                    let b = add_partition_columns(&b, partitions)?;
                    let r = key.rows(&b)?;
                    let keep: BooleanArray = r
                        .iter()
                        .map(|row| Some(!key.values.contains(row.data())))
                        .collect();
                    replaced_any |= keep.true_count() < b.num_rows();
                    file_kept.push(filter_record_batch(&b, &keep)?);
                }
                if replaced_any {
                    removed.push(file);
                    kept.extend(file_kept.into_iter().filter(|b| b.num_rows() > 0));
                }
            }
            let mut encoder = BatchEncoder::new(
                self.options.partition_columns.clone(),
                self.options.target_file_size,
            );
            for b in kept.iter().chain(&rows) {
                encoder.push(&conform(b, &target)?)?;
            }
            let encoded = encoder.finish()?;
            let written = encoded.rows;
            let table = self.table.as_mut().ok_or_else(|| DeltaSinkError::Corrupt {
                uri: uri.clone(),
                message: "table vanished".into(),
            })?;
            let store = table.object_store();
            let attempt = uuid::Uuid::new_v4().simple().to_string();
            let name = format!("{}-{}", commit.file_name, &attempt[..8]);
            let upload_started = std::time::Instant::now();
            let adds =
                upload_files(store.clone(), &uri, encoded.files, &name, intent, true).await?;
            let upload = upload_started.elapsed();
            tributary_core::crash_point(tributary_core::CrashPoint::AfterFiles, commit.batch_id);
            let added_paths = object_paths(&adds);
            let bytes = adds.iter().map(|a| a.size.max(0) as u64).sum();
            let mut actions: Vec<Action> = removed
                .iter()
                .map(|f| {
                    let mut remove = f.remove.clone();
                    remove.data_change = true;
                    Action::Remove(remove)
                })
                .collect();
            let files = adds.len();
            actions.extend(adds.into_iter().map(Action::Add));
            let properties = CommitProperties::default()
                .with_max_retries(0)
                .with_application_transaction(Transaction::new(
                    &commit.app_id,
                    commit.batch_id as i64,
                ))
                .with_metadata([(COMMIT_INFO_KEY.to_string(), commit.info.clone())]);
            let on = keys
                .iter()
                .map(|k| format!("target.{k} = source.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let operation = DeltaOperation::Merge {
                predicate: None,
                merge_predicate: Some(on),
                matched_predicates: vec![MergePredicate {
                    action_type: "update".into(),
                    predicate: None,
                }],
                not_matched_predicates: vec![MergePredicate {
                    action_type: "insert".into(),
                    predicate: None,
                }],
                not_matched_by_source_predicates: vec![],
            };
            let snapshot = table.snapshot().map_err(delta_err)?;
            let read_version = table.version();
            let commit_started = std::time::Instant::now();
            let committed = CommitBuilder::from(properties)
                .with_actions(actions)
                .build(Some(snapshot), table.log_store(), operation)
                .await;
            let landed = match committed {
                Ok(finalized) => Some(finalized.version()),
                // Another commit took the version, or our own first try did
                // (an ambiguous PUT whose retry was refused).
                Err(DeltaTableError::Transaction {
                    source: TransactionError::MaxCommitAttempts(_),
                }) => {
                    let own = version_that_added(&table.log_store(), read_version, &added_paths)
                        .await
                        .map_err(delta_err)?;
                    if let Some(version) = own {
                        tracing::warn!(table = %uri, version, batch = commit.batch_id,
                            "the merge was answered with an error but had landed; kept");
                    }
                    own
                }
                Err(other) => return Err(delta_err(other)),
            };
            match landed {
                Some(version) => {
                    table.update_incremental(None).await.map_err(delta_err)?;
                    return Ok(CommitOutcome {
                        already_landed: false,
                        version: Some(version),
                        files,
                        bytes,
                        rows: written,
                        upload,
                        commit: commit_started.elapsed(),
                        conflicts: lost,
                    });
                }
                // Superseded: read the table again.
                None => {
                    delete_attempt(&store, &uri, &added_paths, "a superseded merge attempt").await;
                }
            }
        }
        Err(DeltaSinkError::Contention {
            uri,
            attempts: ATTEMPTS,
        })
    }
}

/// The smallest and greatest `window_end` of the rows, in microseconds.
fn window_end_range(rows: &[RecordBatch]) -> (i64, i64) {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::TimestampMicrosecondType;
    let mut range = (i64::MAX, i64::MIN);
    for b in rows {
        if let Some(ends) = b
            .column_by_name("window_end")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        {
            for v in ends.iter().flatten() {
                range = (range.0.min(v), range.1.max(v));
            }
        }
    }
    range
}

/// Whether a file's statistics allow it to hold a window ending within
/// `[min_end, max_end]`. Statistics keep milliseconds: a millisecond of
/// slack on each side; no statistics, no skipping.
fn may_hold(file: &DataFile, min_end: i64, max_end: i64) -> bool {
    let Some(stats) = file.stats.as_deref() else {
        return true;
    };
    let Ok(stats) = serde_json::from_str::<Value>(stats) else {
        return true;
    };
    let micros = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let (Some(lo), Some(hi)) = (
        micros(&stats["minValues"]["window_end"]),
        micros(&stats["maxValues"]["window_end"]),
    ) else {
        return true;
    };
    hi + 1_000 >= min_end && lo - 1_000 <= max_end
}
