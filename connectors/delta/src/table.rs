use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTableBuilder, DeltaTableError};
use serde_json::Value;
use url::Url;

use crate::COMMIT_INFO_KEY;
use crate::error::{DeltaSinkError, Result};

#[derive(Debug, Clone)]
pub struct TableOptions {
    pub uri: String,
    /// Partition column names (present in every batch written).
    pub partition_columns: Vec<String>,
    pub target_file_size: u64,
}

/// One micro-batch for one table.
pub struct BatchCommit {
    /// `<pipeline>/<group>`: the Delta `txn.appId`.
    pub app_id: String,
    pub batch_id: u64,
    /// Rows in the table's Arrow schema (see `tributary_avro::to_delta_batch`).
    pub batches: Vec<RecordBatch>,
    /// Stored in `commitInfo.tributary`: batch id, offset ranges, ...
    pub info: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Table version created; `None` when the batch had already landed.
    pub version: Option<u64>,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
}

/// What a committed batch recorded in `commitInfo.tributary`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitMarker {
    pub version: u64,
    pub info: Value,
}

pub struct DeltaTableSink {
    options: TableOptions,
    url: Url,
    table: Option<DeltaTable>,
}

impl DeltaTableSink {
    /// Opens the table if it exists; it is created on the first commit otherwise.
    pub async fn open(options: TableOptions) -> Result<DeltaTableSink> {
        let url = table_url(&options.uri)?;
        let mut sink = DeltaTableSink {
            options,
            url,
            table: None,
        };
        sink.refresh().await?;
        Ok(sink)
    }

    pub fn uri(&self) -> &str {
        &self.options.uri
    }

    fn delta_err(&self) -> impl Fn(DeltaTableError) -> DeltaSinkError + '_ {
        |source| DeltaSinkError::delta(&self.options.uri, source)
    }

    /// Reloads the table state from the log.
    pub async fn refresh(&mut self) -> Result<()> {
        if let Some(table) = &mut self.table {
            return table
                .update_incremental(None)
                .await
                .map_err(|source| DeltaSinkError::delta(&self.options.uri, source));
        }
        let builder = DeltaTableBuilder::from_url(self.url.clone()).map_err(self.delta_err())?;
        match builder.load().await {
            Ok(table) => self.table = Some(table),
            Err(DeltaTableError::NotATable(_)) => self.table = None,
            Err(e) if e.to_string().contains("No snapshot or version 0 found") => self.table = None,
            Err(e) => return Err(self.delta_err()(e)),
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.table.is_some()
    }

    /// The table's Arrow schema, once it exists.
    pub fn arrow_schema(&self) -> Option<SchemaRef> {
        self.table
            .as_ref()
            .and_then(|t| t.snapshot().ok())
            .map(|s| s.snapshot().arrow_schema())
    }

    pub fn version(&self) -> Option<u64> {
        self.table.as_ref().and_then(|t| t.version())
    }

    /// The last batch id `app_id` committed (its `txn` version).
    pub async fn committed_batch(&self, app_id: &str) -> Result<Option<u64>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let state = table.snapshot().map_err(self.delta_err())?;
        let v = state
            .transaction_version(table.log_store().as_ref(), app_id)
            .await
            .map_err(self.delta_err())?;
        Ok(v.map(|v| v as u64))
    }

    /// The newest commit by `app_id` still in the log, scanning back from the latest version.
    pub async fn last_marker(&self, app_id: &str) -> Result<Option<CommitMarker>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let log_store = table.log_store();
        let Some(mut version) = table.version() else {
            return Ok(None);
        };
        loop {
            let Some(bytes) = log_store
                .read_commit_entry(version)
                .await
                .map_err(self.delta_err())?
            else {
                break;
            };
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(action) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                if let Some(info) = action
                    .get("commitInfo")
                    .and_then(|c| c.get(COMMIT_INFO_KEY))
                    && info.get("appId").and_then(Value::as_str) == Some(app_id)
                {
                    return Ok(Some(CommitMarker {
                        version,
                        info: info.clone(),
                    }));
                }
            }
            if version == 0 {
                break;
            }
            version -= 1;
        }
        Ok(None)
    }

    /// Commits one batch as one Delta transaction tagged `txn {app_id, batch_id}`.
    /// Idempotent: a batch whose id the table's txn version already covers is
    /// skipped. A concurrent commit of the same app id (a zombie instance) is
    /// refused with `ConcurrentWriter`, never written twice.
    pub async fn commit(&mut self, commit: BatchCommit) -> Result<CommitOutcome> {
        self.refresh().await?;
        if let Some(done) = self.committed_batch(&commit.app_id).await?
            && done >= commit.batch_id
        {
            return Ok(CommitOutcome::default());
        }
        if self.table.is_none() {
            let Some(first) = commit.batches.first() else {
                // Nothing to write and no table yet: the batch leaves no trace here.
                return Ok(CommitOutcome::default());
            };
            self.create(first.schema()).await?;
        }
        let uri = self.options.uri.clone();
        let table = self.table.as_mut().ok_or_else(|| DeltaSinkError::Corrupt {
            uri: uri.clone(),
            message: "table vanished after creation".into(),
        })?;
        let delta_err = |source| DeltaSinkError::delta(&uri, source);

        let mut rows = 0u64;
        let mut actions: Vec<Action> = Vec::new();
        if !commit.batches.is_empty() {
            let mut writer = RecordBatchWriter::for_table(table)
                .map_err(delta_err)?
                .with_target_file_size(self.options.target_file_size);
            for batch in commit.batches {
                rows += batch.num_rows() as u64;
                writer.write(batch).await.map_err(|e| match e {
                    DeltaTableError::SchemaMismatch { msg } => DeltaSinkError::SchemaMismatch {
                        uri: uri.clone(),
                        message: msg,
                    },
                    other => delta_err(other),
                })?;
            }
            actions.extend(
                writer
                    .flush()
                    .await
                    .map_err(delta_err)?
                    .into_iter()
                    .map(Action::Add),
            );
        }
        let files = actions.len();
        let bytes = actions
            .iter()
            .map(|a| {
                if let Action::Add(add) = a {
                    add.size as u64
                } else {
                    0
                }
            })
            .sum();

        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&commit.app_id, commit.batch_id as i64))
            .with_metadata([(COMMIT_INFO_KEY.to_string(), commit.info)]);
        let partition_by = (!self.options.partition_columns.is_empty())
            .then(|| self.options.partition_columns.clone());
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by,
            predicate: None,
        };
        let snapshot = table.snapshot().map_err(delta_err)?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(|e| match e {
                DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(_),
                } => DeltaSinkError::ConcurrentWriter {
                    uri: uri.clone(),
                    app_id: commit.app_id.clone(),
                    batch: commit.batch_id,
                },
                other => delta_err(other),
            })?;
        let version = finalized.version();
        table.update_incremental(None).await.map_err(delta_err)?;
        Ok(CommitOutcome {
            version: Some(version),
            files,
            bytes,
            rows,
        })
    }

    async fn create(&mut self, schema: SchemaRef) -> Result<()> {
        let kernel: StructType =
            schema
                .as_ref()
                .try_into_kernel()
                .map_err(|e| DeltaSinkError::SchemaMismatch {
                    uri: self.options.uri.clone(),
                    message: e.to_string(),
                })?;
        let created = CreateBuilder::new()
            .with_location(self.url.to_string())
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(self.options.partition_columns.clone())
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(table) => self.table = Some(table),
            // Another instance created it first: use theirs.
            Err(_)
                if {
                    self.refresh().await?;
                    self.table.is_some()
                } => {}
            Err(e) => return Err(self.delta_err()(e)),
        }
        Ok(())
    }
}

/// Table URI to URL: `file://` URIs and absolute paths (created if missing).
pub(crate) fn table_url(uri: &str) -> Result<Url> {
    let err = |message: String| DeltaSinkError::Uri {
        uri: uri.to_string(),
        message,
    };
    let url = if uri.starts_with('/') {
        Url::from_directory_path(uri).map_err(|_| err("not an absolute path".into()))?
    } else {
        Url::parse(uri).map_err(|e| err(e.to_string()))?
    };
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|_| err("not a local path".into()))?;
        std::fs::create_dir_all(&path).map_err(|e| err(format!("cannot create directory: {e}")))?;
        return Url::from_directory_path(&path).map_err(|_| err("not a directory path".into()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]));
        let parts: Vec<&str> = ids
            .iter()
            .map(|i| if i % 2 == 0 { "even" } else { "odd" })
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(parts)),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn commits_are_idempotent_per_app_id_and_batch() {
        let dir = tempfile::tempdir().unwrap();
        let options = TableOptions {
            uri: dir.path().join("t").display().to_string(),
            partition_columns: vec!["p".into()],
            target_file_size: 1 << 20,
        };
        let mut sink = DeltaTableSink::open(options.clone()).await.unwrap();
        assert!(!sink.exists());
        let info = serde_json::json!({"appId": "pipe/topic", "batchId": 0});
        let first = sink
            .commit(BatchCommit {
                app_id: "pipe/topic".into(),
                batch_id: 0,
                batches: vec![batch(&[1, 2, 3])],
                info: info.clone(),
            })
            .await
            .unwrap();
        assert_eq!(first.rows, 3);
        assert_eq!(first.files, 2, "one file per partition");
        // The same batch again is skipped, from this handle or a fresh one.
        let again = sink
            .commit(BatchCommit {
                app_id: "pipe/topic".into(),
                batch_id: 0,
                batches: vec![batch(&[1, 2, 3])],
                info: info.clone(),
            })
            .await
            .unwrap();
        assert_eq!(again.version, None);
        let mut other = DeltaTableSink::open(options).await.unwrap();
        assert_eq!(other.committed_batch("pipe/topic").await.unwrap(), Some(0));
        assert_eq!(other.committed_batch("other/topic").await.unwrap(), None);
        let next = other
            .commit(BatchCommit {
                app_id: "pipe/topic".into(),
                batch_id: 1,
                batches: vec![batch(&[4])],
                info: serde_json::json!({"appId": "pipe/topic", "batchId": 1}),
            })
            .await
            .unwrap();
        assert_eq!(next.version, Some(first.version.unwrap() + 1));
        let marker = other.last_marker("pipe/topic").await.unwrap().unwrap();
        assert_eq!(marker.info["batchId"], 1);
        assert_eq!(marker.version, next.version.unwrap());
    }
}
