//! `tributary verify`: proves a table against its own log, the checkpoint's
//! offsets log and, where offsets went unread, the broker.
//!
//! Every data commit of a pipeline names its batch (`commitInfo.tributary`:
//! batch id, the offsets it read per partition, where each partition stood
//! after it) and carries `txn {appId, version: batch id}`. Per group the
//! commits must form one chain: each batch id once and without gaps, each
//! offset in at most one batch, every offset between two batches' positions
//! either read or holding no record (a transaction marker, a record
//! compacted away), and each batch equal to its recorded plan.

mod checks;
mod findings;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tributary_core::app_id;
use tributary_delta::{DeltaTableSink, LoggedCommit, TableOptions};
use tributary_kafka::{KafkaReader, Polled, StartAt};
use tributary_spec::TableSpec;

use checks::{check_dead_letters, check_group, group_commits};
use findings::Hole;
pub use findings::{Finding, GroupReport, VerifyReport};

use crate::contracts::PlanLog;
use crate::error::Result;
use crate::offset_log::OffsetLog;
use crate::open::reader_config;
use crate::options::CheckpointStore;
use crate::plan::BatchPlan;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies the table of `spec` against the plans at `checkpoint`.
/// `ask_broker`: offsets between batches that no batch read are looked up
/// at the broker; without it they are findings.
pub async fn verify(
    spec: &TableSpec,
    checkpoint: &CheckpointStore,
    ask_broker: bool,
) -> Result<VerifyReport> {
    let open = |uri: String, partition_columns| {
        DeltaTableSink::open_existing(TableOptions {
            storage_options: spec.table.storage_options.clone(),
            uri,
            partition_columns,
            target_file_size: 1 << 20,
        })
    };
    let partitions = spec
        .partition_columns()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let data = open(spec.table.uri.clone(), partitions).await?;
    let commits = data.logged_commits().await?;
    let dead = open(spec.dead_letter_uri(), Vec::new()).await?;
    let dead_commits = dead.logged_commits().await?;
    let late = match spec.late_rows_uri() {
        Some(uri) => Some(open(uri.to_string(), Vec::new()).await?),
        None => None,
    };
    let mut findings = Vec::new();
    for table in [&data, &dead].into_iter().chain(late.as_ref()) {
        let uri = table.uri().to_string();
        findings.extend(table.missing_files().await?.into_iter().map(|path| {
            Finding::FileMissing {
                table: uri.clone(),
                path,
            }
        }));
    }
    let per_record = spec.window.is_none();
    let mut reports = Vec::new();
    let mut holes = Vec::new();
    for group in groups_of(spec, &commits) {
        let app = app_id(&spec.pipeline, &group);
        let plans = recorded_plans(checkpoint, &group).await?;
        let data_commits = group_commits(&commits, &app)?;
        let (report, found, group_holes) =
            check_group(&group, &app, &data_commits, &plans, per_record);
        findings.extend(found);
        findings.extend(check_dead_letters(
            &group,
            &data_commits,
            &group_commits(&dead_commits, &app)?,
            dead_commits.first().is_some_and(|c| c.version == 0),
        ));
        holes.extend(group_holes.into_iter().map(|h| (reports.len(), h)));
        reports.push(report);
    }
    let broker_checked = ask_broker && !holes.is_empty();
    let gaps = if broker_checked {
        ask_the_broker(spec, holes, &mut reports).await?
    } else {
        let unasked = "no batch read these offsets and the broker was not asked";
        let gap = |(g, hole): (usize, Hole)| gap(&reports[g].group, &hole, None, unasked.into());
        holes.into_iter().map(gap).collect()
    };
    findings.extend(gaps);
    Ok(VerifyReport {
        pipeline: spec.pipeline.clone(),
        table: spec.table.uri.clone(),
        table_version: data.version(),
        log_from: commits.first().map(|c| c.version),
        groups: reports,
        broker_checked,
        findings,
    })
}

/// The groups of the pipeline the table's commits name (with
/// `state_scope: topic`, the one group even before its first commit).
fn groups_of(spec: &TableSpec, commits: &[LoggedCommit]) -> BTreeSet<String> {
    let mut groups: BTreeSet<String> = commits
        .iter()
        .filter_map(|c| c.batch.as_ref())
        .filter(|info| info.get("pipeline").and_then(Value::as_str) == Some(&spec.pipeline))
        .filter_map(|info| {
            info.get("group")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    if spec.state_scope == tributary_spec::StateScope::Topic {
        groups.insert(tributary_core::TOPIC_GROUP.to_string());
    }
    groups
}

/// Looks up each hole (of the report at its index) at the broker: a hole
/// without records is counted in its report, one with a record, or that
/// the broker cannot explain, is a gap.
async fn ask_the_broker(
    spec: &TableSpec,
    holes: Vec<(usize, Hole)>,
    reports: &mut [GroupReport],
) -> Result<Vec<Finding>> {
    let config = reader_config(spec);
    let answers = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
        let reader = KafkaReader::connect(&config)?;
        Ok(holes
            .into_iter()
            .map(|(group, hole)| (group, first_record(&reader, &hole), hole))
            .collect())
    })
    .await
    .map_err(|source| crate::EngineError::Task {
        task: "asking the broker",
        source,
    })??;
    let mut gaps = Vec::new();
    for (g, found, hole) in answers {
        let group = &reports[g].group;
        match found {
            Ok(None) => reports[g].offsets_without_records += (hole.end - hole.start) as u64,
            Ok(Some(offset)) => {
                let reason = format!("the broker holds record {offset}, which no batch read");
                gaps.push(gap(group, &hole, Some(offset), reason));
            }
            Err(reason) => gaps.push(gap(group, &hole, None, reason)),
        }
    }
    Ok(gaps)
}

fn gap(group: &str, hole: &Hole, first_record: Option<i64>, reason: String) -> Finding {
    Finding::OffsetsGap {
        group: group.to_string(),
        partition: hole.partition,
        start: hole.start,
        end: hole.end,
        after_batch: hole.after_batch,
        first_record,
        reason,
    }
}

/// The plans the offsets log of `group` still holds (read only: a local
/// checkpoint that does not exist is not created).
async fn recorded_plans(checkpoint: &CheckpointStore, group: &str) -> Result<Vec<BatchPlan>> {
    let opened = OffsetLog::open_existing(checkpoint, group)?;
    let Some(log) = opened else {
        return Ok(Vec::new());
    };
    let mut plans = Vec::new();
    for id in log.recorded_batches().await? {
        plans.extend(log.plan(id).await?);
    }
    Ok(plans)
}

/// The first record in `[start, end)` of the hole's partition, as a
/// read_committed consumer sees it: `None` when there is none (transaction
/// markers, aborted or compacted records); an error text when the broker
/// cannot tell (the offsets were deleted by retention, or it did not answer).
fn first_record(reader: &KafkaReader, hole: &Hole) -> std::result::Result<Option<i64>, String> {
    let (low, _) = reader
        .watermarks(hole.partition, BROKER_TIMEOUT)
        .map_err(|e| format!("the broker did not answer: {e}"))?;
    if hole.start < low {
        return Err(format!(
            "no batch read these offsets and the broker no longer holds them (its first offset is {low})"
        ));
    }
    reader
        .assign(&[(hole.partition, StartAt::Offset(hole.start))])
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + BROKER_TIMEOUT;
    while std::time::Instant::now() < deadline {
        // Anything but a record (the end of the partition, markers passed
        // over) leaves it to the position to say whether the hole was crossed.
        if let Polled::Record(m) = reader
            .poll(Duration::from_millis(200))
            .map_err(|e| e.to_string())?
        {
            let raw = tributary_kafka::raw_record(&m);
            // Records of an earlier hole's assignment may still be queued.
            if raw.partition == hole.partition && raw.offset >= hole.start {
                return Ok((raw.offset < hole.end).then_some(raw.offset));
            }
        }
        if reader
            .position(hole.partition)
            .is_some_and(|pos| pos >= hole.end)
        {
            return Ok(None);
        }
    }
    Err("the broker did not deliver these offsets in time".into())
}
