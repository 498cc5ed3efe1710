//! In-memory offsets logs and tables for the recovery tests, and a world
//! that runs batches through the protocol up to a crash point.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tributary_core::{CrashPoint, OffsetRanges};
use tributary_delta::FileIntent;

use super::{GroupTables, Recovery, recover};
use crate::contracts::{CommittedBatches, PlanLog};
use crate::error::Result;
use crate::plan::BatchPlan;

pub(super) const APP: &str = "p/topic";

/// Batch `id` reads `[10 id, 10 id + 10)` of partition 0, or other offsets
/// when another instance planned it (`shift`).
pub(super) fn plan(id: u64, shift: i64) -> BatchPlan {
    let start = id as i64 * 10 + shift;
    let mut ranges = OffsetRanges::new("t");
    ranges.record(0, start);
    ranges.record(0, start + 9);
    BatchPlan {
        batch_id: id,
        group: "topic".into(),
        ranges,
        end_offsets: BTreeMap::from([(0, start + 10)]),
        dead_letters: 0,
        dead_letter_records: None,
        dimension_versions: None,
    }
}

/// A table: its txn version for `APP` and the commits its log still holds.
#[derive(Default)]
pub(super) struct MemoryTable {
    pub txn: Mutex<Option<u64>>,
    pub commits: Mutex<BTreeMap<u64, BatchPlan>>,
}

impl MemoryTable {
    pub fn land(&self, plan: &BatchPlan) {
        *self.txn.lock().unwrap() = Some(plan.batch_id);
        self.commits
            .lock()
            .unwrap()
            .insert(plan.batch_id, plan.clone());
    }

    /// The log's JSON of `batch` is gone (log retention); its txn stays.
    pub fn expire(&self, batch: u64) {
        self.commits.lock().unwrap().remove(&batch);
    }
}

#[async_trait::async_trait]
impl CommittedBatches for MemoryTable {
    fn uri(&self) -> &str {
        "memory://table"
    }

    async fn committed_batch(&self, app_id: &str) -> Result<Option<u64>> {
        assert_eq!(app_id, APP);
        Ok(*self.txn.lock().unwrap())
    }

    async fn committed_plan(&self, app_id: &str, batch: u64) -> Result<Option<BatchPlan>> {
        assert_eq!(app_id, APP);
        Ok(self.commits.lock().unwrap().get(&batch).cloned())
    }

    async fn last_committed_plan(&self, app_id: &str) -> Result<Option<BatchPlan>> {
        assert_eq!(app_id, APP);
        Ok(self.commits.lock().unwrap().values().last().cloned())
    }
}

type Announcements = Arc<Mutex<BTreeMap<u64, Vec<(String, String)>>>>;

#[derive(Default)]
pub(super) struct MemoryLog {
    plans: Mutex<BTreeMap<u64, BatchPlan>>,
    announced: Announcements,
}

struct MemoryIntent {
    batch: u64,
    announced: Announcements,
}

#[async_trait::async_trait]
impl FileIntent for MemoryIntent {
    async fn announce(&self, table_uri: &str, path: &str) -> std::io::Result<()> {
        self.announced
            .lock()
            .unwrap()
            .entry(self.batch)
            .or_default()
            .push((table_uri.into(), path.into()));
        Ok(())
    }
}

#[async_trait::async_trait]
impl PlanLog for MemoryLog {
    async fn record(&self, plan: &BatchPlan) -> Result<Option<BatchPlan>> {
        let mut plans = self.plans.lock().unwrap();
        if let Some(before) = plans.get(&plan.batch_id) {
            return Ok(Some(before.clone()));
        }
        plans.insert(plan.batch_id, plan.clone());
        Ok(None)
    }

    async fn adopt(&self, plan: &BatchPlan) -> Result<()> {
        self.plans
            .lock()
            .unwrap()
            .insert(plan.batch_id, plan.clone());
        Ok(())
    }

    async fn plan(&self, batch: u64) -> Result<Option<BatchPlan>> {
        Ok(self.plans.lock().unwrap().get(&batch).cloned())
    }

    async fn latest(&self) -> Result<Option<BatchPlan>> {
        Ok(self.plans.lock().unwrap().values().last().cloned())
    }

    fn intent(&self, batch: u64) -> Box<dyn FileIntent> {
        Box::new(MemoryIntent {
            batch,
            announced: self.announced.clone(),
        })
    }

    async fn announced(&self, batch: u64) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (table, path) in self
            .announced
            .lock()
            .unwrap()
            .get(&batch)
            .into_iter()
            .flatten()
        {
            out.entry(table.clone()).or_default().push(path.clone());
        }
        Ok(out)
    }
}

/// A group's offsets log, tables and operator state.
#[derive(Default)]
pub(super) struct World {
    pub log: MemoryLog,
    pub data: MemoryTable,
    pub dead_letters: MemoryTable,
    /// `None`: a stateless pipeline; else the last batch whose state is applied.
    pub state: Option<Option<u64>>,
}

impl World {
    pub fn new(stateful: bool) -> World {
        World {
            state: stateful.then_some(None),
            ..World::default()
        }
    }

    pub async fn recover(&self) -> Result<Recovery> {
        let tables = GroupTables {
            app_id: APP,
            pipeline: "p",
            group: "topic",
            data: &self.data,
            dead_letters: &self.dead_letters,
            checkpoint: "memory://checkpoint",
        };
        recover(&tables, &self.log, self.state).await
    }

    /// Runs `plan` through the protocol up to `point`, or to its end.
    pub async fn run(&mut self, plan: &BatchPlan, until: Option<CrashPoint>) {
        use CrashPoint::*;
        let reached = |p: CrashPoint| until.is_none_or(|u| step(u) >= step(p));
        if !reached(AfterPlan) {
            return;
        }
        assert_eq!(self.log.record(plan).await.unwrap(), None);
        if plan.dead_letters > 0 && reached(AfterDeadLetters) {
            self.dead_letters.land(plan);
        }
        if reached(AfterCommit) {
            self.data.land(plan);
        }
        if reached(AfterOffsets) && self.state.is_some() {
            self.state = Some(Some(plan.batch_id));
        }
    }

    /// Carries out a recovery: re-runs land everywhere and apply their state.
    pub async fn carry_out(&mut self, recovery: &Recovery) {
        for plan in &recovery.rerun {
            if plan.dead_letters > 0 {
                self.dead_letters.land(plan);
            }
            self.data.land(plan);
            if self.state.is_some() {
                self.state = Some(Some(plan.batch_id));
            }
        }
    }
}

/// The order of the crash points within a batch. The state is applied after
/// the commit and before offsets go to the consumer group.
pub(super) fn step(point: CrashPoint) -> u8 {
    match point {
        // Before anything of a batch.
        CrashPoint::PanicInReader | CrashPoint::InRepartition => 0,
        CrashPoint::AfterRead => 1,
        CrashPoint::AfterPlan => 2,
        CrashPoint::AfterDeadLetters => 3,
        CrashPoint::AfterFiles => 4,
        CrashPoint::AfterCommit => 5,
        CrashPoint::AfterOffsets => 6,
    }
}
