//! The offsets log (Spark's `checkpoint/offsets`): one file per planned batch,
//! written and fsynced before anything of the batch reaches a table. A
//! recorded batch is always re-run with exactly its ranges; an unrecorded one
//! never happened.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tributary_core::OffsetRanges;

use crate::error::{EngineError, Result};

/// How many planned batches stay in the log (Spark's `minBatchesToRetain`).
const RETAINED: u64 = 100;

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
}

pub struct OffsetLog {
    dir: PathBuf,
}

impl OffsetLog {
    /// `checkpoint` is the spec's checkpoint location (`file://` URI or path).
    pub fn open(checkpoint: &str, group: &str) -> Result<OffsetLog> {
        let root = checkpoint.strip_prefix("file://").unwrap_or(checkpoint);
        let dir = Path::new(root).join("offsets").join(group);
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
        Ok(OffsetLog { dir })
    }

    fn file(&self, batch: u64) -> PathBuf {
        self.dir.join(format!("{batch:020}.json"))
    }

    /// Records a plan durably. The file appears whole or not at all (written
    /// aside, fsynced, renamed, directory fsynced).
    pub fn record(&self, plan: &BatchPlan) -> Result<()> {
        let target = self.file(plan.batch_id);
        let tmp = self.dir.join(format!(".{:020}.tmp", plan.batch_id));
        let body =
            serde_json::to_vec_pretty(plan).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| err(&target, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&self.dir, e))?;
        if plan.batch_id >= RETAINED {
            let _ = std::fs::remove_file(self.file(plan.batch_id - RETAINED));
        }
        Ok(())
    }

    /// The newest recorded plan.
    pub fn latest(&self) -> Result<Option<BatchPlan>> {
        let mut newest: Option<u64> = None;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| err(&self.dir, e))? {
            let name = entry.map_err(|e| err(&self.dir, e))?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                newest = newest.max(Some(id));
            }
        }
        let Some(id) = newest else { return Ok(None) };
        let path = self.file(id);
        let body = std::fs::read(&path).map_err(|e| err(&path, e))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| EngineError::OffsetLog {
                path: path.display().to_string(),
                message: format!("unreadable plan: {e}"),
            })
    }
}

fn err(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::OffsetLog {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_plan_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let loc = format!("file://{}", dir.path().display());
        let log = OffsetLog::open(&loc, "topic").unwrap();
        assert_eq!(log.latest().unwrap(), None);
        for id in 0..3 {
            let mut ranges = OffsetRanges::new("t");
            ranges.record(0, id as i64 * 10);
            let plan = BatchPlan {
                batch_id: id,
                group: "topic".into(),
                ranges,
                end_offsets: BTreeMap::from([(0, id as i64 * 10 + 1)]),
                dead_letters: 0,
            };
            log.record(&plan).unwrap();
        }
        let again = OffsetLog::open(&loc, "topic").unwrap();
        let latest = again.latest().unwrap().unwrap();
        assert_eq!(latest.batch_id, 2);
        assert_eq!(latest.end_offsets[&0], 21);
    }
}
