//! Clean-up after a batch landed: the data files of its failed attempts,
//! and the consumer group's offsets.
//!
//! Invariants: a file is deleted only when its batch has landed in that
//! table (no attempt at it can commit any more) and no commit references
//! it. Consumer-group offsets are for lag tools only: failing to commit
//! them is logged, never an error; the table stays the source of truth.

use tributary_kafka::GroupMember;

use crate::contracts::{Source, TableSink};
use crate::error::{EngineError, Result};
use crate::open::Group;
use crate::plan::BatchPlan;

/// Deletes the data files of earlier attempts at a batch once it has landed.
/// Needed only when more files were announced than `committed_now`.
pub(crate) async fn remove_failed_attempts(
    g: &mut Group,
    plan: &BatchPlan,
    committed_now: usize,
) -> Result<()> {
    let announced = g.log.announced(plan.batch_id).await?;
    let total: usize = announced.values().map(Vec::len).sum();
    if total <= committed_now {
        return Ok(());
    }
    for (table, paths) in announced {
        let sink: &mut dyn TableSink = if table == g.data.uri() {
            g.data.as_mut()
        } else if table == g.dead_letters.uri() {
            g.dead_letters.as_mut()
        } else if let Some(late) = g.late.as_mut().filter(|l| l.uri() == table) {
            late.as_mut()
        } else {
            continue;
        };
        if sink
            .committed_batch(&g.app_id)
            .await?
            .is_some_and(|v| v >= plan.batch_id)
        {
            let removed = sink
                .remove_uncommitted(&g.app_id, plan.batch_id, &paths)
                .await?;
            if removed > 0 {
                tracing::info!(table = %table, batch = plan.batch_id, removed, "removed data files of a failed attempt");
            }
        }
    }
    Ok(())
}

/// Commits where the group stands to the Kafka consumer group, through the
/// group member with `state_scope: partition`.
pub(crate) fn commit_consumer_offsets(
    pipeline: &str,
    source: &dyn Source,
    member: Option<&GroupMember>,
    plan: &BatchPlan,
) {
    let next: Vec<(i32, i64)> = plan.end_offsets.iter().map(|(p, o)| (*p, *o)).collect();
    let committed = match member {
        Some(member) => member.commit(&next).map_err(EngineError::from),
        None => source.commit_positions(&next),
    };
    if let Err(e) = committed {
        tracing::warn!(pipeline, error = %e, "could not commit offsets to the consumer group (lag tools will lag; the table is correct)");
    }
}
