//! The micro-batch loop of a pipeline, module by module in protocol order:
//!
//! - `plan`, `offset_log`: a batch is planned (its offsets fixed and
//!   recorded) before anything of it is written;
//! - `recovery`: after a crash, which recorded batches are re-run and where
//!   new ones start;
//! - `batch_loop`, `stages`, `read`, `encode`: reading, decoding and
//!   encoding overlapped on threads, new batches planned as they complete;
//! - `batch`, `commit`, `stateful`, `cleanup`, `report`: one batch into its
//!   tables, then its state change, clean-up and progress event;
//! - `group`, `partitioned`: a state group's retries, and one group per
//!   partition under `state_scope: partition`;
//! - `repartition`: the shuffle through a Kafka topic that lets dedup and
//!   windows run under `state_scope: partition`;
//! - `verify`: the audit of a pipeline's tables against its plans.
//!
//! `contracts` holds the traits recovery and the commit step are written
//! against. See docs/architecture.md for the protocol and its guarantees.

#![warn(clippy::too_many_lines)]

mod batch;
mod batch_loop;
mod carry;
mod cleanup;
mod commit;
mod contracts;
mod discovery;
mod encode;
mod enrich;
mod error;
mod evolve;
mod group;
mod offset_log;
mod open;
mod operator_config;
mod options;
mod partitioned;
mod plan;
mod progress;
mod read;
mod recovery;
mod repartition;
mod report;
mod shape;
mod stages;
mod stateful;
mod verify;

use tributary_spec::{StateScope, TableSpec};

pub use contracts::{CommitMode, CommittedBatches, PlanLog, TableSink};
pub use enrich::open_dimension;
pub use error::{EngineError, Result};
pub use offset_log::OffsetLog;
pub use open::reader_config;
pub use operator_config::with_feature_columns;
pub use options::{
    CheckpointStore, Components, DEFAULT_PROGRESS_JSON_MAX_BYTES, FailureCallback, GroupCallback,
    GroupEvent, GroupFailure, GroupStep, PipelineOptions, ProgressCallback, RunSummary,
    StateBackend,
};
pub use plan::{BatchPlan, RecordedDeadLetter};
pub use progress::{
    BatchProgress, EventTimeProgress, LATENCY_BUCKETS, LatencyProgress, progress_schema,
};
pub use report::append_rotating;
pub use verify::{Finding, GroupReport, VerifyReport, verify};

/// Runs a pipeline until it is stopped, or, with `available_now`, until the
/// topic is drained, on the implementations in `components`. Errors a retry
/// can cure (broker, registry, storage) are retried with backoff from the
/// last committed batch; nothing is lost and nothing is written twice.
/// Other errors end the run.
pub async fn run_pipeline(
    spec: TableSpec,
    options: PipelineOptions,
    components: Components,
) -> Result<RunSummary> {
    match spec.state_scope {
        StateScope::Topic => {
            let scope = open::GroupScope::topic();
            group::run_group(&spec, &options, components, scope, None).await
        }
        StateScope::Partition if spec.repartition.is_some() => {
            repartition::run_with_repartition(spec, options, components).await
        }
        StateScope::Partition => partitioned::run_partitioned(spec, options, components).await,
    }
}
