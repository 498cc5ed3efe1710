//! Commit: a batch's rows into its tables, each as one Delta transaction
//! tagged `txn {appId: <pipeline>/<group>, version: <batch id>}` with the
//! batch's plan in `commitInfo.tributary`, all through one builder.
//!
//! Order: dead letters, then late rows, then data. The data table's txn
//! version is what "the batch landed" means to recovery, so it commits last:
//! a crash before it re-runs the batch, and the side tables skip what they
//! already hold. A fresh batch that finds its id already landed must find
//! its own offsets there; anything else is another instance's batch and
//! stops this one.

use serde_json::{Value, json};
use tributary_core::{CrashPoint, DeadLetter, crash_point};
use tributary_delta::{BatchCommit, BatchRows, CommitOutcome, FileIntent, dead_letter_batch};
use tributary_spec::TableSpec;

use crate::contracts::{CommitMode, CommittedBatches, TableSink};
use crate::error::{EngineError, Result};
use crate::open::Group;
use crate::plan::BatchPlan;
use crate::progress::format_micros;
use crate::stateful::BatchOutput;

/// What the commits of a batch created.
pub(crate) struct Committed {
    pub data: CommitOutcome,
    pub dead_letters_version: Option<u64>,
    pub late_rows_version: Option<u64>,
}

/// Builds and makes one batch's commits.
struct BatchCommits<'a> {
    app_id: &'a str,
    plan: &'a BatchPlan,
    info: Value,
    file_name: String,
    intent: Box<dyn FileIntent>,
    /// A re-run of a recorded batch: a table that has it is expected.
    replayed: bool,
}

impl BatchCommits<'_> {
    async fn commit(
        &self,
        table: &mut dyn TableSink,
        rows: BatchRows,
        mode: &CommitMode,
    ) -> Result<CommitOutcome> {
        let commit = BatchCommit {
            app_id: self.app_id.to_string(),
            batch_id: self.plan.batch_id,
            rows,
            info: self.info.clone(),
            file_name: self.file_name.clone(),
        };
        let outcome = table.commit(commit, mode, self.intent.as_ref()).await?;
        if outcome.already_landed && !self.replayed {
            verify_landed_plan(table, self.app_id, self.plan).await?;
        }
        Ok(outcome)
    }
}

/// Commits a batch's dead letters, late rows and data, in that order.
pub(crate) async fn commit_batch(
    spec: &TableSpec,
    g: &mut Group,
    plan: &BatchPlan,
    dead_letters: &[DeadLetter],
    output: BatchOutput,
    replayed: bool,
) -> Result<Committed> {
    let commits = BatchCommits {
        app_id: &g.app_id,
        plan,
        info: commit_info(&spec.pipeline, &g.app_id, plan, output.watermark),
        file_name: format!("{}-{}-{:010}", spec.pipeline, plan.group, plan.batch_id),
        intent: g.log.intent(plan.batch_id),
        replayed,
    };
    let mut dead_letters_version = None;
    if !dead_letters.is_empty() {
        let letters = dead_letter_batch(&plan.ranges.topic, plan.batch_id, dead_letters)?;
        let rows = BatchRows::Arrow(vec![letters]);
        let table = g.dead_letters.as_mut();
        dead_letters_version = commits
            .commit(table, rows, &CommitMode::Append)
            .await?
            .version;
        crash_point(CrashPoint::AfterDeadLetters, plan.batch_id);
        tracing::warn!(pipeline = %spec.pipeline, batch = plan.batch_id, dead_letters = dead_letters.len(), table = %g.dead_letters.uri(), "records could not be decoded; kept in the dead-letter table");
    }
    let mut late_rows_version = None;
    if let (Some(table), Some(late)) = (g.late.as_mut(), output.late) {
        let rows = BatchRows::Arrow(vec![late]);
        late_rows_version = commits
            .commit(table.as_mut(), rows, &CommitMode::Append)
            .await?
            .version;
    }
    let data = commits
        .commit(g.data.as_mut(), output.data, &output.mode)
        .await?;
    if data.already_landed && !replayed {
        tracing::info!(pipeline = %spec.pipeline, batch = plan.batch_id,
            "another instance committed this batch with the same offsets; skipped");
    }
    Ok(Committed {
        data,
        dead_letters_version,
        late_rows_version,
    })
}

/// `commitInfo.tributary`: the batch's plan, so the table can stand in for
/// a lost offsets log, and the watermark it ran with. That watermark is
/// also how far the table is complete (`completeThrough`): every window
/// ending at or before it is final and written, and no row at or before it
/// can still arrive, so a scheduler can wait for it to pass a day's end.
fn commit_info(pipeline: &str, app_id: &str, plan: &BatchPlan, watermark: Option<i64>) -> Value {
    let watermark = watermark.map(format_micros);
    json!({
        "appId": app_id,
        "pipeline": pipeline,
        "group": plan.group,
        "batchId": plan.batch_id,
        "topic": plan.ranges.topic,
        "ranges": plan.ranges.ranges,
        "endOffsets": plan.end_offsets,
        "deadLetters": plan.dead_letters,
        "dimensionVersions": plan.dimension_versions,
        "completeThrough": watermark,
        "watermark": watermark,
    })
}

/// A fresh plan found its batch id already in the table: another instance
/// committed it. Harmless if that instance committed the same offsets; else
/// this instance must stop writing and re-sync from the table.
async fn verify_landed_plan(
    table: &dyn CommittedBatches,
    app_id: &str,
    plan: &BatchPlan,
) -> Result<()> {
    let same = table
        .committed_plan(app_id, plan.batch_id)
        .await?
        .is_some_and(|landed| landed.batch_id == plan.batch_id && landed.ranges == plan.ranges);
    if same {
        return Ok(());
    }
    Err(EngineError::ConcurrentInstance(format!(
        "batch {} of {app_id} is already in {} with other offsets",
        plan.batch_id,
        table.uri()
    )))
}
