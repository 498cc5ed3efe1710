//! One planned batch from its rows to its report: operate on the state the
//! previous batch left, commit to the tables, apply the state change, clean
//! up, commit consumer-group offsets, report.
//!
//! Invariant: the state change of batch N is applied only after every
//! table has batch N, so after a crash the state is behind the tables
//! (by the batches since its last flush), never ahead (recovery re-runs
//! what it lacks).

use std::sync::Arc;
use std::time::Instant;

use tributary_core::{CrashPoint, crash_point};
use tributary_delta::BatchRows;
use tributary_kafka::GroupMember;
use tributary_spec::TableSpec;

use crate::cleanup::{commit_consumer_offsets, remove_failed_attempts};
use crate::commit::commit_batch;
use crate::contracts::Source;
use crate::encode::ReadyBatch;
use crate::error::Result;
use crate::open::Group;
use crate::options::{PipelineOptions, RunSummary};
use crate::plan::BatchPlan;
use crate::report::{BatchReport, StepTimes, publish};
use crate::stateful::{apply_state, operate};

/// Writes a group's batches and keeps the run's totals.
pub(crate) struct BatchWriter<'a> {
    pub spec: &'a TableSpec,
    pub options: &'a PipelineOptions,
    /// With `state_scope: partition`, the group member that commits offsets.
    pub member: Option<Arc<GroupMember>>,
    pub summary: RunSummary,
}

impl BatchWriter<'_> {
    /// Writes one batch; `replayed` for a re-run of a recorded plan.
    pub(crate) async fn write(
        &mut self,
        g: &mut Group,
        source: &dyn Source,
        plan: &BatchPlan,
        batch: ReadyBatch,
        replayed: bool,
        plan_ms: u64,
    ) -> Result<()> {
        let spec = self.spec;
        let started = Instant::now();
        let ReadyBatch {
            read,
            payload,
            encode_time,
            filtered_rows,
            dimension_versions: _,
        } = batch;
        let operate_started = Instant::now();
        let (output, operated) = operate(g.state.as_mut(), plan.batch_id, payload)?;
        let operate_time = operate_started.elapsed();
        let filtered_rows = filtered_rows + output.filtered;
        let output_rows = match &output.data {
            BatchRows::Encoded(e) => e.rows,
            BatchRows::Arrow(b) => b.iter().map(|b| b.num_rows() as u64).sum(),
        };
        let committed = commit_batch(spec, g, plan, &read.dead_letters, output, replayed).await?;
        let committed_at_ms = chrono::Utc::now().timestamp_millis();
        crash_point(CrashPoint::AfterCommit, plan.batch_id);
        let late_version = committed.late_rows_version;
        let stateful = operated.is_some();
        let apply_started = Instant::now();
        let event_time =
            apply_state(g.state.as_mut(), plan.batch_id, operated, late_version).await?;
        let state_time = stateful.then(|| (operate_time, apply_started.elapsed()));
        tracing::debug!(batch = plan.batch_id, "removing files of failed attempts");
        remove_failed_attempts(g, plan, committed.data.files).await?;
        let write_ms = started.elapsed().as_millis() as u64;

        let offsets_started = Instant::now();
        commit_consumer_offsets(&spec.pipeline, source, self.member.as_deref(), plan);
        let offset_commit_ms = offsets_started.elapsed().as_millis() as u64;
        crash_point(CrashPoint::AfterOffsets, plan.batch_id);

        let s = &mut self.summary;
        s.batches += 1;
        s.rows += output_rows;
        s.dead_letters += read.dead_letters.len() as u64;
        s.files += committed.data.files as u64;
        s.bytes += committed.data.bytes;
        s.table_version = g.data.version();

        let mut latest = source.latest_offsets();
        for (p, o) in &g.known_latest {
            let e = latest.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        let times = StepTimes {
            plan_ms,
            write_ms,
            offset_commit_ms,
            encode: encode_time,
            state: state_time,
        };
        let progress = BatchReport {
            pipeline: &spec.pipeline,
            plan,
            read: &read,
            committed: &committed,
            event_time,
            committed_at_ms,
            times,
            latest,
            output_rows,
            filtered_rows,
            table_uri: g.data.uri(),
            replayed,
        }
        .progress();
        tracing::info!(
            pipeline = %spec.pipeline, batch = plan.batch_id, rows = output_rows, dead_letters = read.dead_letters.len(),
            files = committed.data.files, version = ?committed.data.version, replayed,
            ms = progress.duration_ms.get("triggerExecution"), "batch committed"
        );
        publish(self.options, &progress);
        Ok(())
    }
}
