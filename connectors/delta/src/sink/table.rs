use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{DataType, FieldRef, Fields, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, MetadataExt, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTableBuilder, DeltaTableError, Path};
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use url::Url;

use crate::COMMIT_INFO_KEY;
use crate::error::{DeltaSinkError, Result};
use crate::sink::files::{
    EncodedBatch, FileIntent, delete_attempt, encode, object_paths, upload_files,
    version_that_added,
};

#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    pub uri: String,
    /// Object store options (credentials, endpoint, commit mode) for
    /// `s3://` tables; unset ones come from the environment.
    pub storage_options: BTreeMap<String, String>,
    /// Partition column names (present in every batch written).
    pub partition_columns: Vec<String>,
    pub target_file_size: u64,
}

/// Errors deltalake gives for a log file it cannot parse.
fn may_be_unreadable_log(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::KernelError(_)
            | DeltaTableError::Kernel { .. }
            | DeltaTableError::InvalidJsonLog { .. }
            | DeltaTableError::SerializeLogJson { .. }
            | DeltaTableError::Generic(_)
    )
}

/// One micro-batch for one table.
pub struct BatchCommit {
    /// `<pipeline>/<group>`: the Delta `txn.appId`.
    pub app_id: String,
    pub batch_id: u64,
    /// The rows, in the table's schema (partition columns included).
    pub rows: BatchRows,
    /// Stored in `commitInfo.tributary`: batch id, offset ranges, ...
    pub info: Value,
    /// Data files are named `part-<file_name>-<attempt>-<n>`: the batch is
    /// recognisable in the table's directory, and an attempt never
    /// overwrites another's file.
    pub file_name: String,
}

/// Rows to commit: Arrow batches to encode, or files encoded already (the
/// pipeline encodes while it reads).
pub enum BatchRows {
    Arrow(Vec<RecordBatch>),
    Encoded(EncodedBatch),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Table version created; `None` when the batch had already landed or
    /// had nothing to write to a table that does not exist yet.
    pub version: Option<u64>,
    /// The table already had the batch (its txn version covers it).
    pub already_landed: bool,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
    /// Time spent uploading data files.
    pub upload: std::time::Duration,
    /// Time spent committing to the Delta log.
    pub commit: std::time::Duration,
    /// Commit attempts that lost the race for the next version to another
    /// writer (update mode's MERGE) and were redone.
    pub conflicts: u32,
}

impl CommitOutcome {
    /// The batch was in the table already: nothing was written.
    pub(crate) fn landed() -> CommitOutcome {
        CommitOutcome {
            already_landed: true,
            ..CommitOutcome::default()
        }
    }
}

/// What a committed batch recorded in `commitInfo.tributary`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitMarker {
    pub version: u64,
    pub info: Value,
}

pub struct DeltaTableSink {
    pub(crate) options: TableOptions,
    url: Url,
    pub(crate) table: Option<DeltaTable>,
}

impl DeltaTableSink {
    /// Opens the table if it exists; it is created on the first commit otherwise.
    pub async fn open(options: TableOptions) -> Result<DeltaTableSink> {
        Self::open_with(options, true).await
    }

    /// Opens the table for reading only: nothing is created, and a missing
    /// table is no table (`tributary status`).
    pub async fn open_existing(options: TableOptions) -> Result<DeltaTableSink> {
        Self::open_with(options, false).await
    }

    async fn open_with(options: TableOptions, create: bool) -> Result<DeltaTableSink> {
        crate::store::register_s3();
        let url = table_url(&options.uri, create)?;
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

    /// The storage options in the form deltalake takes them.
    fn storage_options(&self) -> HashMap<String, String> {
        self.options.storage_options.clone().into_iter().collect()
    }

    pub(crate) fn delta_err(&self) -> impl Fn(DeltaTableError) -> DeltaSinkError + '_ {
        |source| DeltaSinkError::delta(&self.options.uri, source)
    }

    /// Loads the table as of `version` (its log must still hold it);
    /// without a table there is nothing to load.
    pub async fn load_version(&mut self, version: u64) -> Result<()> {
        let Some(table) = &mut self.table else {
            return Ok(());
        };
        table
            .load_version(version)
            .await
            .map_err(|source| DeltaSinkError::delta(&self.options.uri, source))
    }

    /// Reloads the table state from the log.
    pub async fn refresh(&mut self) -> Result<()> {
        match self.load_or_update().await {
            Err(DeltaSinkError::Delta { uri, source }) if may_be_unreadable_log(&source) => {
                Err(self
                    .unreadable_log_file()
                    .await
                    .unwrap_or(DeltaSinkError::Delta { uri, source }))
            }
            other => other,
        }
    }

    /// The newest log commit that does not parse as JSON actions, if any:
    /// deltalake's error names no file.
    async fn unreadable_log_file(&self) -> Option<DeltaSinkError> {
        // Enough to reach back past the last checkpoint of any table.
        const NEWEST: usize = 1000;
        let store =
            crate::store::object_store_for(&self.options.uri, &self.options.storage_options)
                .ok()?;
        let log = Path::from("_delta_log");
        let mut commits: Vec<Path> = store
            .list(Some(&log))
            .try_filter_map(|meta| async move {
                let name = meta.location.filename().unwrap_or_default();
                let is_commit = name.len() == 25
                    && name.ends_with(".json")
                    && name[..20].bytes().all(|b| b.is_ascii_digit());
                Ok(is_commit.then_some(meta.location))
            })
            .try_collect()
            .await
            .ok()?;
        commits.sort();
        for path in commits.iter().rev().take(NEWEST) {
            let bytes = store.get(path).await.ok()?.bytes().await.ok()?;
            let unreadable = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .find_map(|line| serde_json::from_slice::<Value>(line).err());
            if let Some(e) = unreadable
                .map(|e| e.to_string())
                .or_else(|| bytes.is_empty().then(|| "the file is empty".to_string()))
            {
                return Some(DeltaSinkError::CorruptLogFile {
                    uri: self.options.uri.clone(),
                    file: path.to_string(),
                    message: e,
                });
            }
        }
        None
    }

    async fn load_or_update(&mut self) -> Result<()> {
        if let Some(table) = &mut self.table {
            return table
                .update_incremental(None)
                .await
                .map_err(|source| DeltaSinkError::delta(&self.options.uri, source));
        }
        if self.url.scheme() == "file" && self.url.to_file_path().is_ok_and(|p| !p.exists()) {
            return Ok(());
        }
        let builder = DeltaTableBuilder::from_url(self.url.clone())
            .map_err(self.delta_err())?
            .with_storage_options(self.storage_options());
        match builder.load().await {
            Ok(table) => self.table = Some(table),
            Err(DeltaTableError::NotATable(_)) => self.table = None,
            Err(e) if e.to_string().contains("No snapshot or version 0 found") => self.table = None,
            Err(e) => return Err(self.delta_err()(e)),
        }
        Ok(())
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

    /// Rows in the table, from the files' statistics; `None` without a table.
    pub fn row_count(&self) -> Result<Option<u64>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let snapshot = table.snapshot().map_err(self.delta_err())?;
        Ok(Some(
            snapshot
                .log_data()
                .into_iter()
                .map(|f| f.num_records().unwrap_or(0) as u64)
                .sum(),
        ))
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
        self.find_marker(app_id, None).await
    }

    /// The commit of batch `batch` by `app_id`, if still in the log.
    pub async fn marker_of(&self, app_id: &str, batch: u64) -> Result<Option<CommitMarker>> {
        self.find_marker(app_id, Some(batch)).await
    }

    async fn find_marker(&self, app_id: &str, batch: Option<u64>) -> Result<Option<CommitMarker>> {
        self.walk_log_back(|version, bytes| {
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(action) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                if let Some(info) = action
                    .get("commitInfo")
                    .and_then(|c| c.get(COMMIT_INFO_KEY))
                    && info.get("appId").and_then(Value::as_str) == Some(app_id)
                {
                    let id = info.get("batchId").and_then(Value::as_u64);
                    match batch {
                        Some(wanted) if id.is_some_and(|id| id > wanted) => {}
                        Some(wanted) if id != Some(wanted) => return Ok(ControlFlow::Break(None)),
                        _ => {
                            let marker = CommitMarker {
                                version,
                                info: info.clone(),
                            };
                            return Ok(ControlFlow::Break(Some(marker)));
                        }
                    }
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .await
        .map(Option::flatten)
    }

    /// Hands the log's JSON commits to `visit`, from the loaded version back
    /// to the oldest one still kept, until it breaks with a value.
    pub(crate) async fn walk_log_back<T>(
        &self,
        mut visit: impl FnMut(u64, &[u8]) -> Result<ControlFlow<T>>,
    ) -> Result<Option<T>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let Some(mut version) = table.version() else {
            return Ok(None);
        };
        let log_store = table.log_store();
        loop {
            let Some(bytes) = log_store
                .read_commit_entry(version)
                .await
                .map_err(self.delta_err())?
            else {
                return Ok(None);
            };
            if let ControlFlow::Break(found) = visit(version, &bytes)? {
                return Ok(Some(found));
            }
            if version == 0 {
                return Ok(None);
            }
            version -= 1;
        }
    }

    /// Commits one batch as one Delta transaction tagged `txn {app_id, batch_id}`.
    /// Idempotent: a batch whose id the table's txn version already covers is
    /// skipped. A concurrent commit of the same app id (a zombie instance) is
    /// refused with `ConcurrentWriter`, never written twice.
    pub async fn commit(
        &mut self,
        commit: BatchCommit,
        intent: &dyn FileIntent,
    ) -> Result<CommitOutcome> {
        self.refresh().await?;
        if let Some(done) = self.committed_batch(&commit.app_id).await?
            && done >= commit.batch_id
        {
            return Ok(CommitOutcome::landed());
        }
        let encoded = match commit.rows {
            BatchRows::Arrow(batches) => {
                encode(
                    batches,
                    self.options.partition_columns.clone(),
                    self.options.target_file_size,
                )
                .await?
            }
            BatchRows::Encoded(encoded) => encoded,
        };
        if self.table.is_none() {
            let Some(schema) = encoded.schema.clone() else {
                // Nothing to write and no table yet: the batch leaves no trace here.
                return Ok(CommitOutcome::default());
            };
            self.create(schema).await?;
        }
        let uri = self.options.uri.clone();
        let table = self.table.as_mut().ok_or_else(|| DeltaSinkError::Corrupt {
            uri: uri.clone(),
            message: "table vanished after creation".into(),
        })?;
        let delta_err = |source| DeltaSinkError::delta(&uri, source);
        let table_schema = table
            .snapshot()
            .map_err(delta_err)?
            .snapshot()
            .arrow_schema();
        // Columns the batch adds (schema evolution) land with its rows, in one commit.
        let evolved_metadata = match &encoded.schema {
            Some(schema) if schema.as_ref() != table_schema.as_ref() => {
                match reconcile(schema, &table_schema) {
                    None => None,
                    Some(merged) => {
                        let kernel: StructType = (&merged).try_into_kernel().map_err(|e| {
                            DeltaSinkError::SchemaMismatch {
                                uri: uri.clone(),
                                message: e.to_string(),
                            }
                        })?;
                        let metadata = table
                            .snapshot()
                            .map_err(delta_err)?
                            .metadata()
                            .clone()
                            .with_schema(&kernel)
                            .map_err(|e| DeltaSinkError::SchemaMismatch {
                                uri: uri.clone(),
                                message: e.to_string(),
                            })?;
                        Some(metadata)
                    }
                }
            }
            _ => None,
        };
        let rows = encoded.rows;
        let attempt = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{}-{}", commit.file_name, &attempt[..8]);
        let upload_started = std::time::Instant::now();
        let adds = upload_files(
            table.object_store(),
            &uri,
            encoded.files,
            &name,
            intent,
            true,
        )
        .await?;
        let upload = upload_started.elapsed();
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        if let Some(metadata) = evolved_metadata {
            actions.insert(0, Action::Metadata(metadata));
        }
        tributary_core::crash_point(tributary_core::CrashPoint::AfterFiles, commit.batch_id);
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
        let read_version = table.version();
        let commit_started = std::time::Instant::now();
        let uploaded = object_paths(actions.iter().filter_map(|a| match a {
            Action::Add(add) => Some(add),
            _ => None,
        }));
        let committed = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await;
        let version = match committed {
            Ok(finalized) => finalized.version(),
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(conflict),
            }) => {
                // Either our own first try landed and its retry was refused
                // (an ambiguous PUT), or another writer of this app id
                // committed the batch first (this instance is a zombie).
                let own = version_that_added(&table.log_store(), read_version, &uploaded)
                    .await
                    .map_err(delta_err)?;
                match own {
                    Some(version) => {
                        tracing::warn!(table = %uri, version, batch = commit.batch_id,
                            "the commit was answered with an error but had landed; kept");
                        version
                    }
                    None => {
                        // The attempt's files were never committed and nobody
                        // else knows them, so they go now.
                        delete_attempt(&table.object_store(), &uri, &uploaded, "a refused attempt")
                            .await;
                        // Another group evolved the table (or someone
                        // altered it) between our read and our commit.
                        if matches!(conflict, CommitConflictError::MetadataChanged) {
                            return Err(DeltaSinkError::SchemaMoved {
                                uri: uri.clone(),
                                message: conflict.to_string(),
                            });
                        }
                        return Err(DeltaSinkError::ConcurrentWriter {
                            uri: uri.clone(),
                            app_id: commit.app_id.clone(),
                            batch: commit.batch_id,
                        });
                    }
                }
            }
            Err(other) => return Err(delta_err(other)),
        };
        tracing::debug!(table = %uri, version, "committed; refreshing the snapshot");
        table.update_incremental(None).await.map_err(delta_err)?;
        tracing::debug!(table = %uri, version, "snapshot refreshed");
        Ok(CommitOutcome {
            already_landed: false,
            version: Some(version),
            files,
            bytes,
            rows,
            upload,
            commit: commit_started.elapsed(),
            conflicts: 0,
        })
    }

    /// Deletes those of `paths` (relative to the table root, announced for
    /// batch `batch` of `app_id`) that the batch's commit did not add: the
    /// data files of attempts that never committed. Files the commit added
    /// stay even when compaction has replaced them since (readers of older
    /// versions need them until vacuum). Without the commit in the log
    /// nothing is deleted.
    pub async fn remove_uncommitted(
        &mut self,
        app_id: &str,
        batch: u64,
        paths: &[String],
    ) -> Result<usize> {
        if paths.is_empty() {
            return Ok(0);
        }
        self.refresh().await?;
        let Some(table) = &self.table else {
            return Ok(0);
        };
        let Some(marker) = self.marker_of(app_id, batch).await? else {
            tracing::warn!(table = %self.options.uri, app_id, batch, "the batch's commit is no longer in the log; its failed attempts' files are left to vacuum");
            return Ok(0);
        };
        let committed = self.added_paths(marker.version).await?;
        let store = table.object_store();
        let mut removed = 0;
        for p in paths {
            if committed.contains(p) {
                continue;
            }
            match store.delete(&Path::from(p.as_str())).await {
                Ok(()) => removed += 1,
                Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
                Err(e) => return Err(self.delta_err()(e.into())),
            }
        }
        Ok(removed)
    }

    /// The data file paths (decoded) that the commit of `version` added.
    async fn added_paths(&self, version: u64) -> Result<HashSet<String>> {
        let Some(table) = &self.table else {
            return Ok(HashSet::new());
        };
        let bytes = table
            .log_store()
            .read_commit_entry(version)
            .await
            .map_err(self.delta_err())?
            .unwrap_or_default();
        Ok(crate::sink::files::added_paths(&bytes).collect())
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
            .with_storage_options(self.storage_options())
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(self.options.partition_columns.clone())
            .with_save_mode(SaveMode::Ignore)
            // A creator that loses the race for version 0 must not retry:
            // deltalake would commit its Protocol and Metadata as version 1,
            // a metadata change that refuses every other writer's commit
            // read at version 0 (each group's first batch at once).
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
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

/// The table's schema extended by the columns and nested fields the batch
/// adds, or `None` when the table holds the batch's already. A batch may
/// lack columns, or nested fields, the table has: it was encoded before
/// another writer (another group, an `ALTER TABLE ADD COLUMNS`) evolved the
/// table, and its files read them as null there, as older files do. Fields
/// are matched by name, as Delta readers match them; types are the
/// encoder's, which conformed the rows to the table it saw.
pub(crate) fn reconcile(batch: &Schema, table: &Schema) -> Option<Schema> {
    merge_fields(table.fields(), batch.fields())
        .map(|fields| Schema::new_with_metadata(fields, table.metadata().clone()))
}

/// `table`'s fields with `batch`'s merged in; `None` when nothing is new.
fn merge_fields(table: &Fields, batch: &Fields) -> Option<Fields> {
    let mut changed = false;
    let mut out: Vec<FieldRef> = Vec::with_capacity(table.len());
    for field in table.iter() {
        let merged = batch
            .find(field.name())
            .and_then(|(_, other)| merge_type(field.data_type(), other.data_type()));
        match merged {
            Some(data_type) => {
                changed = true;
                out.push(Arc::new(field.as_ref().clone().with_data_type(data_type)));
            }
            None => out.push(field.clone()),
        }
    }
    for field in batch.iter() {
        if table.find(field.name()).is_none() {
            changed = true;
            out.push(Arc::new(field.as_ref().clone().with_nullable(true)));
        }
    }
    changed.then(|| Fields::from(out))
}

fn merge_type(table: &DataType, batch: &DataType) -> Option<DataType> {
    let item = |t: &FieldRef, b: &FieldRef| {
        merge_type(t.data_type(), b.data_type())
            .map(|data_type| Arc::new(t.as_ref().clone().with_data_type(data_type)))
    };
    match (table, batch) {
        (DataType::Struct(t), DataType::Struct(b)) => merge_fields(t, b).map(DataType::Struct),
        (DataType::List(t), DataType::List(b)) => item(t, b).map(DataType::List),
        (DataType::LargeList(t), DataType::LargeList(b)) => item(t, b).map(DataType::LargeList),
        (DataType::Map(t, sorted), DataType::Map(b, _)) => {
            item(t, b).map(|entries| DataType::Map(entries, *sorted))
        }
        _ => None,
    }
}

/// Table URI to URL: `file://` URIs and absolute paths (the directory is
/// created if missing and `create`).
pub(crate) fn table_url(uri: &str, create: bool) -> Result<Url> {
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
        if create {
            std::fs::create_dir_all(&path)
                .map_err(|e| err(format!("cannot create directory: {e}")))?;
        }
        return Url::from_directory_path(&path).map_err(|_| err("not a directory path".into()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use std::sync::{Arc, Mutex};

    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_batch_lacking_columns_fits_and_one_adding_fields_evolves_the_table() {
        let geo = |fields: &[&str]| {
            Field::new(
                "geo",
                DataType::Struct(
                    fields
                        .iter()
                        .map(|f| Field::new(*f, DataType::Float64, true))
                        .collect(),
                ),
                true,
            )
        };
        let entries = |name: &str| {
            let key_value = DataType::Struct(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Int32, true),
                ]
                .into(),
            );
            Field::new(
                "m",
                DataType::Map(Arc::new(Field::new(name, key_value, false)), false),
                true,
            )
        };
        let id = Field::new("id", DataType::Int64, true);
        let note = Field::new("note", DataType::Utf8, true);
        // Evolved by another group: the batch lacks `note` and `geo.lon`.
        let table = Schema::new(vec![
            id.clone(),
            geo(&["lat", "lon"]),
            entries("key_value"),
            note.clone(),
        ]);
        let older = Schema::new(vec![id.clone(), geo(&["lat"]), entries("entries")]);
        assert_eq!(reconcile(&older, &table), None);
        // A batch adding a nested field and a column evolves what the table has.
        let newer = Schema::new(vec![
            id.clone(),
            geo(&["lat", "alt"]),
            Field::new("coupon", DataType::Utf8, true),
        ]);
        let merged = reconcile(&newer, &table).unwrap();
        let names: Vec<&str> = merged.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "geo", "m", "note", "coupon"]);
        assert_eq!(merged.field(1), &geo(&["lat", "lon", "alt"]));
    }

    #[derive(Default)]
    struct Announced(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl FileIntent for Announced {
        async fn announce(&self, _table: &str, path: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(path.to_string());
            Ok(())
        }
    }

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

    fn commit_of(batch_id: u64, ids: &[i64]) -> BatchCommit {
        BatchCommit {
            app_id: "pipe/topic".into(),
            batch_id,
            rows: BatchRows::Arrow(vec![batch(ids)]),
            info: serde_json::json!({"appId": "pipe/topic", "batchId": batch_id}),
            file_name: format!("pipe-topic-{batch_id}"),
        }
    }

    #[tokio::test]
    async fn commits_are_idempotent_per_app_id_and_batch() {
        let dir = tempfile::tempdir().unwrap();
        let options = TableOptions {
            uri: dir.path().join("t").display().to_string(),
            partition_columns: vec!["p".into()],
            target_file_size: 1 << 20,
            ..TableOptions::default()
        };
        let announced = Announced::default();
        let mut sink = DeltaTableSink::open(options.clone()).await.unwrap();
        assert_eq!(sink.version(), None, "no table before the first commit");
        let first = sink
            .commit(commit_of(0, &[1, 2, 3]), &announced)
            .await
            .unwrap();
        assert_eq!(first.rows, 3);
        assert_eq!(first.files, 2, "one file per partition");
        assert_eq!(
            announced.0.lock().unwrap().len(),
            2,
            "every file announced before it was written"
        );
        // The same batch again is skipped, from this handle or a fresh one.
        let again = sink
            .commit(commit_of(0, &[1, 2, 3]), &announced)
            .await
            .unwrap();
        assert_eq!(again.version, None);
        let mut other = DeltaTableSink::open(options).await.unwrap();
        assert_eq!(other.committed_batch("pipe/topic").await.unwrap(), Some(0));
        assert_eq!(other.committed_batch("other/topic").await.unwrap(), None);
        let next = other.commit(commit_of(1, &[4]), &announced).await.unwrap();
        assert_eq!(next.version, Some(first.version.unwrap() + 1));
        let marker = other.last_marker("pipe/topic").await.unwrap().unwrap();
        assert_eq!(marker.info["batchId"], 1);
        assert_eq!(marker.version, next.version.unwrap());
    }

    /// Groups and instances that start together all create the table;
    /// exactly one creation lands, and the others use it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_creators_leave_one_creation_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        const CREATORS: usize = 8;
        for round in 0..10 {
            let table_dir = dir.path().join(format!("t{round}"));
            let options = TableOptions {
                uri: table_dir.display().to_string(),
                ..TableOptions::default()
            };
            let start = Arc::new(tokio::sync::Barrier::new(CREATORS));
            let mut creators = Vec::new();
            for _ in 0..CREATORS {
                let mut sink = DeltaTableSink::open(options.clone()).await.unwrap();
                let start = start.clone();
                creators.push(tokio::spawn(async move {
                    start.wait().await;
                    sink.create(batch(&[1]).schema()).await.unwrap();
                    sink.version()
                }));
            }
            for creator in creators {
                assert_eq!(creator.await.unwrap(), Some(0));
            }
            let log: Vec<_> = std::fs::read_dir(table_dir.join("_delta_log"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.ends_with(".json"))
                .collect();
            assert_eq!(log, ["00000000000000000000.json"], "round {round}");
        }
    }

    #[tokio::test]
    async fn files_of_an_attempt_that_never_committed_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let table_dir = dir.path().join("t");
        let options = TableOptions {
            uri: table_dir.display().to_string(),
            partition_columns: vec!["p".into()],
            target_file_size: 1 << 20,
            ..TableOptions::default()
        };
        let mut sink = DeltaTableSink::open(options).await.unwrap();
        let committed = Announced::default();
        sink.commit(commit_of(0, &[1, 2]), &committed)
            .await
            .unwrap();
        // An attempt at batch 1 that wrote its files and died before committing.
        let failed = Announced::default();
        let store = sink.table.as_ref().unwrap().object_store();
        let encoded = encode(vec![batch(&[5, 6])], vec!["p".to_string()], 1 << 20)
            .await
            .unwrap();
        upload_files(
            store,
            "t",
            encoded.files,
            "pipe-topic-1-dead",
            &failed,
            true,
        )
        .await
        .unwrap();
        let count = |d: &std::path::Path| {
            walk(d)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                .count()
        };
        assert_eq!(count(&table_dir), 4);
        let mut all: Vec<String> = committed.0.lock().unwrap().clone();
        all.extend(failed.0.lock().unwrap().iter().cloned());
        assert_eq!(
            sink.remove_uncommitted("pipe/topic", 0, &all)
                .await
                .unwrap(),
            2
        );
        assert_eq!(count(&table_dir), 2, "committed files stay");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
