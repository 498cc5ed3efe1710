//! `state_scope: partition`: each Kafka partition is its own group, and the
//! consumer group decides which instance runs which. Assigned partitions get
//! a group each; a revoked partition's group finishes its batch in flight
//! before the partition is given up, so the next owner starts after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tributary_core::{Classify, ErrorKind};
use tributary_kafka::{GroupMember, Membership};
use tributary_spec::TableSpec;

use crate::error::{EngineError, Result};
use crate::group::run_group;
use crate::open::{GroupScope, reader_config};
use crate::options::{Components, PipelineOptions, RunSummary};

struct RunningGroup {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<RunSummary>>,
}

pub(crate) async fn run_partitioned(
    spec: TableSpec,
    options: PipelineOptions,
    components: Components,
) -> Result<RunSummary> {
    let config = reader_config(&spec);
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let member = Arc::new(GroupMember::join(&config, events_tx)?);
    let member_stop = Arc::new(AtomicBool::new(false));
    let member_thread = serve_membership(&spec.pipeline, member.clone(), member_stop.clone())?;

    let spec = Arc::new(spec);
    let mut groups: HashMap<i32, RunningGroup> = HashMap::new();
    let mut total = RunSummary::default();
    let mut assigned_once = false;
    let mut outcome: Result<()> = Ok(());
    'supervise: loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Membership::Assigned(parts)) => {
                    assigned_once = true;
                    tracing::info!(pipeline = %spec.pipeline, partitions = ?parts, "partitions assigned");
                    for p in parts {
                        groups.entry(p).or_insert_with(|| start(&spec, &options, &components, &member, p));
                    }
                }
                Some(Membership::Revoked(parts, ack)) => {
                    tracing::info!(pipeline = %spec.pipeline, partitions = ?parts, "partitions revoked; finishing their batches in flight");
                    if let Err(e) = finish_revoked(&spec.pipeline, &mut groups, &parts, &mut total).await {
                        outcome = Err(e);
                    }
                    let _ = ack.send(());
                    if outcome.is_err() {
                        break 'supervise;
                    }
                }
                None => break 'supervise,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if options.stop.load(Ordering::Relaxed) {
            break;
        }
        let done: Vec<i32> = groups
            .iter()
            .filter(|(_, g)| g.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            if let Some(g) = groups.remove(&p)
                && let Err(e) = finish(g, &mut total).await
            {
                outcome = Err(e);
                break 'supervise;
            }
        }
        if spec.trigger.available_now && assigned_once && groups.is_empty() {
            break;
        }
    }
    for g in groups.values() {
        g.stop.store(true, Ordering::Relaxed);
    }
    for (_, g) in groups.drain() {
        if let Err(e) = finish(g, &mut total).await
            && outcome.is_ok()
        {
            outcome = Err(e);
        }
    }
    // Nobody waits for revocations any more: leaving must not block on them.
    drop(events);
    member_stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || member_thread.join()).await;
    outcome.map(|()| total)
}

/// Stops the groups of revoked partitions and waits for their batches in
/// flight, so the next owner starts after them.
async fn finish_revoked(
    pipeline: &str,
    groups: &mut HashMap<i32, RunningGroup>,
    parts: &[i32],
    total: &mut RunSummary,
) -> Result<()> {
    // All are told first, so their batches finish side by side.
    let revoked: Vec<(i32, RunningGroup)> = parts
        .iter()
        .filter_map(|p| groups.remove(p).map(|g| (*p, g)))
        .collect();
    for (_, g) in &revoked {
        g.stop.store(true, Ordering::Relaxed);
    }
    let mut outcome = Ok(());
    for (p, g) in revoked {
        match finish(g, total).await {
            Ok(()) => {}
            // The new owner committed the batch first (the revocation
            // outlasted the wait): nothing was written twice, and the
            // partition is not ours.
            Err(e) if e.lost_to_another_writer() => tracing::info!(
                pipeline, partition = p, error = %e,
                "the revoked partition's batch in flight was committed by its new owner first"
            ),
            // A failure a retry could cure (storage or broker unavailable,
            // a file being rewritten) is the new owner's to retry: nothing
            // of the batch is committed, and its recovery re-runs it. Only
            // an error of ours or of the spec, which every partition would
            // meet, stops this instance.
            Err(e) if matches!(e.kind(), ErrorKind::External | ErrorKind::Corrupt) => {
                tracing::warn!(
                    pipeline, partition = p, error = %e,
                    "the revoked partition's batch in flight failed; its new owner re-runs it"
                )
            }
            Err(e) => outcome = Err(e),
        }
    }
    outcome
}

/// The member's own thread serves the group protocol (heartbeats,
/// rebalances) until `stop`, then leaves the group.
fn serve_membership(
    pipeline: &str,
    member: Arc<GroupMember>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("group-{pipeline}"))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                member.poll(Duration::from_millis(100));
            }
            member.leave();
            // Serve the revocation that leaving causes.
            for _ in 0..20 {
                member.poll(Duration::from_millis(50));
            }
        })
        .map_err(|source| EngineError::Thread {
            thread: "group member",
            source,
        })
}

fn start(
    spec: &Arc<TableSpec>,
    options: &PipelineOptions,
    components: &Components,
    member: &Arc<GroupMember>,
    partition: i32,
) -> RunningGroup {
    let stop = Arc::new(AtomicBool::new(false));
    let group_options = PipelineOptions {
        stop: stop.clone(),
        progress_json: options.progress_json.clone(),
        progress_json_max_bytes: options.progress_json_max_bytes,
        on_progress: options.on_progress.clone(),
        on_failure: options.on_failure.clone(),
        on_group: options.on_group.clone(),
    };
    let (spec, components, member) = (spec.clone(), components.clone(), member.clone());
    let task = tokio::spawn(async move {
        run_group(
            &spec,
            &group_options,
            components,
            GroupScope::partition(partition),
            Some(member),
        )
        .await
    });
    RunningGroup { stop, task }
}

async fn finish(group: RunningGroup, total: &mut RunSummary) -> Result<()> {
    let summary = group.task.await.map_err(|source| EngineError::Task {
        task: "a group's task",
        source,
    })??;
    total.batches += summary.batches;
    total.rows += summary.rows;
    total.dead_letters += summary.dead_letters;
    total.files += summary.files;
    total.bytes += summary.bytes;
    total.table_version = total.table_version.max(summary.table_version);
    Ok(())
}
