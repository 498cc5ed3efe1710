//! The offsets log (Spark's `checkpoint/offsets`): one file per planned batch,
//! written and fsynced before anything of the batch reaches a table. A
//! recorded batch is always re-run with exactly its ranges; an unrecorded one
//! never happened.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tributary_core::OffsetRanges;
use tributary_delta::FileIntent;

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

    /// Records a new plan durably, only if no plan with its id exists: two
    /// instances can never record different plans for one batch. The file
    /// appears whole or not at all (written aside, fsynced, linked into place,
    /// directory fsynced). Returns the plan already recorded, if any.
    pub fn record(&self, plan: &BatchPlan) -> Result<Option<BatchPlan>> {
        let target = self.file(plan.batch_id);
        let tmp = self.write_aside(plan)?;
        let linked = std::fs::hard_link(&tmp, &target);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return self.read(plan.batch_id).map(Some);
            }
            Err(e) => return Err(err(&target, e)),
        }
        self.sync_dir()?;
        self.forget_before(plan.batch_id);
        Ok(None)
    }

    /// Replaces the plan of a batch by the one a table recorded for it (an
    /// instance that lost a race adopts the winner's batch).
    pub fn adopt(&self, plan: &BatchPlan) -> Result<()> {
        let target = self.file(plan.batch_id);
        let tmp = self.write_aside(plan)?;
        std::fs::rename(&tmp, &target).map_err(|e| err(&target, e))?;
        self.sync_dir()
    }

    fn write_aside(&self, plan: &BatchPlan) -> Result<PathBuf> {
        let tmp = self
            .dir
            .join(format!(".{:020}.{}.tmp", plan.batch_id, std::process::id()));
        let body =
            serde_json::to_vec_pretty(plan).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(|e| err(&tmp, e))?;
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<()> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&self.dir, e))
    }

    /// Keeps the last `RETAINED` plans and their intents.
    fn forget_before(&self, batch: u64) {
        if batch >= RETAINED {
            let old = batch - RETAINED;
            let _ = std::fs::remove_file(self.file(old));
            let _ = std::fs::remove_file(self.intents(old));
        }
    }

    fn read(&self, batch: u64) -> Result<BatchPlan> {
        let path = self.file(batch);
        let body = std::fs::read(&path).map_err(|e| err(&path, e))?;
        serde_json::from_slice(&body).map_err(|e| EngineError::OffsetLog {
            path: path.display().to_string(),
            message: format!("unreadable plan: {e}"),
        })
    }

    fn intents(&self, batch: u64) -> PathBuf {
        self.dir.join(format!("{batch:020}.files"))
    }

    /// Where the data files of `batch` are announced before they are written.
    pub fn intent(&self, batch: u64) -> FileIntents {
        FileIntents {
            path: self.intents(batch),
        }
    }

    /// The data files announced for `batch`, by table URI.
    pub fn announced(&self, batch: u64) -> Result<BTreeMap<String, Vec<String>>> {
        let path = self.intents(batch);
        let body = match std::fs::read_to_string(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(err(&path, e)),
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // A line cut short by a crash is no announcement: its file was never written.
        for line in body.lines() {
            if let Some((table, file)) = line.split_once('\t') {
                out.entry(table.to_string())
                    .or_default()
                    .push(file.to_string());
            }
        }
        Ok(out)
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
        newest.map(|id| self.read(id)).transpose()
    }
}

/// Appends `<table>\t<path>` lines, fsynced, before each data file is written.
pub struct FileIntents {
    path: PathBuf,
}

impl FileIntent for FileIntents {
    fn announce(&self, table_uri: &str, path: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(format!("{table_uri}\t{path}\n").as_bytes())?;
        f.sync_data()
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
            assert_eq!(log.record(&plan).unwrap(), None);
        }
        let again = OffsetLog::open(&loc, "topic").unwrap();
        let latest = again.latest().unwrap().unwrap();
        assert_eq!(latest.batch_id, 2);
        assert_eq!(latest.end_offsets[&0], 21);
        // Another plan for batch 2 is refused, and the recorded one returned.
        let mut rival = latest.clone();
        rival.end_offsets.insert(0, 99);
        assert_eq!(again.record(&rival).unwrap(), Some(latest));
        assert_eq!(again.latest().unwrap().unwrap().end_offsets[&0], 21);
        again.adopt(&rival).unwrap();
        assert_eq!(again.latest().unwrap().unwrap().end_offsets[&0], 99);
    }

    #[test]
    fn announced_files_survive_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = OffsetLog::open(&dir.path().display().to_string(), "topic").unwrap();
        let intent = log.intent(7);
        intent
            .announce("file:///t", "date=2026-01-01/part-a.parquet")
            .unwrap();
        intent.announce("file:///d", "part-b.parquet").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("offsets/topic/00000000000000000007.files"))
            .unwrap();
        f.write_all(b"file:///t").unwrap();
        let announced = log.announced(7).unwrap();
        assert_eq!(
            announced["file:///t"],
            vec!["date=2026-01-01/part-a.parquet".to_string()]
        );
        assert_eq!(announced["file:///d"], vec!["part-b.parquet".to_string()]);
        assert!(log.announced(8).unwrap().is_empty());
    }
}
