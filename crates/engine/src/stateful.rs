//! Operating and state application: the operators of `tributary-stream`
//! over a RocksDB state store, wired into the micro-batch loop. A batch is operated on the
//! state left by the batch before; its output and late rows are committed
//! with the batch's txn, and only then is its state change applied, marked
//! with its batch id. After a crash the state is at most one batch behind
//! the table, or gone; the batches it lacks are re-run from their recorded
//! offsets with every table commit skipped as already landed.

use std::path::PathBuf;

use deltalake::arrow::array::RecordBatch;
use object_store::path::Path as ObjectPath;
use tributary_avro::RecordColumns;
use tributary_delta::BatchRows;
use tributary_spec::{
    AggregationSpec, OutputMode, PartitionColumn, TableSpec, WINDOW_END, WINDOW_START, WindowKind,
    WindowSpec,
};
use tributary_state::{RocksOptions, RocksStore, Snapshots, StateStore};
use tributary_stream::{Aggregation, Operated, Operator, OperatorConfig, Window};

use crate::contracts::CommitMode;
use crate::encode::Payload;
use crate::error::{EngineError, Result};
use crate::options::CheckpointStore;
use crate::progress::{EventTimeProgress, format_micros};

/// The rows of a batch, by table.
pub(crate) struct BatchOutput {
    pub data: BatchRows,
    pub mode: CommitMode,
    pub late: Option<RecordBatch>,
    /// The watermark the batch ran with, in microseconds.
    pub watermark: Option<i64>,
}

/// Runs a stateful group's operators on a batch's rows, on the state the
/// previous batch left (nothing is applied); a stateless group's encoded
/// rows pass through. Returns the rows for each table and, for a stateful
/// group, the staged state change.
pub(crate) fn operate(
    state: Option<&GroupState>,
    batch_id: u64,
    payload: Payload,
) -> Result<(BatchOutput, Option<Operated>)> {
    let rows = match payload {
        Payload::Encoded(encoded) => {
            let output = BatchOutput {
                data: BatchRows::Encoded(encoded),
                mode: CommitMode::Append,
                late: None,
                watermark: None,
            };
            return Ok((output, None));
        }
        Payload::Rows(rows) => rows,
    };
    let state = state
        .ok_or_else(|| EngineError::Internal("rows for operators without their state".into()))?;
    let mut operated = tokio::task::block_in_place(|| state.operate(batch_id, &rows))?;
    let output = BatchOutput {
        data: BatchRows::Arrow(state.table_rows(&operated)?),
        mode: state.commit_mode(),
        late: operated.late.take(),
        watermark: operated.watermark,
    };
    Ok((output, Some(operated)))
}

/// Applies a committed batch's state change, and takes a snapshot when one
/// is due. Returns what the operators did, for the progress event.
pub(crate) async fn apply_state(
    state: Option<&mut GroupState>,
    batch_id: u64,
    operated: Option<Operated>,
    late_rows_table_version: Option<u64>,
) -> Result<Option<EventTimeProgress>> {
    let Some(operated) = operated else {
        return Ok(None);
    };
    let state =
        state.ok_or_else(|| EngineError::Internal("operated rows without their state".into()))?;
    let progress = EventTimeProgress {
        watermark: operated.watermark.map(format_micros),
        num_late_rows: operated.late_rows,
        num_duplicate_rows: operated.duplicates,
        late_rows_table_version,
    };
    tokio::task::block_in_place(|| state.apply(batch_id, operated))?;
    state.snapshot_if_due(batch_id).await;
    Ok(Some(progress))
}

/// Columns the decoder adds for the operators only, left out of the table.
const HIDDEN_PARTITION: &str = "__tributary_partition";
const HIDDEN_OFFSET: &str = "__tributary_offset";
const HIDDEN_TIMESTAMP: &str = "__tributary_kafka_timestamp";

/// The Kafka columns an event-time pipeline needs: partition and offset
/// (a batch's canonical row order) and the Kafka timestamp when it is the
/// event time. The spec's own names are used when it has them; hidden
/// columns otherwise. Returns the columns to hide from the table.
pub(crate) fn add_operator_columns(spec: &TableSpec, columns: &mut RecordColumns) -> Vec<String> {
    let mut hidden = Vec::new();
    if !spec.is_stateful() {
        return hidden;
    }
    let mut need = |slot: &mut Option<String>, name: &str| {
        if slot.is_none() {
            *slot = Some(name.to_string());
            hidden.push(name.to_string());
        }
    };
    need(&mut columns.partition, HIDDEN_PARTITION);
    need(&mut columns.offset, HIDDEN_OFFSET);
    if spec.event_time.as_ref().is_some_and(|e| e.column.is_none()) {
        need(&mut columns.timestamp, HIDDEN_TIMESTAMP);
    }
    hidden
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The operators a spec describes, over rows with `columns`' names.
pub(crate) fn operator_config(
    spec: &TableSpec,
    columns: &RecordColumns,
    hidden: Vec<String>,
) -> Result<OperatorConfig> {
    let event_time = spec
        .event_time
        .as_ref()
        .ok_or_else(|| EngineError::Spec("event-time operators need event_time".into()))?;
    let kafka_column = |c: &Option<String>| {
        c.clone()
            .ok_or_else(|| EngineError::Internal("operator columns were not added".into()))
    };
    let time_column = match &event_time.column {
        Some(c) => c.clone(),
        None => kafka_column(&columns.timestamp)?,
    };
    Ok(OperatorConfig {
        time_column,
        partition_column: kafka_column(&columns.partition)?,
        offset_column: kafka_column(&columns.offset)?,
        hidden_columns: hidden,
        watermark_delay: micros(event_time.watermark_delay.0),
        dedup_keys: spec
            .dedup
            .as_ref()
            .map(|d| d.keys.clone())
            .unwrap_or_default(),
        window: spec
            .window
            .as_ref()
            .and_then(WindowSpec::kind)
            .map(|w| match w {
                WindowKind::Tumbling { size } => Window::Sliding {
                    size: micros(size),
                    slide: micros(size),
                },
                WindowKind::Sliding { size, slide } => Window::Sliding {
                    size: micros(size),
                    slide: micros(slide),
                },
                WindowKind::Session { gap } => Window::Session { gap: micros(gap) },
            }),
        group_by: spec.group_by.clone(),
        aggregations: spec.aggregations.iter().map(aggregation).collect(),
        output_mode: match spec.output_mode {
            OutputMode::Append => tributary_stream::OutputMode::Append,
            OutputMode::Update => tributary_stream::OutputMode::Update,
        },
    })
}

/// A spec's aggregate column in the operators' terms.
fn aggregation(spec: &AggregationSpec) -> Aggregation {
    use tributary_spec::AggregateFunction as Spec;
    use tributary_stream::AggregateFunction as Op;
    Aggregation {
        name: spec.name.clone(),
        function: match spec.function {
            Spec::Count => Op::Count,
            Spec::CountDistinct => Op::CountDistinct,
            Spec::Sum => Op::Sum,
            Spec::Min => Op::Min,
            Spec::Max => Op::Max,
            Spec::Avg => Op::Avg,
            Spec::First => Op::First,
            Spec::Last => Op::Last,
        },
        column: spec.column.clone(),
    }
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
    store: RocksStore,
    snapshots: Option<Snapshots>,
    snapshot_every: u64,
    /// Partition columns of a windowed table, derived from its output.
    output_partitions: Option<Vec<PartitionColumn>>,
    /// The columns identifying a window row, for update mode's MERGE.
    merge_keys: Option<Vec<String>>,
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

impl GroupState {
    /// Opens the group's state; a node without it restores the newest
    /// snapshot first, when there is one.
    pub(crate) async fn open(
        spec: &TableSpec,
        checkpoint: &CheckpointStore,
        group: &str,
        config: OperatorConfig,
    ) -> Result<GroupState> {
        let dir = state_dir(spec, group);
        let snapshots = snapshots_for(spec, checkpoint, group);
        let mut restored = false;
        if let Some(s) = &snapshots
            && !dir.join("CURRENT").exists()
        {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    EngineError::Spec(format!("cannot clear {}: {e}", dir.display()))
                })?;
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
        std::fs::create_dir_all(&dir).map_err(|e| {
            EngineError::Spec(format!(
                "cannot create the state directory {}: {e}",
                dir.display()
            ))
        })?;
        let store = tokio::task::block_in_place(|| {
            if restored {
                RocksStore::open_restored(&dir, RocksOptions::default())
            } else {
                RocksStore::open(&dir, RocksOptions::default())
            }
        })?;
        let windowed = spec.window.is_some();
        let merge_keys = (windowed && spec.output_mode == OutputMode::Update).then(|| {
            let mut keys = vec![WINDOW_START.to_string(), WINDOW_END.to_string()];
            keys.extend(spec.group_by.iter().cloned());
            keys
        });
        Ok(GroupState {
            operator: Operator::new(config),
            store,
            snapshots,
            snapshot_every: spec.checkpoint.state_snapshot_every,
            output_partitions: windowed.then(|| spec.partition_columns()),
            merge_keys,
        })
    }

    /// The last batch whose state is applied.
    pub(crate) fn committed_batch(&self) -> Result<Option<u64>> {
        Ok(self.store.committed_batch()?)
    }

    /// Operates one batch on the committed state (nothing is applied).
    pub(crate) fn operate(&self, batch_id: u64, rows: &[RecordBatch]) -> Result<Operated> {
        Ok(self.operator.process(&self.store, batch_id, rows)?)
    }

    /// The table rows of an operated batch, partition columns included.
    pub(crate) fn table_rows(&self, operated: &Operated) -> Result<Vec<RecordBatch>> {
        let Some(rows) = &operated.rows else {
            return Ok(Vec::new());
        };
        Ok(match &self.output_partitions {
            Some(p) => vec![tributary_delta::add_partition_columns(rows, p)?],
            None => vec![rows.clone()],
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

    /// Applies a committed batch's state changes.
    pub(crate) fn apply(&mut self, batch_id: u64, operated: Operated) -> Result<()> {
        Ok(self.store.commit(batch_id, operated.writes)?)
    }

    /// Uploads a snapshot when `batch_id` is due for one. A failed upload
    /// is only logged: the state is safe on disk, and the next due batch
    /// tries again.
    pub(crate) async fn snapshot_if_due(&mut self, batch_id: u64) {
        let every = self.snapshot_every;
        let Some(snapshots) = self.snapshots.as_mut() else {
            return;
        };
        if every == 0 || !(batch_id + 1).is_multiple_of(every) {
            return;
        }
        let scratch = self.store.path().with_extension("snapshot");
        let store = &self.store;
        let taken = tokio::task::block_in_place(|| -> Result<String> {
            if scratch.exists() {
                std::fs::remove_dir_all(&scratch).map_err(|e| {
                    EngineError::Internal(format!("cannot clear {}: {e}", scratch.display()))
                })?;
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
