//! A state group's life: which records it owns, and its runs of the batch
//! loop, retried from the last committed batch while a retry can help.
//!
//! Invariant: a failed run leaves nothing half-done that the next run's
//! recovery does not finish; so retrying is always safe, and only the
//! error's kind decides whether it can help.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    fn count(&mut self, e: &EngineError, batches: u64) -> bool {
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
        match e.kind() {
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
        let curable = failures.count(&e, run.writer.summary.batches);
        if let Some(on_failure) = &options.on_failure {
            on_failure(&GroupFailure {
                pipeline: spec.pipeline.clone(),
                group: run.scope.name.clone(),
                error: e.to_string(),
                kind: e.kind(),
                attempt: failures.in_a_row,
                fatal: !curable,
            });
        }
        // Stopping (the user's stop, or the partition revoked), the group
        // does not retry even what a retry would cure.
        if !curable || options.stop.load(Ordering::Relaxed) {
            return Err(e);
        }
        let backoff = failures.backoff();
        tracing::warn!(pipeline = %spec.pipeline, group = %run.scope.name, error = %e, attempt = failures.in_a_row,
            "batch failed; nothing of it is committed; retrying from the last commit in {backoff:?}");
        // A stop (the user's, or a revocation of the group's partition)
        // ends the wait: the retry is not ours to make any more.
        if !sleep_unless_stopped(backoff, &options.stop).await {
            return Err(e);
        }
    }
}

/// How often a backoff looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Sleeps for `backoff`, or until `stop` is set; whether it slept it all.
async fn sleep_unless_stopped(backoff: Duration, stop: &AtomicBool) -> bool {
    let until = tokio::time::Instant::now() + backoff;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        tokio::time::sleep(left.min(STOP_CHECK)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backoff_ends_when_the_group_is_stopped() {
        let stop = Arc::new(AtomicBool::new(false));
        assert!(sleep_unless_stopped(Duration::from_millis(50), &stop).await);
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stopper.store(true, Ordering::Relaxed);
        });
        let started = std::time::Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(30), &stop).await);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "waited {waited:?}"
        );
    }
}
