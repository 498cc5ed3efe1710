//! What `tributary verify` reports: per group, what the table holds, and
//! every finding that breaks exactly-once.

use std::collections::BTreeMap;

use serde::Serialize;
use tributary_core::PartitionRange;

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
