//! The checks of `tributary verify` on hand-made commit chains.

use tributary_core::{OffsetRanges, PartitionRange};

use super::findings::GroupCommit;
use super::*;

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
        dimension_versions: None,
    }
}

fn check(commits: &[GroupCommit], plans: &[BatchPlan]) -> (GroupReport, Vec<Finding>, Vec<Hole>) {
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
