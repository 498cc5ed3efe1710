//! A state group's life: which records it owns, and its runs of the batch
//! loop, retried from the last committed batch while a retry can help.
//!
//! Invariant: a failed run leaves nothing half-done that the next run's
//! recovery does not finish; so retrying is always safe, and only the
//! error's kind decides whether it can help.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tributary_core::{Classify, ErrorKind};
use tributary_kafka::GroupMember;
use tributary_spec::TableSpec;

use crate::batch_loop::Run;
use crate::error::{EngineError, Result};
use crate::open::GroupScope;
use crate::options::{Components, GroupFailure, GroupStep, PipelineOptions, RunSummary};

/// Attempts at reading a stored file that does not parse before the
/// pipeline stops: a writer that is mid-way finishes within them.
const CORRUPT_ATTEMPTS: u32 = 3;

/// Counts a group's failures in a row, to back off and to give up.
#[derive(Default)]
struct Failures {
    in_a_row: u32,
    /// Of `in_a_row`, failures on a file that does not parse.
    unreadable: u32,
    batches_at_last: u64,
}

impl Failures {
    /// Counts `e`; returns whether another attempt can help.
    fn count(&mut self, e: &EngineError, batches: u64, stopping: bool) -> bool {
        // Backoff grows only while no batch gets through.
        if batches > self.batches_at_last {
            *self = Failures {
                batches_at_last: batches,
                ..Failures::default()
            };
        }
        self.in_a_row += 1;
        if e.kind() == ErrorKind::Corrupt {
            self.unreadable += 1;
        }
        !stopping
            && match e.kind() {
                ErrorKind::External => true,
                ErrorKind::Corrupt => self.unreadable < CORRUPT_ATTEMPTS,
                ErrorKind::User | ErrorKind::Internal => false,
            }
    }

    fn backoff(&self) -> Duration {
        Duration::from_millis(500 << self.in_a_row.min(6)).min(Duration::from_secs(30))
    }
}

/// Runs one group until stopped or drained, retrying what a retry can cure.
pub(crate) async fn run_group(
    spec: &TableSpec,
    options: &PipelineOptions,
    components: Components,
    scope: GroupScope,
    member: Option<Arc<GroupMember>>,
) -> Result<RunSummary> {
    let mut run = Run::new(spec, options, components, scope, member);
    let outcome = retry_runs(spec, options, &mut run).await;
    options.tell_group(&spec.pipeline, &run.scope.name, GroupStep::Closed);
    outcome
}

/// Runs the group again after each failure a retry can cure.
async fn retry_runs(
    spec: &TableSpec,
    options: &PipelineOptions,
    run: &mut Run<'_>,
) -> Result<RunSummary> {
    let mut failures = Failures::default();
    loop {
        options.tell_group(&spec.pipeline, &run.scope.name, GroupStep::Opened);
        let e = match run.once().await {
            Ok(()) => return Ok(std::mem::take(&mut run.writer.summary)),
            Err(e) => e,
        };
        let stopping = options.stop.load(Ordering::Relaxed);
        let retry = failures.count(&e, run.writer.summary.batches, stopping);
        if let Some(on_failure) = &options.on_failure {
            on_failure(&GroupFailure {
                pipeline: spec.pipeline.clone(),
                group: run.scope.name.clone(),
                error: e.to_string(),
                kind: e.kind(),
                attempt: failures.in_a_row,
                fatal: !retry,
            });
        }
        if !retry {
            return Err(e);
        }
        let backoff = failures.backoff();
        tracing::warn!(pipeline = %spec.pipeline, group = %run.scope.name, error = %e, attempt = failures.in_a_row,
            "batch failed; nothing of it is committed; retrying from the last commit in {backoff:?}");
        tokio::time::sleep(backoff).await;
    }
}
