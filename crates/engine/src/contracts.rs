//! The contracts between the batch loop and what it reads from and writes
//! to: the source ([`Source`]), the offsets log ([`PlanLog`]) and the tables
//! ([`CommittedBatches`], [`TableSink`]). Recovery and the commit step are
//! written against these traits only, so they are tested against in-memory
//! implementations (see `recovery`'s tests); the pipeline runs them over a
//! Kafka reader, [`crate::OffsetLog`] and Delta tables.

use std::collections::BTreeMap;

use std::time::Duration;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use tributary_avro::RecordDecoder;
use tributary_core::{DeadLetter, OffsetRanges};
use tributary_delta::{BatchCommit, CommitMarker, CommitOutcome, DeltaTableSink, FileIntent};
use tributary_spec::PartitionColumn;

use crate::error::Result;
use crate::plan::{BatchPlan, PlanLimits};

/// What [`Source::read_new`] or [`Source::replay`] read.
#[derive(Default)]
pub(crate) struct ReadBatch {
    pub ranges: OffsetRanges,
    /// Where every partition stands after this batch.
    pub end_offsets: BTreeMap<i32, i64>,
    pub dead_letters: Vec<DeadLetter>,
    pub records: u64,
    pub bytes: u64,
    /// Of `read_time`, decoding (estimated by sampling).
    pub decode_time: Duration,
    pub read_time: Duration,
    /// `available_now` and every partition reached its target.
    pub drained: bool,
    /// The records' Kafka timestamps (milliseconds), sorted.
    pub kafka_times: Vec<i64>,
}

/// Where a group's records come from: the partitions of one topic, each an
/// ordered log of offsets. Calls block (they are made from the reader
/// thread, or through `block_in_place`).
pub(crate) trait Source: Send + Sync {
    /// The topic's partitions.
    fn partitions(&self) -> Result<Vec<i32>>;

    /// Each partition's first offset and the offset after its last record,
    /// asked at once.
    fn watermarks(&self, partitions: &[i32]) -> Result<BTreeMap<i32, (i64, i64)>>;

    /// Refuses resume positions the topic no longer holds (deleted by
    /// retention, or the topic recreated and its offsets gone back): never
    /// skips records silently. `highs`: each partition's high watermark,
    /// from `watermarks`.
    fn check_positions(
        &self,
        positions: &BTreeMap<i32, i64>,
        highs: &BTreeMap<i32, i64>,
    ) -> Result<()>;

    /// Reads each of `positions`' partitions from its offset, and no other
    /// partition.
    fn seek(&self, positions: &BTreeMap<i32, i64>) -> Result<()>;

    /// Also reads these partitions, from their offsets.
    fn add(&self, positions: &BTreeMap<i32, i64>) -> Result<()>;

    /// Reads a new batch from `positions` (advanced past what it read),
    /// decoding into `rows`: the end of each partition is planned from
    /// `limits` before reading (Spark's split of the offsets limit over the
    /// partitions' lags), so the same backlog gives the same batches. The
    /// batch's ranges are exactly the offsets it read. `undrained`: with a
    /// drain target, the partitions not yet at it. `carry`: records fetched
    /// past a planned end, for the next batches. A batch without records
    /// comes back when the drain is complete, `stop` says so, or nothing
    /// came for a trigger interval.
    #[allow(clippy::too_many_arguments)]
    fn read_new(
        &self,
        decoder: &mut RecordDecoder,
        positions: &mut BTreeMap<i32, i64>,
        limits: &PlanLimits,
        undrained: &mut std::collections::BTreeSet<i32>,
        carry: &mut crate::carry::Carry,
        stop: &dyn Fn() -> bool,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<ReadBatch>;

    /// Reads exactly the plan's ranges again (every record in them, none
    /// other); a record the plan sent to the dead letters goes there again
    /// with its recorded reason. `None` when `stop` says so meanwhile.
    fn replay(
        &self,
        decoder: &mut RecordDecoder,
        plan: &BatchPlan,
        stop: &dyn Fn() -> bool,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<Option<ReadBatch>>;

    /// The newest offset of each partition, as far as known (for lag).
    fn latest_offsets(&self) -> BTreeMap<i32, i64>;

    /// Records where the group stands with the consumer group, for lag
    /// tools only: the tables are the source of truth.
    fn commit_positions(&self, next_offsets: &[(i32, i64)]) -> Result<()>;
}

/// Where plans are recorded before anything of their batch is written
/// (Spark's `checkpoint/offsets`), and where the data files a batch is about
/// to write are announced, so the files of a failed attempt can be found.
#[async_trait::async_trait]
pub trait PlanLog: Send + Sync {
    /// Records `plan` durably, but only if no plan with its batch id exists:
    /// two instances can never both record a plan for one batch (exclusive
    /// creation). The plan appears whole or not at all. Returns the plan
    /// recorded before, if any; the caller compares it with its own.
    async fn record(&self, plan: &BatchPlan) -> Result<Option<BatchPlan>>;

    /// Replaces the plan of a batch by the one a table recorded for it: the
    /// instance that lost a race adopts the winner's batch.
    async fn adopt(&self, plan: &BatchPlan) -> Result<()>;

    /// The plan of `batch`, while the log keeps it.
    async fn plan(&self, batch: u64) -> Result<Option<BatchPlan>>;

    /// The newest recorded plan.
    async fn latest(&self) -> Result<Option<BatchPlan>>;

    /// Where the data files of `batch` are announced before they are written.
    fn intent(&self, batch: u64) -> Box<dyn FileIntent>;

    /// The data files announced for `batch`, by table URI.
    async fn announced(&self, batch: u64) -> Result<BTreeMap<String, Vec<String>>>;
}

/// What a table says about the batches a group committed to it. Every
/// batch is committed under `txn {appId: <pipeline>/<group>, version:
/// <batch id>}` with its plan in `commitInfo`; a batch has *landed* in a
/// table once the table's txn version for the app id is at or past its id.
#[async_trait::async_trait]
pub trait CommittedBatches: Send + Sync {
    /// The table's URI, for messages and for matching file announcements.
    fn uri(&self) -> &str;

    /// The newest batch of `app_id` that landed (its txn version).
    async fn committed_batch(&self, app_id: &str) -> Result<Option<u64>>;

    /// The plan batch `batch` of `app_id` recorded in its commit, while the
    /// table's log still holds that commit.
    async fn committed_plan(&self, app_id: &str, batch: u64) -> Result<Option<BatchPlan>>;

    /// The plan of the newest batch of `app_id` the table's log still holds.
    async fn last_committed_plan(&self, app_id: &str) -> Result<Option<BatchPlan>>;
}

/// How a batch's rows meet the table.
#[derive(Debug, Clone)]
pub enum CommitMode {
    Append,
    /// Update mode: rows replace those with the same `keys` (a MERGE).
    Upsert {
        keys: Vec<String>,
        partitions: Vec<PartitionColumn>,
    },
}

/// A table a batch is committed to.
#[async_trait::async_trait]
pub trait TableSink: CommittedBatches {
    /// Commits one batch as one transaction tagged `txn {app_id, batch_id}`.
    /// Idempotent: when the batch has already landed nothing is written and
    /// the outcome says `already_landed`. A concurrent commit of the same
    /// app id (a zombie) is refused, never written twice. Every data file is
    /// announced to `intent` before it is written.
    async fn commit(
        &mut self,
        commit: BatchCommit,
        mode: &CommitMode,
        intent: &dyn FileIntent,
    ) -> Result<CommitOutcome>;

    /// Deletes those of `paths` that no commit of the table references: the
    /// files of failed attempts at a batch that has landed since. Returns
    /// how many were deleted.
    async fn remove_uncommitted(
        &mut self,
        app_id: &str,
        batch: u64,
        paths: &[String],
    ) -> Result<usize>;

    /// The table's schema, once it exists.
    fn schema(&self) -> Option<SchemaRef>;

    /// The table's version after the last commit seen.
    fn version(&self) -> Option<u64>;
}

#[async_trait::async_trait]
impl CommittedBatches for DeltaTableSink {
    fn uri(&self) -> &str {
        DeltaTableSink::uri(self)
    }

    async fn committed_batch(&self, app_id: &str) -> Result<Option<u64>> {
        Ok(DeltaTableSink::committed_batch(self, app_id).await?)
    }

    async fn committed_plan(&self, app_id: &str, batch: u64) -> Result<Option<BatchPlan>> {
        plan_of(self.marker_of(app_id, batch).await?)
    }

    async fn last_committed_plan(&self, app_id: &str) -> Result<Option<BatchPlan>> {
        plan_of(self.last_marker(app_id).await?)
    }
}

/// The plan a commit recorded in `commitInfo.tributary`.
fn plan_of(marker: Option<CommitMarker>) -> Result<Option<BatchPlan>> {
    marker
        .map(|m| BatchPlan::from_commit_info(m.version, &m.info))
        .transpose()
}

#[async_trait::async_trait]
impl TableSink for DeltaTableSink {
    async fn commit(
        &mut self,
        commit: BatchCommit,
        mode: &CommitMode,
        intent: &dyn FileIntent,
    ) -> Result<CommitOutcome> {
        Ok(match mode {
            CommitMode::Append => DeltaTableSink::commit(self, commit, intent).await?,
            CommitMode::Upsert { keys, partitions } => {
                self.upsert(commit, keys, partitions, intent).await?
            }
        })
    }

    async fn remove_uncommitted(
        &mut self,
        app_id: &str,
        batch: u64,
        paths: &[String],
    ) -> Result<usize> {
        Ok(DeltaTableSink::remove_uncommitted(self, app_id, batch, paths).await?)
    }

    fn schema(&self) -> Option<SchemaRef> {
        self.arrow_schema()
    }

    fn version(&self) -> Option<u64> {
        DeltaTableSink::version(self)
    }
}
