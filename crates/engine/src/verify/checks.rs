//! The checks of `tributary verify` that need nothing but the commits and
//! plans: pure functions, unit-tested below.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tributary_delta::LoggedCommit;

use super::findings::{Finding, GroupCommit, GroupReport, Hole};
use crate::error::Result;
use crate::plan::BatchPlan;

/// The commits of `app` among `commits`, oldest first.
pub fn group_commits(commits: &[LoggedCommit], app: &str) -> Result<Vec<GroupCommit>> {
    commits
        .iter()
        .filter_map(|c| {
            let info = c.batch.as_ref()?;
            (info.get("appId").and_then(Value::as_str) == Some(app)).then_some((c, info))
        })
        .map(|(c, info)| {
            let plan = BatchPlan::from_commit_info(c.version, info)?;
            Ok(GroupCommit {
                version: c.version,
                batch: plan.batch_id,
                ranges: plan.ranges.ranges,
                end_offsets: plan.end_offsets,
                rows: c.rows_added,
                dead_letters: plan.dead_letters,
                txn: c.txns.iter().find(|(a, _)| a == app).map(|(_, v)| *v),
                replaces_rows: c.data_removed,
            })
        })
        .collect()
}

/// Checks one group's commits against each other and its plans. `per_record`:
/// the table holds at most one row per record read (no windows), so rows
/// can be checked against offsets. Returns the report, the findings and the
/// holes the broker has to explain.
pub fn check_group(
    group: &str,
    app: &str,
    commits: &[GroupCommit],
    plans: &[BatchPlan],
    per_record: bool,
) -> (GroupReport, Vec<Finding>, Vec<Hole>) {
    let mut findings = commit_findings(group, commits, per_record);
    let mut by_batch: BTreeMap<u64, Vec<&GroupCommit>> = BTreeMap::new();
    for c in commits {
        by_batch.entry(c.batch).or_default().push(c);
    }
    findings.extend(duplicates_and_gaps(group, &by_batch));
    // The first commit of each batch id stands for it from here on.
    let batches: Vec<&GroupCommit> = by_batch.values().map(|held| held[0]).collect();
    let offsets = merged_offsets(group, commits, &mut findings);
    let holes = holes_between(&batches);
    findings.extend(plan_mismatches(group, &by_batch, plans));

    let held: BTreeSet<u64> = by_batch.keys().copied().collect();
    let last_batch = held.last().copied();
    let report = GroupReport {
        group: group.to_string(),
        app_id: app.to_string(),
        commits: commits.len(),
        first_batch: held.first().copied(),
        last_batch,
        offsets,
        rows: commits.iter().try_fold(0u64, |sum, c| Some(sum + c.rows?)),
        offsets_without_records: 0,
        planned_not_committed: plans
            .iter()
            .map(|p| p.batch_id)
            .filter(|b| last_batch.is_none_or(|l| *b > l))
            .collect(),
    };
    (report, findings, holes)
}

/// Each commit alone: its txn names its batch, and (`per_record`) it holds
/// no more rows and dead letters than records it read.
fn commit_findings(group: &str, commits: &[GroupCommit], per_record: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    for c in commits {
        if c.txn != Some(c.batch as i64) {
            findings.push(Finding::TxnMismatch {
                group: group.to_string(),
                version: c.version,
                batch: c.batch,
                txn: c.txn,
            });
        }
        let records: u64 = c
            .ranges
            .iter()
            .map(|r| (r.end - r.start).max(0) as u64)
            .sum();
        if let Some(rows) = c.rows
            && per_record
            && !c.replaces_rows
            && rows + c.dead_letters > records
        {
            findings.push(Finding::MoreRowsThanRecords {
                group: group.to_string(),
                batch: c.batch,
                rows: rows + c.dead_letters,
                records,
            });
        }
    }
    findings
}

/// Each batch id once, and none missing between the first and the last.
fn duplicates_and_gaps(group: &str, by_batch: &BTreeMap<u64, Vec<&GroupCommit>>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (batch, held) in by_batch {
        if held.len() > 1 {
            findings.push(Finding::BatchCommittedTwice {
                group: group.to_string(),
                batch: *batch,
                versions: held.iter().map(|c| c.version).collect(),
            });
        }
    }
    let ids: Vec<u64> = by_batch.keys().copied().collect();
    for pair in ids.windows(2) {
        for missing in pair[0] + 1..pair[1] {
            findings.push(Finding::BatchMissing {
                group: group.to_string(),
                batch: missing,
            });
        }
    }
    findings
}

/// The offsets the commits hold, merged per partition. Each offset must be
/// in at most one batch (every commit counts: a batch committed twice
/// overlaps itself).
fn merged_offsets(
    group: &str,
    commits: &[GroupCommit],
    findings: &mut Vec<Finding>,
) -> BTreeMap<i32, Vec<[i64; 2]>> {
    let mut per_partition: BTreeMap<i32, Vec<(i64, i64, u64)>> = BTreeMap::new();
    for c in commits {
        for r in &c.ranges {
            per_partition
                .entry(r.partition)
                .or_default()
                .push((r.start, r.end, c.batch));
        }
    }
    let mut offsets = BTreeMap::new();
    for (partition, ranges) in &mut per_partition {
        ranges.sort();
        let mut merged: Vec<[i64; 2]> = Vec::new();
        for (i, (start, end, batch)) in ranges.iter().enumerate() {
            if let Some((_, prev_end, prev_batch)) = i.checked_sub(1).map(|j| ranges[j])
                && *start < prev_end
            {
                findings.push(Finding::OffsetsOverlap {
                    group: group.to_string(),
                    partition: *partition,
                    start: *start,
                    end: prev_end.min(*end),
                    batches: [prev_batch, *batch],
                });
            }
            match merged.last_mut() {
                Some(last) if *start <= last[1] => last[1] = last[1].max(*end),
                _ => merged.push([*start, *end]),
            }
        }
        offsets.insert(*partition, merged);
    }
    offsets
}

/// Between consecutive batches: what the next one covered is [previous
/// position, its position); offsets in it outside its ranges were passed
/// over without a record, or lost.
fn holes_between(batches: &[&GroupCommit]) -> Vec<Hole> {
    let mut holes = Vec::new();
    for pair in batches.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.batch != prev.batch + 1 {
            continue;
        }
        for (partition, end) in &next.end_offsets {
            let Some(&from) = prev.end_offsets.get(partition) else {
                continue;
            };
            let mut hole = |start: i64, end: i64| {
                if start < end {
                    holes.push(Hole {
                        partition: *partition,
                        start,
                        end,
                        after_batch: prev.batch,
                    });
                }
            };
            match next.ranges.iter().find(|r| r.partition == *partition) {
                Some(r) => {
                    hole(from, r.start);
                    hole(r.end, *end);
                }
                None => hole(from, *end),
            }
        }
    }
    holes
}

/// A committed batch must hold the ranges its plan recorded.
fn plan_mismatches(
    group: &str,
    by_batch: &BTreeMap<u64, Vec<&GroupCommit>>,
    plans: &[BatchPlan],
) -> Vec<Finding> {
    plans
        .iter()
        .filter_map(|plan| {
            let c = by_batch.get(&plan.batch_id).map(|held| held[0])?;
            (plan.ranges.ranges != c.ranges).then(|| Finding::PlanMismatch {
                group: group.to_string(),
                batch: plan.batch_id,
                planned: plan.ranges.ranges.clone(),
                committed: c.ranges.clone(),
            })
        })
        .collect()
}

/// Every batch with dead letters must have them in the dead-letter table,
/// committed under the same batch id, as many as the data commit says.
/// `whole_log`: the dead-letter table's log still starts at version 0, so a
/// batch missing from it is missing, not expired.
pub fn check_dead_letters(
    group: &str,
    data: &[GroupCommit],
    dead: &[GroupCommit],
    whole_log: bool,
) -> Vec<Finding> {
    let oldest_kept = dead.iter().map(|c| c.batch).min();
    data.iter()
        .filter(|c| c.dead_letters > 0)
        .filter_map(|c| {
            let found = dead.iter().find(|d| d.batch == c.batch).map(|d| d.rows);
            let checkable = whole_log || oldest_kept.is_some_and(|o| o <= c.batch);
            let wrong = match found {
                Some(rows) => rows.is_some_and(|r| r != c.dead_letters),
                None => checkable,
            };
            wrong.then(|| Finding::DeadLettersMissing {
                group: group.to_string(),
                batch: c.batch,
                expected: c.dead_letters,
                found: found.flatten(),
            })
        })
        .collect()
}
