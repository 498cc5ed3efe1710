//! Operating and state application: the operators of `tributary-stream`
//! over a RocksDB state store, wired into the micro-batch loop. A batch is operated on the
//! state left by the batch before; its output and late rows are committed
//! with the batch's txn, and only then is its state change applied, marked
//! with its batch id. After a crash the state is behind the table by the
//! batches applied since RocksDB last flushed (at most
//! `COMMITS_PER_FLUSH`), or gone; the batches it lacks are re-run from
//! their recorded offsets with every table commit skipped as already landed.

use std::path::PathBuf;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use object_store::path::Path as ObjectPath;
use tributary_delta::BatchRows;
use tributary_spec::{OutputMode, PartitionColumn, TableSpec, WINDOW_END, WINDOW_START};
use tributary_state::{
    MemoryStore, PreparedWrites, RocksOptions, RocksStore, Snapshots, StagedWrites, StateStore,
};
use tributary_stream::{Operated, Operator, OperatorConfig};
use tributary_transform::Transform;

use crate::contracts::CommitMode;
use crate::encode::{Payload, transform_of};
use crate::error::{EngineError, Result};
use crate::options::{CheckpointStore, Components, StateBackend};
use crate::progress::{EventTimeProgress, format_micros};
use crate::shape::TableShape;

/// The rows of a batch, by table.
pub(crate) struct BatchOutput {
    pub data: BatchRows,
    pub mode: CommitMode,
    pub late: Option<RecordBatch>,
    /// The watermark the batch ran with, in microseconds.
    pub watermark: Option<i64>,
    /// Rows the transform after the features dropped.
    pub filtered: u64,
}

/// Runs a stateful group's operators on a batch's rows, on the state the
/// previous batch left (nothing is applied); a stateless group's encoded
/// rows pass through. Returns the rows for each table and, for a stateful
/// group, the staged state change.
pub(crate) fn operate(
    state: Option<&mut GroupState>,
    batch_id: u64,
    payload: Payload,
) -> Result<(BatchOutput, Option<(Operated, PendingWrites)>)> {
    let rows = match payload {
        Payload::Encoded(encoded) => {
            let output = BatchOutput {
                data: BatchRows::Encoded(encoded),
                mode: CommitMode::Append,
                late: None,
                watermark: None,
                filtered: 0,
            };
            return Ok((output, None));
        }
        Payload::Rows(rows) => rows,
    };
    let state = state
        .ok_or_else(|| EngineError::Internal("rows for operators without their state".into()))?;
    let mut operated = tokio::task::block_in_place(|| state.operate(batch_id, &rows))?;
    let writes = state.start_writes(std::mem::take(&mut operated.writes));
    let (rows, filtered) = state.table_rows(&operated)?;
    let output = BatchOutput {
        data: BatchRows::Arrow(rows),
        mode: state.commit_mode(),
        late: operated.late.take(),
        watermark: operated.watermarks.eviction,
        filtered,
    };
    Ok((output, Some((operated, writes))))
}

/// A batch's state change on its way to the store.
pub(crate) enum PendingWrites {
    /// RocksDB's, being encoded on a blocking thread while the batch's
    /// output is shaped, encoded and committed.
    Encoding(tokio::task::JoinHandle<PreparedWrites>),
    Staged(StagedWrites),
}

/// Applies a committed batch's state change, and takes a snapshot when one
/// is due. Returns what the operators did, for the progress event.
pub(crate) async fn apply_state(
    state: Option<&mut GroupState>,
    batch_id: u64,
    operated: Option<(Operated, PendingWrites)>,
    late_rows_table_version: Option<u64>,
) -> Result<Option<EventTimeProgress>> {
    let Some((operated, writes)) = operated else {
        return Ok(None);
    };
    let state =
        state.ok_or_else(|| EngineError::Internal("operated rows without their state".into()))?;
    let progress = EventTimeProgress {
        watermark: operated.watermarks.eviction.map(format_micros),
        num_late_rows: operated.late_rows,
        num_duplicate_rows: operated.duplicates,
        late_rows_table_version,
    };
    state.apply(batch_id, writes).await?;
    state.snapshot_if_due(batch_id).await;
    Ok(Some(progress))
}

/// Where a group's RocksDB state lives.
pub(crate) fn state_dir(spec: &TableSpec, group: &str) -> PathBuf {
    match &spec.checkpoint.state_dir {
        Some(dir) => PathBuf::from(dir).join(&spec.pipeline).join(group),
        None => {
            let location = &spec.checkpoint.location;
            let local = location.strip_prefix("file://").unwrap_or(location);
            PathBuf::from(local).join("state").join(group)
        }
    }
}

/// The operators and state of one group.
pub(crate) struct GroupState {
    operator: Operator,
    store: Store,
    snapshot_every: u64,
    /// Partition columns of a windowed table, derived from its output.
    output_partitions: Option<Vec<PartitionColumn>>,
    /// The columns identifying a window row, for update mode's MERGE.
    merge_keys: Option<Vec<String>>,
    /// With `features`: the transform, which reads them, and the table's
    /// shape, applied to the operators' output.
    after_features: Option<(Option<Transform>, TableShape)>,
}

/// A group's state store, of the backend the caller picked.
enum Store {
    /// With the snapshots of an object-store checkpoint.
    Rocks(RocksStore, Option<Snapshots>),
    Memory(MemoryStore),
}

impl Store {
    fn contract(&self) -> &dyn StateStore {
        match self {
            Store::Rocks(store, _) => store,
            Store::Memory(store) => store,
        }
    }
}

/// The state snapshots of a group, when its checkpoint is in object storage.
fn snapshots_for(spec: &TableSpec, checkpoint: &CheckpointStore, group: &str) -> Option<Snapshots> {
    let CheckpointStore::Object { store, uri } = checkpoint else {
        return None;
    };
    (spec.checkpoint.state_snapshot_every > 0).then(|| {
        Snapshots::new(
            store.clone(),
            &format!("{}/state/{group}", uri.trim_end_matches('/')),
            ObjectPath::from(format!("state/{group}")),
        )
    })
}

fn state_dir_err(path: &std::path::Path, source: std::io::Error) -> EngineError {
    EngineError::StateDir {
        path: path.display().to_string(),
        source,
    }
}

/// Opens the group's RocksDB state; a node without it restores the newest
/// snapshot first, when there is one.
async fn open_rocks(
    spec: &TableSpec,
    checkpoint: &CheckpointStore,
    group: &str,
    options: &RocksOptions,
) -> Result<Store> {
    let dir = state_dir(spec, group);
    let snapshots = snapshots_for(spec, checkpoint, group);
    let mut restored = false;
    if let Some(s) = &snapshots
        && !dir.join("CURRENT").exists()
    {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| state_dir_err(&dir, source))?;
        }
        match s.restore(&dir).await? {
            Some(batch) => {
                restored = true;
                tracing::info!(pipeline = %spec.pipeline, group, batch, dir = %dir.display(), "restored the state snapshot")
            }
            None => {
                tracing::info!(pipeline = %spec.pipeline, group, "no state snapshot to restore")
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(|source| state_dir_err(&dir, source))?;
    let store = tokio::task::block_in_place(|| {
        if restored {
            RocksStore::open_restored(&dir, options.clone())
        } else {
            RocksStore::open(&dir, options.clone())
        }
    })?;
    Ok(Store::Rocks(store, snapshots))
}

impl GroupState {
    /// Opens the group's state in the picked backend.
    pub(crate) async fn open(
        spec: &TableSpec,
        components: &Components,
        group: &str,
        config: OperatorConfig,
    ) -> Result<GroupState> {
        let store = match &components.state {
            StateBackend::RocksDb(options) => {
                open_rocks(spec, &components.checkpoint, group, options).await?
            }
            StateBackend::Memory => Store::Memory(MemoryStore::new()),
        };
        let windowed = spec.window.is_some();
        let merge_keys = (windowed && spec.output_mode == OutputMode::Update).then(|| {
            let mut keys = vec![WINDOW_START.to_string(), WINDOW_END.to_string()];
            keys.extend(spec.group_by.iter().cloned());
            keys
        });
        let after_features = match &spec.features {
            Some(_) => Some((
                transform_of(spec)?,
                TableShape::new(spec, None, spec.partition_columns()),
            )),
            None => None,
        };
        Ok(GroupState {
            operator: Operator::new(config),
            store,
            snapshot_every: spec.checkpoint.state_snapshot_every,
            output_partitions: windowed.then(|| spec.partition_columns()),
            merge_keys,
            after_features,
        })
    }

    /// The table's schema, which rows with features are shaped to.
    pub(crate) fn follow_table(&mut self, table_schema: Option<SchemaRef>) {
        if let Some((_, shape)) = &mut self.after_features {
            shape.follow(table_schema);
        }
    }

    /// The last batch whose state is applied.
    pub(crate) fn committed_batch(&self) -> Result<Option<u64>> {
        Ok(self.store.contract().committed_batch()?)
    }

    /// Whether the watermark moved since the last batch ran with it, so
    /// that a batch without rows would close windows or forget keys.
    pub(crate) fn watermark_moved(&self) -> Result<bool> {
        let w = self.operator.watermarks(self.store.contract())?;
        Ok(w.eviction.is_some() && w.eviction != w.late)
    }

    /// Operates one batch on the committed state (nothing is applied).
    pub(crate) fn operate(&self, batch_id: u64, rows: &[RecordBatch]) -> Result<Operated> {
        Ok(self
            .operator
            .process(self.store.contract(), batch_id, rows)?)
    }

    /// The table rows of an operated batch, partition columns included,
    /// and the rows the transform after the features dropped.
    pub(crate) fn table_rows(&mut self, operated: &Operated) -> Result<(Vec<RecordBatch>, u64)> {
        let Some(rows) = &operated.rows else {
            return Ok((Vec::new(), 0));
        };
        if let Some((transform, shape)) = &mut self.after_features {
            let (rows, filtered) = match transform {
                Some(t) => {
                    let out = t.apply(rows)?;
                    (out.rows, out.filtered as u64)
                }
                None => (rows.clone(), 0),
            };
            let metadata = rows.schema().metadata().clone();
            return Ok((vec![shape.shape(&rows, &metadata)?], filtered));
        }
        Ok(match &self.output_partitions {
            Some(p) => (vec![tributary_delta::add_partition_columns(rows, p)?], 0),
            None => (vec![rows.clone()], 0),
        })
    }

    /// How the group's output meets its table: update mode upserts windows.
    fn commit_mode(&self) -> CommitMode {
        match &self.merge_keys {
            Some(keys) => CommitMode::Upsert {
                keys: keys.clone(),
                partitions: self.output_partitions.clone().unwrap_or_default(),
            },
            None => CommitMode::Append,
        }
    }

    /// Starts readying a batch's state change for the store.
    fn start_writes(&self, writes: StagedWrites) -> PendingWrites {
        match self.store {
            Store::Rocks(..) => PendingWrites::Encoding(tokio::task::spawn_blocking(move || {
                RocksStore::prepare(writes)
            })),
            Store::Memory(_) => PendingWrites::Staged(writes),
        }
    }

    /// Applies a committed batch's state change.
    async fn apply(&mut self, batch_id: u64, writes: PendingWrites) -> Result<()> {
        match (writes, &mut self.store) {
            (PendingWrites::Encoding(encoding), Store::Rocks(store, _)) => {
                let prepared = encoding.await.map_err(|e| {
                    EngineError::Internal(format!("encoding the state writes failed: {e}"))
                })?;
                tokio::task::block_in_place(|| store.commit_prepared(batch_id, prepared))?;
            }
            (PendingWrites::Staged(writes), Store::Memory(store)) => {
                store.commit(batch_id, writes)?
            }
            _ => {
                return Err(EngineError::Internal(
                    "state writes for another store".into(),
                ));
            }
        }
        Ok(())
    }

    /// Uploads a snapshot when `batch_id` is due for one. A failed upload
    /// is only logged: the state is safe on disk, and the next due batch
    /// tries again.
    pub(crate) async fn snapshot_if_due(&mut self, batch_id: u64) {
        let every = self.snapshot_every;
        let Store::Rocks(store, Some(snapshots)) = &mut self.store else {
            return;
        };
        if every == 0 || !(batch_id + 1).is_multiple_of(every) {
            return;
        }
        let scratch = store.path().with_extension("snapshot");
        let store = &*store;
        let taken = tokio::task::block_in_place(|| -> Result<String> {
            if scratch.exists() {
                std::fs::remove_dir_all(&scratch)
                    .map_err(|source| state_dir_err(&scratch, source))?;
            }
            store.checkpoint_to(&scratch)?;
            Ok(store.lineage()?)
        });
        let uploaded = match taken {
            Ok(lineage) => snapshots
                .upload(&scratch, batch_id, &lineage)
                .await
                .map_err(EngineError::from),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&scratch);
        match uploaded {
            Ok(o) => tracing::info!(
                batch = batch_id,
                new_sst = o.new_sst,
                reused_sst = o.reused_sst,
                bytes = o.bytes,
                "state snapshot uploaded"
            ),
            Err(e) => {
                tracing::warn!(batch = batch_id, error = %e, "could not upload the state snapshot; retrying at the next due batch")
            }
        }
    }
}

#[cfg(test)]
mod tests;
