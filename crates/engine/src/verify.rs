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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tributary_core::{PartitionRange, app_id};
use tributary_delta::{DeltaTableSink, LoggedCommit, TableOptions};
use tributary_kafka::{KafkaReader, Polled, StartAt};
use tributary_spec::TableSpec;

use crate::error::Result;
use crate::offset_log::{BatchPlan, OffsetLog};
use crate::pipeline::reader_config;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Something wrong with the table: `verify` exits non-zero on any.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Finding {
    /// One batch id in more than one commit: its rows are there twice.
    #[serde(rename_all = "camelCase")]
    BatchCommittedTwice {
        group: String,
        batch: u64,
        versions: Vec<u64>,
    },
    /// A batch id between two committed ones is in no commit.
    #[serde(rename_all = "camelCase")]
    BatchMissing { group: String, batch: u64 },
    /// Offsets that two batches both hold.
    #[serde(rename_all = "camelCase")]
    OffsetsOverlap {
        group: String,
        partition: i32,
        start: i64,
        end: i64,
        batches: [u64; 2],
    },
    /// Offsets `[start, end)` that no batch read, of which `firstRecord` is
    /// a record the broker holds (or `None` when the broker could not say).
    #[serde(rename_all = "camelCase")]
    OffsetsGap {
        group: String,
        partition: i32,
        start: i64,
        end: i64,
        after_batch: u64,
        first_record: Option<i64>,
        reason: String,
    },
    /// A committed batch whose offsets differ from its recorded plan.
    #[serde(rename_all = "camelCase")]
    PlanMismatch {
        group: String,
        batch: u64,
        planned: Vec<PartitionRange>,
        committed: Vec<PartitionRange>,
    },
    /// A commit whose `txn` version for the group is not its batch id.
    #[serde(rename_all = "camelCase")]
    TxnMismatch {
        group: String,
        version: u64,
        batch: u64,
        txn: Option<i64>,
    },
    /// A batch of a record-per-row table with more rows than records read.
    #[serde(rename_all = "camelCase")]
    MoreRowsThanRecords {
        group: String,
        batch: u64,
        rows: u64,
        records: u64,
    },
    /// A batch that sent records to the dead-letter table, which holds no
    /// commit of it or another number of rows.
    #[serde(rename_all = "camelCase")]
    DeadLettersMissing {
        group: String,
        batch: u64,
        expected: u64,
        found: Option<u64>,
    },
    /// A live file of the table that storage does not hold.
    #[serde(rename_all = "camelCase")]
    FileMissing { table: String, path: String },
}

/// One data commit of a group, as the analysis needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCommit {
    pub version: u64,
    pub batch: u64,
    pub ranges: Vec<PartitionRange>,
    pub end_offsets: BTreeMap<i32, i64>,
    pub rows: Option<u64>,
    pub dead_letters: u64,
    pub txn: Option<i64>,
    /// The commit replaced rows (an upsert): its rows are no record count.
    pub replaces_rows: bool,
}

/// Offsets `[start, end)` between two batches' positions that neither read:
/// a gap unless the broker shows they hold no record.
#[derive(Debug, Clone, PartialEq)]
pub struct Hole {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub after_batch: u64,
}

/// What `verify` found for one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupReport {
    pub group: String,
    pub app_id: String,
    /// Data commits of the group in the log.
    pub commits: usize,
    pub first_batch: Option<u64>,
    pub last_batch: Option<u64>,
    /// The offsets the table holds per partition, as `[start, end)` ranges.
    pub offsets: BTreeMap<i32, Vec<[i64; 2]>>,
    /// Rows the group's commits added (from the files' statistics).
    pub rows: Option<u64>,
    /// Offsets between batches that no batch read and that hold no record.
    pub offsets_without_records: u64,
    /// Recorded plans not (yet) committed: they are re-run at the next start.
    pub planned_not_committed: Vec<u64>,
}

/// The whole answer of `verify`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub pipeline: String,
    pub table: String,
    pub table_version: Option<u64>,
    /// The oldest version whose commit is still kept as JSON; older batches
    /// cannot be checked.
    pub log_from: Option<u64>,
    pub groups: Vec<GroupReport>,
    /// Whether the broker was asked about unread offsets.
    pub broker_checked: bool,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

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
    let mut findings = Vec::new();
    let mut by_batch: BTreeMap<u64, Vec<&GroupCommit>> = BTreeMap::new();
    for c in commits {
        by_batch.entry(c.batch).or_default().push(c);
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
    for (batch, held) in &by_batch {
        if held.len() > 1 {
            findings.push(Finding::BatchCommittedTwice {
                group: group.to_string(),
                batch: *batch,
                versions: held.iter().map(|c| c.version).collect(),
            });
        }
    }
    // The first commit of each batch id stands for it from here on.
    let batches: Vec<&GroupCommit> = by_batch.values().map(|held| held[0]).collect();
    for pair in batches.windows(2) {
        for missing in pair[0].batch + 1..pair[1].batch {
            findings.push(Finding::BatchMissing {
                group: group.to_string(),
                batch: missing,
            });
        }
    }

    // Each offset in at most one batch (every commit counts: a batch
    // committed twice overlaps itself).
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

    // Between consecutive batches: what the next one covered is
    // [previous position, its position); offsets in it outside its ranges
    // were passed over without a record, or lost.
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

    let held: BTreeSet<u64> = by_batch.keys().copied().collect();
    for plan in plans {
        if let Some(c) = by_batch.get(&plan.batch_id).map(|held| held[0])
            && plan.ranges.ranges != c.ranges
        {
            findings.push(Finding::PlanMismatch {
                group: group.to_string(),
                batch: plan.batch_id,
                planned: plan.ranges.ranges.clone(),
                committed: c.ranges.clone(),
            });
        }
    }
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

/// Verifies the table of `spec`. `ask_broker`: offsets between batches that
/// no batch read are looked up at the broker; without it they are findings.
pub async fn verify(spec: &TableSpec, ask_broker: bool) -> Result<VerifyReport> {
    let partitions = spec
        .partition_columns()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let open = |uri: String, partition_columns| {
        DeltaTableSink::open_existing(TableOptions {
            storage_options: spec.table.storage_options.clone(),
            uri,
            partition_columns,
            target_file_size: 1 << 20,
        })
    };
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
    let per_record = spec.window.is_none();
    let mut reports = Vec::new();
    let mut holes = Vec::new();
    for group in groups {
        let app = app_id(&spec.pipeline, &group);
        let plans = recorded_plans(spec, &group).await?;
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
    if broker_checked {
        let config = reader_config(spec);
        let unexplained = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
            let reader = KafkaReader::connect(&config)?;
            let mut out = Vec::new();
            for (group, hole) in holes {
                out.push((group, first_record(&reader, &hole), hole));
            }
            Ok(out)
        })
        .await
        .map_err(|e| crate::EngineError::Internal(e.to_string()))??;
        for (g, found, hole) in unexplained {
            let group = reports[g].group.clone();
            match found {
                Ok(None) => reports[g].offsets_without_records += (hole.end - hole.start) as u64,
                Ok(Some(offset)) => findings.push(Finding::OffsetsGap {
                    group,
                    partition: hole.partition,
                    start: hole.start,
                    end: hole.end,
                    after_batch: hole.after_batch,
                    first_record: Some(offset),
                    reason: format!("the broker holds record {offset}, which no batch read"),
                }),
                Err(reason) => findings.push(Finding::OffsetsGap {
                    group,
                    partition: hole.partition,
                    start: hole.start,
                    end: hole.end,
                    after_batch: hole.after_batch,
                    first_record: None,
                    reason,
                }),
            }
        }
    } else {
        for (g, hole) in holes {
            findings.push(Finding::OffsetsGap {
                group: reports[g].group.clone(),
                partition: hole.partition,
                start: hole.start,
                end: hole.end,
                after_batch: hole.after_batch,
                first_record: None,
                reason: "no batch read these offsets and the broker was not asked".into(),
            });
        }
    }
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

/// The plans the offsets log of `group` still holds (read only: a local
/// checkpoint that does not exist is not created).
async fn recorded_plans(spec: &TableSpec, group: &str) -> Result<Vec<BatchPlan>> {
    let opened = OffsetLog::open_existing(
        &spec.checkpoint.location,
        spec.checkpoint_storage_options(),
        group,
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_core::OffsetRanges;

    fn commit(
        version: u64,
        batch: u64,
        ranges: &[(i32, i64, i64)],
        ends: &[(i32, i64)],
    ) -> GroupCommit {
        GroupCommit {
            version,
            batch,
            ranges: ranges
                .iter()
                .map(|&(partition, start, end)| PartitionRange {
                    partition,
                    start,
                    end,
                })
                .collect(),
            end_offsets: ends.iter().copied().collect(),
            rows: Some(ranges.iter().map(|r| (r.2 - r.1) as u64).sum()),
            dead_letters: 0,
            txn: Some(batch as i64),
            replaces_rows: false,
        }
    }

    fn plan_of(c: &GroupCommit) -> BatchPlan {
        BatchPlan {
            batch_id: c.batch,
            group: "topic".into(),
            ranges: OffsetRanges {
                topic: "t".into(),
                ranges: c.ranges.clone(),
            },
            end_offsets: c.end_offsets.clone(),
            dead_letters: 0,
            dead_letter_records: None,
        }
    }

    fn check(
        commits: &[GroupCommit],
        plans: &[BatchPlan],
    ) -> (GroupReport, Vec<Finding>, Vec<Hole>) {
        check_group("topic", "p/topic", commits, plans, true)
    }

    #[test]
    fn a_clean_chain_has_no_finding_and_merges_its_offsets() {
        let commits = [
            commit(1, 0, &[(0, 0, 10), (1, 0, 5)], &[(0, 10), (1, 5)]),
            commit(2, 1, &[(0, 10, 20)], &[(0, 20), (1, 5)]),
            commit(4, 2, &[(1, 5, 9)], &[(0, 20), (1, 9)]),
        ];
        let mut plans: Vec<BatchPlan> = commits.iter().map(plan_of).collect();
        plans.push(BatchPlan {
            batch_id: 3,
            ..plans[2].clone()
        });
        let (report, findings, holes) = check(&commits, &plans);
        assert_eq!(findings, vec![]);
        assert_eq!(holes, vec![]);
        assert_eq!(report.offsets[&0], vec![[0, 20]]);
        assert_eq!(report.offsets[&1], vec![[0, 9]]);
        assert_eq!((report.first_batch, report.last_batch), (Some(0), Some(2)));
        assert_eq!(report.rows, Some(29));
        assert_eq!(report.planned_not_committed, vec![3]);
    }

    #[test]
    fn a_batch_committed_twice_is_a_duplicate_and_an_overlap() {
        let first = commit(1, 0, &[(0, 0, 10)], &[(0, 10)]);
        let again = commit(2, 0, &[(0, 0, 10)], &[(0, 10)]);
        let (_, findings, _) = check(&[first, again], &[]);
        assert!(findings.contains(&Finding::BatchCommittedTwice {
            group: "topic".into(),
            batch: 0,
            versions: vec![1, 2],
        }));
        assert!(findings.iter().any(|f| matches!(
            f,
            Finding::OffsetsOverlap {
                partition: 0,
                start: 0,
                end: 10,
                ..
            }
        )));
    }

    #[test]
    fn missing_batches_overlaps_and_holes_are_found() {
        let commits = [
            commit(1, 0, &[(0, 0, 10)], &[(0, 10)]),
            // Batch 1 starts after offset 10: offsets 10..12 were skipped.
            commit(2, 1, &[(0, 12, 20)], &[(0, 20)]),
            // Batch 2 is in no commit; batch 3 reads offsets batch 1 held.
            commit(3, 3, &[(0, 18, 30)], &[(0, 30)]),
        ];
        let (_, findings, holes) = check(&commits, &[]);
        assert!(findings.contains(&Finding::BatchMissing {
            group: "topic".into(),
            batch: 2
        }));
        assert!(findings.contains(&Finding::OffsetsOverlap {
            group: "topic".into(),
            partition: 0,
            start: 18,
            end: 20,
            batches: [1, 3],
        }));
        assert_eq!(
            holes,
            vec![Hole {
                partition: 0,
                start: 10,
                end: 12,
                after_batch: 0
            }]
        );
    }

    #[test]
    fn positions_past_the_last_record_are_holes_for_the_broker() {
        // A transaction marker at offset 10: the position moved to 11.
        let commits = [
            commit(1, 0, &[(0, 0, 10)], &[(0, 11)]),
            commit(2, 1, &[(0, 11, 15)], &[(0, 15)]),
            commit(3, 2, &[], &[(0, 17)]),
        ];
        let (_, findings, holes) = check(&commits, &[]);
        assert_eq!(findings, vec![]);
        assert_eq!(
            holes,
            vec![Hole {
                partition: 0,
                start: 15,
                end: 17,
                after_batch: 1
            }]
        );
    }

    #[test]
    fn dead_letters_must_be_in_their_table_under_the_batch_id() {
        let mut with_dead = commit(1, 0, &[(0, 0, 10)], &[(0, 10)]);
        with_dead.dead_letters = 2;
        with_dead.rows = Some(8);
        let mut dead = commit(1, 0, &[(0, 0, 10)], &[(0, 10)]);
        dead.rows = Some(2);
        assert_eq!(
            check_dead_letters("topic", &[with_dead.clone()], &[dead.clone()], true),
            vec![]
        );
        dead.rows = Some(3);
        assert_eq!(
            check_dead_letters("topic", &[with_dead.clone()], &[dead], true),
            vec![Finding::DeadLettersMissing {
                group: "topic".into(),
                batch: 0,
                expected: 2,
                found: Some(3)
            }]
        );
        assert_eq!(
            check_dead_letters("topic", &[with_dead.clone()], &[], true).len(),
            1
        );
        // An expired dead-letter log proves nothing missing.
        assert_eq!(
            check_dead_letters("topic", &[with_dead], &[], false),
            vec![]
        );
    }

    #[test]
    fn plans_txns_and_row_counts_must_agree_with_the_commits() {
        let mut c = commit(1, 0, &[(0, 0, 10)], &[(0, 10)]);
        let mut plan = plan_of(&c);
        plan.ranges.ranges[0].end = 12;
        c.txn = None;
        c.rows = Some(11);
        let (_, findings, _) = check(&[c], &[plan]);
        assert_eq!(findings.len(), 3, "{findings:?}");
        assert!(matches!(
            findings[0],
            Finding::TxnMismatch { txn: None, .. }
        ));
        assert!(matches!(
            findings[1],
            Finding::MoreRowsThanRecords {
                rows: 11,
                records: 10,
                ..
            }
        ));
        assert!(matches!(
            findings[2],
            Finding::PlanMismatch { batch: 0, .. }
        ));
    }
}
