//! What the caller of a pipeline chooses and gets back: the implementations
//! it runs on, the stop flag, progress and failure callbacks, and the run's
//! totals.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use object_store::ObjectStore;
use tributary_avro::RegistryClient;
use tributary_core::ErrorKind;
use tributary_state::RocksOptions;

use crate::progress::BatchProgress;

/// Called with each batch's progress (the demo prints them).
pub type ProgressCallback = Arc<dyn Fn(&BatchProgress) + Send + Sync>;

#[derive(Clone)]
pub struct PipelineOptions {
    /// Set to stop after the batch in flight commits.
    pub stop: Arc<AtomicBool>,
    /// Appends each progress event as a JSON line.
    pub progress_json: Option<PathBuf>,
    /// `progress_json` is moved to `<path>.1` once it holds this many bytes.
    pub progress_json_max_bytes: u64,
    pub on_progress: Option<ProgressCallback>,
    /// Told of every failed attempt of a group: (pipeline, group, error,
    /// attempts in a row, whether the pipeline stops on it).
    pub on_failure: Option<FailureCallback>,
    /// Told when a group opens, catches up and closes (readiness).
    pub on_group: Option<GroupCallback>,
}

impl Default for PipelineOptions {
    fn default() -> PipelineOptions {
        PipelineOptions {
            stop: Arc::default(),
            progress_json: None,
            progress_json_max_bytes: DEFAULT_PROGRESS_JSON_MAX_BYTES,
            on_progress: None,
            on_failure: None,
            on_group: None,
        }
    }
}

/// Default size at which `--progress-json` rotates.
pub const DEFAULT_PROGRESS_JSON_MAX_BYTES: u64 = 64 << 20;

/// See `PipelineOptions::on_group`.
pub type GroupCallback = Arc<dyn Fn(&GroupEvent) + Send + Sync>;

/// A step in the life of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub pipeline: String,
    pub group: String,
    pub step: GroupStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStep {
    /// Its partitions are assigned and it starts (again, after a failure).
    Opened,
    /// It committed a batch, or a trigger found nothing to read: it keeps
    /// up with its partitions.
    CaughtUp,
    /// It stopped: drained, revoked, stopped or failed for good.
    Closed,
}

impl PipelineOptions {
    pub(crate) fn tell_group(&self, pipeline: &str, group: &str, step: GroupStep) {
        if let Some(on_group) = &self.on_group {
            on_group(&GroupEvent {
                pipeline: pipeline.to_string(),
                group: group.to_string(),
                step,
            });
        }
    }
}

/// See `PipelineOptions::on_failure`.
pub type FailureCallback = Arc<dyn Fn(&GroupFailure) + Send + Sync>;

/// A failed attempt of a group's batch.
#[derive(Debug, Clone)]
pub struct GroupFailure {
    pub pipeline: String,
    pub group: String,
    pub error: String,
    pub kind: ErrorKind,
    pub attempt: u32,
    /// The pipeline stops: the error is not one a retry can cure.
    pub fatal: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub batches: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub files: u64,
    pub bytes: u64,
    pub table_version: Option<u64>,
}

/// The implementations a pipeline runs on, picked by the caller (the
/// `tributary` binary builds them from the spec).
#[derive(Clone)]
pub struct Components {
    /// Where writer schemas are fetched.
    pub registry: Arc<RegistryClient>,
    /// Where the offsets log and state snapshots live.
    pub checkpoint: CheckpointStore,
    /// Where operator state is kept.
    pub state: StateBackend,
}

/// Where a stateful pipeline keeps its operator state.
#[derive(Debug, Clone)]
pub enum StateBackend {
    /// RocksDB under the spec's state directory: survives restarts, and
    /// snapshots go to an object-store checkpoint for other nodes.
    RocksDb(RocksOptions),
    /// In memory: lost with the process. After a restart the state is
    /// rebuilt by re-running the group's batches from the table's commits,
    /// which works while the Delta log still holds them (tests, short jobs).
    Memory,
}

/// A pipeline's checkpoint location.
#[derive(Clone)]
pub enum CheckpointStore {
    /// A local directory: plans are fsynced files; state snapshots are not
    /// taken (the state directory is beside them).
    Local(PathBuf),
    /// An object store rooted at the location (`s3://…`): plans are created
    /// with put-if-absent, and state snapshots are uploaded there.
    Object {
        store: Arc<dyn ObjectStore>,
        /// The location's URI, for messages.
        uri: String,
    },
}

impl CheckpointStore {
    /// The local directory of a `file://` URI or path.
    pub fn local(location: &str) -> CheckpointStore {
        CheckpointStore::Local(PathBuf::from(
            location.strip_prefix("file://").unwrap_or(location),
        ))
    }
}
