//! `tributary verify`: the table proven against its log, the offsets log and
//! the broker; and the periodic check of `run --verify-every`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tributary_engine::{CheckpointStore, Finding, VerifyReport, verify};
use tributary_spec::TableSpec;

use crate::admin::AdminState;

pub async fn run(spec_path: &Path, as_json: bool, offline: bool) -> anyhow::Result<ExitCode> {
    let Some(spec) = crate::load_spec(spec_path) else {
        return Ok(ExitCode::FAILURE);
    };
    let checkpoint = crate::components::checkpoint_store(&spec)?;
    let report = verify(&spec, &checkpoint, !offline).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(r: &VerifyReport) {
    let version = r
        .table_version
        .map_or("none yet".to_string(), |v| v.to_string());
    println!("table    {}  version {version}", r.table);
    if let Some(from) = r.log_from.filter(|v| *v > 0) {
        println!("log      commits before version {from} are only in a checkpoint: not checked");
    }
    for g in &r.groups {
        let batches = match (g.first_batch, g.last_batch) {
            (Some(first), Some(last)) => format!("batches {first}..={last}"),
            _ => "no batch".to_string(),
        };
        let offsets: Vec<String> = g
            .offsets
            .iter()
            .map(|(p, ranges)| {
                let ranges: Vec<String> =
                    ranges.iter().map(|[s, e]| format!("[{s},{e})")).collect();
                format!("p{p} {}", ranges.join(" "))
            })
            .collect();
        println!(
            "group    {}: {batches} in {} commits, rows {}, offsets {}",
            g.group,
            g.commits,
            g.rows.map_or("unknown".to_string(), |r| r.to_string()),
            offsets.join(", ")
        );
        if !g.planned_not_committed.is_empty() {
            println!(
                "         planned, not yet committed (re-run at the next start): {:?}",
                g.planned_not_committed
            );
        }
    }
    if r.findings.is_empty() {
        println!("ok       no gap, no overlap, no batch twice, no file missing");
    }
    for f in &r.findings {
        println!("FINDING  {}", describe(f));
    }
}

fn describe(f: &Finding) -> String {
    match f {
        Finding::BatchCommittedTwice {
            group,
            batch,
            versions,
        } => format!("{group}: batch {batch} committed more than once, in versions {versions:?}"),
        Finding::BatchMissing { group, batch } => {
            format!("{group}: batch {batch} is in no commit, though later batches are")
        }
        Finding::OffsetsOverlap {
            group,
            partition,
            start,
            end,
            batches,
        } => format!(
            "{group}: offsets [{start},{end}) of partition {partition} are in batches {} and {}",
            batches[0], batches[1]
        ),
        Finding::OffsetsGap {
            group,
            partition,
            start,
            end,
            after_batch,
            reason,
            ..
        } => format!(
            "{group}: offsets [{start},{end}) of partition {partition} after batch {after_batch}: {reason}"
        ),
        Finding::PlanMismatch {
            group,
            batch,
            planned,
            committed,
        } => format!(
            "{group}: batch {batch} committed offsets {committed:?}, its plan says {planned:?}"
        ),
        Finding::TxnMismatch {
            group,
            version,
            batch,
            txn,
        } => {
            format!("{group}: version {version} holds batch {batch} but its txn version is {txn:?}")
        }
        Finding::MoreRowsThanRecords {
            group,
            batch,
            rows,
            records,
        } => format!("{group}: batch {batch} holds {rows} rows from {records} records"),
        Finding::DeadLettersMissing {
            group,
            batch,
            expected,
            found,
        } => match found {
            Some(found) => format!(
                "{group}: batch {batch} sent {expected} records to the dead-letter table, which holds {found} of it"
            ),
            None => format!(
                "{group}: batch {batch} sent {expected} records to the dead-letter table, which has no commit of it"
            ),
        },
        Finding::FileMissing { table, path } => {
            format!("{table}: live file {path} is missing from storage")
        }
    }
}

/// `run --verify-every N`: after every `every` batches of the pipeline, one
/// verification in the background (never two at once); its result goes to
/// the metrics and, with findings, to the log as an error.
pub fn spawn_periodic(
    spec: TableSpec,
    checkpoint: CheckpointStore,
    every: u64,
    admin: Arc<AdminState>,
    stop: Arc<AtomicBool>,
) -> impl Fn() + Send + Sync + 'static {
    let (due_tx, mut due_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        while due_rx.recv().await.is_some() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match verify(&spec, &checkpoint, true).await {
                Ok(report) => {
                    if !report.ok() {
                        for f in &report.findings {
                            tracing::error!(pipeline = %spec.pipeline, finding = %describe(f), "verify found a problem in the table");
                        }
                    }
                    admin.record_verify(&spec.pipeline, Some(report.findings.len()));
                }
                Err(e) => {
                    tracing::warn!(pipeline = %spec.pipeline, error = %e, "verify could not run; retried after the next batches");
                    admin.record_verify(&spec.pipeline, None);
                }
            }
        }
    });
    let batches = AtomicU64::new(0);
    move || {
        if (batches.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every) {
            // A verification still running takes this turn too.
            let _ = due_tx.try_send(());
        }
    }
}
