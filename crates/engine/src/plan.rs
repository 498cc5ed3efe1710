//! Planning: a batch is fixed before it is read or written. Its plan
//! records, per partition, the offsets it covers and where every partition
//! stands after it; the offsets log holds plans (see `offset_log`), and a
//! committed batch carries its plan into the table's `commitInfo`, so the
//! table can stand in for a lost log.
//!
//! Invariants: a recorded plan is never changed except by adopting what a
//! table recorded for the same batch id; a re-run reads exactly its ranges.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_core::OffsetRanges;

use crate::error::{EngineError, Result};

/// One planned batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchPlan {
    pub batch_id: u64,
    pub group: String,
    /// The records of this batch: `[start, end)` per partition it read.
    pub ranges: OffsetRanges,
    /// Where every assigned partition stands after this batch.
    pub end_offsets: BTreeMap<i32, i64>,
    /// Records of this batch that went to the dead-letter table.
    #[serde(default)]
    pub dead_letters: u64,
    /// Which records went to the dead-letter table, and why: a replay sends
    /// exactly these there, whatever the registry answers by then. `None`
    /// in plans that do not record them (older ones, or rebuilt from a
    /// table commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_records: Option<Vec<RecordedDeadLetter>>,
    /// The version of each `enrich` dimension the batch joined, in the
    /// spec's order: a replay joins the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension_versions: Option<Vec<u64>>,
}

impl BatchPlan {
    /// The plan a table commit records in `commitInfo.tributary` (`info`, of
    /// table version `version`). Which records went to the dead-letter table
    /// is not recorded there.
    pub fn from_commit_info(version: u64, info: &serde_json::Value) -> Result<BatchPlan> {
        let bad = |what: &str| {
            EngineError::Internal(format!("table version {version} has an unreadable {what}"))
        };
        Ok(BatchPlan {
            batch_id: info["batchId"].as_u64().ok_or_else(|| bad("batchId"))?,
            group: info["group"]
                .as_str()
                .unwrap_or(tributary_core::TOPIC_GROUP)
                .to_string(),
            ranges: OffsetRanges {
                topic: info["topic"].as_str().unwrap_or_default().to_string(),
                ranges: serde_json::from_value(info["ranges"].clone())
                    .map_err(|_| bad("ranges"))?,
            },
            end_offsets: serde_json::from_value(info["endOffsets"].clone())
                .map_err(|_| bad("endOffsets"))?,
            dead_letters: info["deadLetters"].as_u64().unwrap_or(0),
            dead_letter_records: None,
            dimension_versions: serde_json::from_value(info["dimensionVersions"].clone())
                .map_err(|_| bad("dimensionVersions"))?,
        })
    }
}

/// A record a batch sent to the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// When a new batch ends.
pub(crate) struct PlanLimits {
    pub max_offsets: u64,
    pub max_bytes: u64,
    pub interval: Duration,
    /// `available_now`: the high watermark of each partition at start.
    pub drain_targets: Option<BTreeMap<i32, i64>>,
}
