//! Recovery: where a group resumes after a crash at any point of the batch
//! protocol, decided from the offsets log, the tables and the operator
//! state before anything is read.
//!
//! Invariants:
//! - A recorded plan is re-run with exactly its ranges, never re-planned;
//!   its table commits are skipped where it has landed.
//! - The data table is the arbiter: when it holds the newest planned batch
//!   (or a later one) with other offsets than the log, another instance
//!   committed it, and its record is adopted.
//! - Operator state may lag the table by the batches whose state was not
//!   applied (or be gone): those are re-run through the operators, their
//!   plans taken from the log or else from the table's commits.
//! - With no plan in the log the group resumes after the table's last commit
//!   of it; a table that has a txn version but no record of that batch
//!   refuses to start, since starting over would skip records.

use std::collections::BTreeMap;

use crate::contracts::{CommittedBatches, PlanLog};
use crate::error::{EngineError, Result};
use crate::plan::BatchPlan;

/// What a group does before it plans new batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Recorded batches to re-run, in order, with exactly their ranges.
    pub rerun: Vec<BatchPlan>,
    /// The newest plan, landed in every table it touches: files of its
    /// failed attempts may be left to clean up.
    pub landed: Option<BatchPlan>,
    /// Where each partition resumes after the re-runs.
    pub positions: BTreeMap<i32, i64>,
    /// The id of the first new batch.
    pub next_batch: u64,
    /// The group ran before: a partition without a position starts at its
    /// first offset, not at `starting_offsets`.
    pub resumed: bool,
}

/// The tables and identity of the group being recovered.
pub(crate) struct GroupTables<'a> {
    /// `<pipeline>/<group>`, the txn app id of the group's commits.
    pub app_id: &'a str,
    /// For messages.
    pub pipeline: &'a str,
    pub group: &'a str,
    pub data: &'a dyn CommittedBatches,
    pub dead_letters: &'a dyn CommittedBatches,
    /// Where the offsets log lives, for messages.
    pub checkpoint: &'a str,
}

/// Decides the re-runs and the resume position of a group. `state` is
/// `None` for a stateless pipeline, else the last batch whose operator
/// state is applied (`Some(None)`: no state yet).
pub(crate) async fn recover(
    tables: &GroupTables<'_>,
    log: &dyn PlanLog,
    state: Option<Option<u64>>,
) -> Result<Recovery> {
    // Adopted: another instance committed batches this log did not plan.
    let (last_plan, adopted) = match log.latest().await? {
        Some(plan) => {
            let (plan, adopted) = reconcile(tables, log, plan).await?;
            (Some(plan), adopted)
        }
        None => (None, false),
    };
    let resume_from = match &last_plan {
        Some(plan) => Some(plan.clone()),
        None => {
            let from_table = tables.data.last_committed_plan(tables.app_id).await?;
            refuse_unknown_position(tables, from_table.as_ref()).await?;
            if from_table.is_some() {
                tracing::warn!(
                    app_id = tables.app_id,
                    "the offsets log is empty; resuming after the table's last commit by this group"
                );
            }
            from_table
        }
    };
    let mut recovery = match &resume_from {
        Some(plan) => Recovery {
            rerun: Vec::new(),
            landed: None,
            positions: plan.end_offsets.clone(),
            next_batch: plan.batch_id + 1,
            resumed: true,
        },
        None => Recovery {
            rerun: Vec::new(),
            landed: None,
            positions: BTreeMap::new(),
            next_batch: 0,
            resumed: false,
        },
    };
    match (state, resume_from) {
        (Some(applied), Some(last)) => {
            recovery.rerun = state_catch_up(tables, log, applied, last, adopted).await?;
        }
        (None, Some(last)) if last_plan.is_some() => {
            if landed(tables, &last).await? {
                recovery.landed = Some(last);
            } else {
                recovery.rerun = vec![last];
            }
        }
        _ => {}
    }
    Ok(recovery)
}

/// The batches after `applied` up to `last`, which the operator state
/// lacks. `table_first`: another instance committed batches this log did
/// not plan, so the table's record of each batch wins over the log's.
async fn state_catch_up(
    tables: &GroupTables<'_>,
    log: &dyn PlanLog,
    applied: Option<u64>,
    last: BatchPlan,
    table_first: bool,
) -> Result<Vec<BatchPlan>> {
    let from = applied.map_or(0, |m| m + 1);
    if from > last.batch_id {
        return Ok(Vec::new());
    }
    tracing::info!(
        app_id = tables.app_id,
        from,
        to = last.batch_id,
        "bringing the operator state up to the last planned batch"
    );
    let mut plans = Vec::new();
    for batch in from..last.batch_id {
        plans.push(recorded_plan(tables, log, batch, table_first).await?);
    }
    plans.push(last);
    Ok(plans)
}

/// The table is the arbiter of what a batch holds: when it has the newest
/// planned batch, or a later one, with other offsets than the log recorded
/// (another instance committed it), the table's record is adopted. Returns
/// the plan to resume from, and whether it was adopted.
async fn reconcile(
    tables: &GroupTables<'_>,
    log: &dyn PlanLog,
    plan: BatchPlan,
) -> Result<(BatchPlan, bool)> {
    let landed = tables.data.committed_batch(tables.app_id).await?;
    if landed.is_none_or(|v| v < plan.batch_id) {
        return Ok((plan, false));
    }
    let Some(table_plan) = tables.data.last_committed_plan(tables.app_id).await? else {
        return Ok((plan, false));
    };
    if table_plan.batch_id == plan.batch_id && table_plan.ranges == plan.ranges {
        return Ok((plan, false));
    }
    tracing::warn!(
        app_id = tables.app_id,
        local = plan.batch_id,
        table = table_plan.batch_id,
        "another instance committed batches this checkpoint did not plan; adopting the table's record"
    );
    log.adopt(&table_plan).await?;
    Ok((table_plan, true))
}

/// Whether every table the plan touches has committed it.
async fn landed(tables: &GroupTables<'_>, plan: &BatchPlan) -> Result<bool> {
    let has = |v: Option<u64>| v.is_some_and(|v| v >= plan.batch_id);
    let data = has(tables.data.committed_batch(tables.app_id).await?);
    let dead_letters =
        plan.dead_letters == 0 || has(tables.dead_letters.committed_batch(tables.app_id).await?);
    Ok(data && dead_letters)
}

/// The plan of an earlier batch: the log's, or the table's commit of it
/// when the log no longer has it. With `table_first` (another instance
/// committed batches this log did not plan) the table's commit wins. The
/// log comes first otherwise: each table lookup walks its log back.
async fn recorded_plan(
    tables: &GroupTables<'_>,
    log: &dyn PlanLog,
    batch: u64,
    table_first: bool,
) -> Result<BatchPlan> {
    let from_table = async || tables.data.committed_plan(tables.app_id, batch).await;
    let found = if table_first {
        match from_table().await? {
            Some(plan) => Some(plan),
            None => log.plan(batch).await?,
        }
    } else {
        match log.plan(batch).await? {
            Some(plan) => Some(plan),
            None => from_table().await?,
        }
    };
    match found {
        Some(plan) => Ok(plan),
        None => Err(EngineError::Spec(format!(
            "the operator state needs batch {batch} re-run, but neither the offsets log nor \
             the table's log still records its offsets; restore the state directory, or \
             start the pipeline afresh (new checkpoint and table)"
        ))),
    }
}

/// With no plan in the offsets log, the table's log must still say where
/// the group stands: a txn version without the commit record of that batch
/// (its JSON expired while the checkpoint location was lost) would make the
/// group start over at `starting_offsets` and skip every batch id the table
/// has as "already landed", losing those records silently.
/// `newest`: the plan of the newest commit of the group the log still holds,
/// which is the txn version's batch unless that commit's JSON expired.
async fn refuse_unknown_position(
    tables: &GroupTables<'_>,
    newest: Option<&BatchPlan>,
) -> Result<()> {
    let Some(batch) = tables.data.committed_batch(tables.app_id).await? else {
        return Ok(());
    };
    if newest.is_some_and(|plan| plan.batch_id == batch) {
        return Ok(());
    }
    Err(EngineError::UnknownPosition {
        pipeline: tables.pipeline.to_string(),
        group: tables.group.to_string(),
        batch,
        table: tables.data.uri().to_string(),
        checkpoint: tables.checkpoint.to_string(),
    })
}

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;
