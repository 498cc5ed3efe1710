//! The micro-batch loop: plan -> read -> decode -> commit -> checkpoint, with
//! recovery. See docs/architecture.md for the protocol and its guarantees.

mod encode;
mod error;
mod evolve;
mod offset_log;
mod partitioned;
mod pipeline;
mod progress;
mod read;
mod stateful;
mod verify;

pub use error::{EngineError, Result};
pub use offset_log::{BatchPlan, FileIntents, OffsetLog, RecordedDeadLetter};
pub use pipeline::{
    FailureCallback, GroupFailure, PipelineOptions, ProgressCallback, RunSummary, reader_config,
    registry_client, registry_config, run_pipeline,
};
pub use progress::{BatchProgress, EventTimeProgress, progress_schema};
pub use verify::{Finding, GroupReport, VerifyReport, verify};
