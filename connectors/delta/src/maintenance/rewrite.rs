//! The table operations compaction is made of (besides listing and reading
//! live data files, in `sink::live_files`): committing a rewrite with
//! `dataChange=false`, log checkpoints, expired-log cleanup and vacuum. What
//! to rewrite and when is the compaction worker's business, not this
//! module's.

use std::collections::HashSet;
use std::time::Duration;

use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTableError, Path};
use object_store::ObjectStoreExt as _;
use serde_json::Value;

use crate::error::{DeltaSinkError, Result};
use crate::sink::files::{
    EncodedFile, FileIntent, delete_attempt, object_paths, upload_files, version_that_added,
};
use crate::sink::live_files::DataFile;
use crate::sink::table::DeltaTableSink;

/// Key under which a rewrite describes itself in `commitInfo`. Deliberately
/// not `COMMIT_INFO_KEY`: a rewrite is no batch of any pipeline.
pub const REWRITE_INFO_KEY: &str = "tributaryCompaction";

/// Replaces live files by new files holding the same rows.
pub struct Rewrite {
    pub replaced: Vec<DataFile>,
    pub files: Vec<EncodedFile>,
    /// New files are named `part-<name>-<attempt>-<n>`.
    pub name: String,
    /// Recorded as the `OPTIMIZE` operation's target size.
    pub target_size: u64,
    /// Stored in `commitInfo.tributaryCompaction`.
    pub info: Value,
}

/// What a committed rewrite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteOutcome {
    pub version: u64,
    pub files_added: usize,
    pub bytes_added: u64,
}

/// Files written by rewrites need no intent record: if the commit never
/// happens they are unreferenced files, which vacuum deletes.
struct NoIntent;

#[async_trait::async_trait]
impl FileIntent for NoIntent {
    async fn announce(&self, _table_uri: &str, _path: &str) -> std::io::Result<()> {
        Ok(())
    }
}

impl DeltaTableSink {
    /// Commits a rewrite as one `OPTIMIZE` commit with `dataChange=false`.
    /// Returns `None` (and deletes the new files) when a replaced file is no
    /// longer live: the rows would otherwise be there twice. Concurrent
    /// appends only make it try again at the next version.
    ///
    /// The check is ours, not delta-rs's conflict checker, which ignores
    /// `dataChange=false` removes and so lets two compactions of the same
    /// files both commit: each attempt verifies that every replaced file is
    /// live in the newest version `V` and writes version `V + 1` only if it
    /// does not exist yet (no automatic retries against a later version).
    pub async fn commit_rewrite(&mut self, rewrite: Rewrite) -> Result<Option<RewriteOutcome>> {
        const ATTEMPTS: usize = 20;
        let uri = self.uri().to_string();
        let delta_err = |source| DeltaSinkError::delta(&uri, source);
        let Some(table) = self.table.as_mut() else {
            return Ok(None);
        };
        let store = table.object_store();
        let replaced_paths: Vec<String> = rewrite.replaced.iter().map(|f| f.path.clone()).collect();
        // Unique per attempt: a dropped rewrite deletes only its own files.
        let attempt = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{}-{}", rewrite.name, &attempt[..8]);
        let adds =
            upload_files(store.clone(), &uri, rewrite.files, &name, &NoIntent, false).await?;
        let added_paths = object_paths(&adds);
        let files_added = adds.len();
        let bytes_added = adds.iter().map(|a| a.size.max(0) as u64).sum();
        let mut actions: Vec<Action> = rewrite
            .replaced
            .into_iter()
            .map(|f| Action::Remove(f.remove))
            .collect();
        actions.extend(adds.into_iter().map(Action::Add));
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: rewrite.target_size as i64,
        };
        // The version read before the last attempt: a commit answered with
        // an error may have landed, and is looked for after it.
        let mut attempted_on: Option<Option<u64>> = None;
        for _ in 0..ATTEMPTS {
            table.update_incremental(None).await.map_err(delta_err)?;
            if let Some(read_version) = attempted_on
                && let Some(version) =
                    version_that_added(&table.log_store(), read_version, &added_paths)
                        .await
                        .map_err(delta_err)?
            {
                tracing::warn!(table = %uri, version, "the rewrite was answered with an error but had landed; kept");
                return Ok(Some(RewriteOutcome {
                    version,
                    files_added,
                    bytes_added,
                }));
            }
            let snapshot = table.snapshot().map_err(delta_err)?;
            let live: HashSet<String> = snapshot
                .log_data()
                .iter()
                .map(|f| f.path().to_string())
                .collect();
            if let Some(gone) = replaced_paths.iter().find(|p| !live.contains(*p)) {
                tracing::info!(table = %uri, file = %gone, "a concurrent commit removed a file of this rewrite; the rewrite is dropped");
                delete_attempt(&store, &uri, &added_paths, "a dropped rewrite").await;
                return Ok(None);
            }
            let properties = CommitProperties::default()
                .with_max_retries(0)
                .with_metadata([(REWRITE_INFO_KEY.to_string(), rewrite.info.clone())]);
            attempted_on = Some(table.version());
            let committed = CommitBuilder::from(properties)
                .with_actions(actions.clone())
                .build(Some(snapshot), table.log_store(), operation.clone())
                .await;
            match committed {
                Ok(finalized) => {
                    let version = finalized.version();
                    table.update_incremental(None).await.map_err(delta_err)?;
                    return Ok(Some(RewriteOutcome {
                        version,
                        files_added,
                        bytes_added,
                    }));
                }
                // Another commit took the version: look again.
                Err(DeltaTableError::Transaction {
                    source: TransactionError::MaxCommitAttempts(_),
                }) => {}
                Err(other) => return Err(delta_err(other)),
            }
        }
        Err(DeltaSinkError::Corrupt {
            uri: uri.clone(),
            message: format!("the rewrite lost the race for a version {ATTEMPTS} times in a row"),
        })
    }

    /// Writes a log checkpoint at the loaded version when at least `every`
    /// commits were made since the last checkpoint. Returns its version.
    pub async fn checkpoint_if_due(&self, every: u64) -> Result<Option<u64>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let Some(version) = table.version() else {
            return Ok(None);
        };
        let last = self.last_checkpoint_version().await?;
        let since = match last {
            Some(last) => version.saturating_sub(last),
            None => version + 1,
        };
        if since < every {
            return Ok(None);
        }
        create_checkpoint(table, None)
            .await
            .map_err(self.delta_err())?;
        Ok(Some(version))
    }

    /// The version of the newest log checkpoint (`_delta_log/_last_checkpoint`).
    pub async fn last_checkpoint_version(&self) -> Result<Option<u64>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let got = table
            .object_store()
            .get(&Path::from("_delta_log/_last_checkpoint"))
            .await;
        let bytes = match got {
            Ok(r) => r.bytes().await.map_err(|e| self.delta_err()(e.into()))?,
            Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.delta_err()(e.into())),
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| DeltaSinkError::Corrupt {
            uri: self.uri().to_string(),
            message: format!("unreadable _delta_log/_last_checkpoint: {e}"),
        })?;
        Ok(value.get("version").and_then(Value::as_u64))
    }

    /// Deletes log files older than `retention` that a checkpoint makes
    /// unnecessary. Returns how many were deleted.
    pub async fn cleanup_expired_logs(&self, retention: Duration) -> Result<usize> {
        let Some(table) = &self.table else {
            return Ok(0);
        };
        let Some(version) = table.version() else {
            return Ok(0);
        };
        let cutoff = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
        cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None)
            .await
            .map_err(self.delta_err())
    }

    /// Deletes every data file that no version within `retention` references
    /// (replaced files, and files of attempts that never committed). The
    /// caller enforces a sensible minimum. Returns how many were deleted.
    pub async fn vacuum(&mut self, retention: Duration) -> Result<usize> {
        let Some(table) = &self.table else {
            return Ok(0);
        };
        let retention =
            chrono::Duration::from_std(retention).map_err(|e| DeltaSinkError::Corrupt {
                uri: self.uri().to_string(),
                message: format!("vacuum retention out of range: {e}"),
            })?;
        let (table, metrics) = table
            .clone()
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            .await
            .map_err(self.delta_err())?;
        self.table = Some(table);
        Ok(metrics.files_deleted.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::files::BatchEncoder;
    use crate::sink::table::{BatchCommit, BatchRows, TableOptions};
    use deltalake::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    fn options(dir: &std::path::Path) -> TableOptions {
        TableOptions {
            uri: dir.join("t").display().to_string(),
            partition_columns: vec!["p".into()],
            target_file_size: 1 << 20,
            ..TableOptions::default()
        }
    }

    async fn ingest(sink: &mut DeltaTableSink, batch_id: u64, ids: &[i64]) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(vec!["a"; ids.len()])),
            ],
        )
        .unwrap();
        sink.commit(
            BatchCommit {
                app_id: "pipe/topic".into(),
                batch_id,
                rows: BatchRows::Arrow(vec![rows]),
                info: serde_json::json!({"appId": "pipe/topic", "batchId": batch_id}),
                file_name: format!("b{batch_id}"),
            },
            &NoIntent,
        )
        .await
        .unwrap();
    }

    /// The rewrite of `files`: their rows as one file.
    async fn rewrite_of(sink: &DeltaTableSink, files: Vec<DataFile>) -> Rewrite {
        let mut encoder = BatchEncoder::new(vec!["p".into()], u64::MAX);
        for f in &files {
            for b in sink.read_data_file(f).await.unwrap() {
                encoder
                    .push_partition(f.partition_values.clone(), &b)
                    .unwrap();
            }
        }
        Rewrite {
            replaced: files,
            files: encoder.finish().unwrap().files,
            name: "compact-test".into(),
            target_size: 1 << 20,
            info: serde_json::json!({}),
        }
    }

    async fn ids(sink: &DeltaTableSink) -> Vec<i64> {
        let mut out = Vec::new();
        for f in sink.data_files().unwrap() {
            for b in sink.read_data_file(&f).await.unwrap() {
                out.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_rewrite_beside_an_append_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingest_sink = DeltaTableSink::open(options(dir.path())).await.unwrap();
        for b in 0..3 {
            ingest(&mut ingest_sink, b, &[b as i64 * 10, b as i64 * 10 + 1]).await;
        }
        let mut compactor = DeltaTableSink::open_existing(options(dir.path()))
            .await
            .unwrap();
        let files = compactor.data_files().unwrap();
        assert_eq!(files.len(), 3);
        let rewrite = rewrite_of(&compactor, files).await;
        // Ingest commits after the compactor read its version.
        ingest(&mut ingest_sink, 3, &[30, 31]).await;
        let outcome = compactor.commit_rewrite(rewrite).await.unwrap().unwrap();
        assert_eq!(outcome.files_added, 1);
        assert_eq!(outcome.version, 5, "committed after the concurrent append");
        assert_eq!(compactor.data_files().unwrap().len(), 2);
        assert_eq!(ids(&compactor).await, [0, 1, 10, 11, 20, 21, 30, 31]);
        assert_eq!(
            compactor.committed_batch("pipe/topic").await.unwrap(),
            Some(3),
            "the txn version of ingest is untouched"
        );
        let log =
            std::fs::read_to_string(dir.path().join("t/_delta_log/00000000000000000005.json"))
                .unwrap();
        let actions: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            actions
                .iter()
                .any(|a| a["commitInfo"]["operation"] == "OPTIMIZE")
        );
        for kind in ["add", "remove"] {
            let of_kind: Vec<_> = actions.iter().filter_map(|a| a.get(kind)).collect();
            assert!(!of_kind.is_empty(), "{kind} actions");
            assert!(of_kind.iter().all(|a| a["dataChange"] == false), "{log}");
        }
        assert!(actions.iter().all(|a| a.get("txn").is_none()));
    }

    #[tokio::test]
    async fn a_rewrite_of_files_another_rewrite_replaced_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingest_sink = DeltaTableSink::open(options(dir.path())).await.unwrap();
        for b in 0..2 {
            ingest(&mut ingest_sink, b, &[b as i64]).await;
        }
        let mut first = DeltaTableSink::open_existing(options(dir.path()))
            .await
            .unwrap();
        let mut second = DeltaTableSink::open_existing(options(dir.path()))
            .await
            .unwrap();
        let first_rewrite = rewrite_of(&first, first.data_files().unwrap()).await;
        let second_rewrite = rewrite_of(&second, second.data_files().unwrap()).await;
        assert!(first.commit_rewrite(first_rewrite).await.unwrap().is_some());
        assert_eq!(second.commit_rewrite(second_rewrite).await.unwrap(), None);
        second.refresh().await.unwrap();
        assert_eq!(ids(&second).await, [0, 1], "no row twice");
        // The dropped rewrite's file is gone; the winner's stays.
        let parquet_files = std::fs::read_dir(dir.path().join("t/p=a"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("part-compact")
            })
            .count();
        assert_eq!(parquet_files, 1);
    }

    #[tokio::test]
    async fn checkpoints_when_due_and_vacuum_deletes_replaced_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = DeltaTableSink::open(options(dir.path())).await.unwrap();
        for b in 0..4 {
            ingest(&mut sink, b, &[b as i64]).await;
        }
        assert_eq!(sink.checkpoint_if_due(10).await.unwrap(), None);
        assert_eq!(sink.checkpoint_if_due(4).await.unwrap(), Some(4));
        assert_eq!(sink.last_checkpoint_version().await.unwrap(), Some(4));
        assert_eq!(sink.checkpoint_if_due(4).await.unwrap(), None);
        let rewrite = rewrite_of(&sink, sink.data_files().unwrap()).await;
        sink.commit_rewrite(rewrite).await.unwrap().unwrap();
        // Replaced files stay for readers of older versions until vacuum.
        let on_disk = || std::fs::read_dir(dir.path().join("t/p=a")).unwrap().count();
        assert_eq!(on_disk(), 5);
        assert_eq!(sink.vacuum(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(sink.vacuum(Duration::ZERO).await.unwrap(), 4);
        assert_eq!(on_disk(), 1);
        assert_eq!(ids(&sink).await, [0, 1, 2, 3]);
    }
}
