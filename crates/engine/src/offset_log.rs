//! The offsets log (Spark's `checkpoint/offsets`): one file per planned batch,
//! written and fsynced before anything of the batch reaches a table. A
//! recorded batch is always re-run with exactly its ranges; an unrecorded one
//! never happened.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};
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
    /// Which records went to the dead-letter table, and why: a replay sends
    /// exactly these there, whatever the registry answers by then. `None`
    /// in plans that do not record them (older ones, or rebuilt from a
    /// table commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_records: Option<Vec<RecordedDeadLetter>>,
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

pub struct OffsetLog {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// A local directory: plans are written aside, fsynced and hard-linked
    /// into place; intents are appended to one fsynced file per batch.
    Local { dir: PathBuf },
    /// An object store (`s3://`): plans are created with put-if-absent, and
    /// every announced file is an object of its own under `<batch>.files/`.
    Object {
        store: Arc<dyn ObjectStore>,
        /// `<checkpoint>/offsets/<group>`, for messages.
        uri: String,
        prefix: ObjectPath,
    },
}

impl OffsetLog {
    /// Opens the log for reading only: a local checkpoint without the
    /// group's log is no log (nothing is created); opening one on an object
    /// store creates nothing either.
    pub async fn open_existing(
        checkpoint: &str,
        storage_options: &BTreeMap<String, String>,
        group: &str,
    ) -> Result<Option<OffsetLog>> {
        let on_object_store = checkpoint.starts_with("s3://") || checkpoint.starts_with("s3a://");
        let local = Path::new(checkpoint.strip_prefix("file://").unwrap_or(checkpoint));
        if !on_object_store && !local.join("offsets").join(group).is_dir() {
            return Ok(None);
        }
        Self::open(checkpoint, storage_options, group)
            .await
            .map(Some)
    }

    /// `checkpoint` is the spec's checkpoint location (`file://` URI, path
    /// or `s3://` URI); `storage_options` configure an object store.
    pub async fn open(
        checkpoint: &str,
        storage_options: &BTreeMap<String, String>,
        group: &str,
    ) -> Result<OffsetLog> {
        if checkpoint.starts_with("s3://") || checkpoint.starts_with("s3a://") {
            let store =
                tributary_delta::object_store_for(checkpoint, storage_options).map_err(|e| {
                    EngineError::OffsetLog {
                        path: checkpoint.to_string(),
                        message: e.to_string(),
                    }
                })?;
            return Ok(OffsetLog::on_store(store, checkpoint, group));
        }
        let root = checkpoint.strip_prefix("file://").unwrap_or(checkpoint);
        let dir = Path::new(root).join("offsets").join(group);
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
        Ok(OffsetLog {
            backend: Backend::Local { dir },
        })
    }

    /// The log of `group` in an object store rooted at the checkpoint location.
    pub fn on_store(store: Arc<dyn ObjectStore>, checkpoint: &str, group: &str) -> OffsetLog {
        OffsetLog {
            backend: Backend::Object {
                store,
                uri: format!("{}/offsets/{group}", checkpoint.trim_end_matches('/')),
                prefix: ObjectPath::from(format!("offsets/{group}")),
            },
        }
    }

    /// Records a new plan durably, only if no plan with its id exists: two
    /// instances can never record different plans for one batch. The plan
    /// appears whole or not at all. Returns the plan already recorded, if any.
    pub async fn record(&self, plan: &BatchPlan) -> Result<Option<BatchPlan>> {
        match &self.backend {
            Backend::Local { dir } => {
                // Written aside, fsynced, linked into place, directory fsynced.
                let target = plan_file(dir, plan.batch_id);
                let tmp = write_aside(dir, plan)?;
                let linked = std::fs::hard_link(&tmp, &target);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return self.read(plan.batch_id).await.map(Some);
                    }
                    Err(e) => return Err(err(&target, e)),
                }
                sync_dir(dir)?;
            }
            Backend::Object { store, uri, prefix } => {
                let key = plan_key(prefix, plan.batch_id);
                let options = PutOptions::from(PutMode::Create);
                match store.put_opts(&key, plan_body(plan)?.into(), options).await {
                    Ok(_) => {}
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        return self.read(plan.batch_id).await.map(Some);
                    }
                    Err(e) => return Err(store_err(uri, &key, e)),
                }
            }
        }
        self.forget_before(plan.batch_id).await;
        Ok(None)
    }

    /// Replaces the plan of a batch by the one a table recorded for it (an
    /// instance that lost a race adopts the winner's batch).
    pub async fn adopt(&self, plan: &BatchPlan) -> Result<()> {
        match &self.backend {
            Backend::Local { dir } => {
                let target = plan_file(dir, plan.batch_id);
                let tmp = write_aside(dir, plan)?;
                std::fs::rename(&tmp, &target).map_err(|e| err(&target, e))?;
                sync_dir(dir)
            }
            Backend::Object { store, uri, prefix } => {
                let key = plan_key(prefix, plan.batch_id);
                store
                    .put(&key, plan_body(plan)?.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| store_err(uri, &key, e))
            }
        }
    }

    /// Keeps the last `RETAINED` plans and their intents.
    async fn forget_before(&self, batch: u64) {
        let Some(old) = batch.checked_sub(RETAINED) else {
            return;
        };
        match &self.backend {
            Backend::Local { dir } => {
                let _ = std::fs::remove_file(plan_file(dir, old));
                let _ = std::fs::remove_file(intents_file(dir, old));
            }
            Backend::Object { store, prefix, .. } => {
                let _ = store.delete(&plan_key(prefix, old)).await;
                let intents = intents_prefix(prefix, old);
                let keys: Vec<ObjectPath> = store
                    .list(Some(&intents))
                    .filter_map(|m| async move { m.ok().map(|m| m.location) })
                    .collect()
                    .await;
                for key in keys {
                    let _ = store.delete(&key).await;
                }
            }
        }
    }

    /// The plan of `batch`, if the log still holds it.
    pub async fn plan(&self, batch: u64) -> Result<Option<BatchPlan>> {
        let exists = match &self.backend {
            Backend::Local { dir } => plan_file(dir, batch).exists(),
            Backend::Object { store, uri, prefix } => {
                let key = plan_key(prefix, batch);
                match store.head(&key).await {
                    Ok(_) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(store_err(uri, &key, e)),
                }
            }
        };
        if exists {
            self.read(batch).await.map(Some)
        } else {
            Ok(None)
        }
    }

    async fn read(&self, batch: u64) -> Result<BatchPlan> {
        let (name, body) = match &self.backend {
            Backend::Local { dir } => {
                let path = plan_file(dir, batch);
                let body = std::fs::read(&path).map_err(|e| err(&path, e))?;
                (path.display().to_string(), body)
            }
            Backend::Object { store, uri, prefix } => {
                let key = plan_key(prefix, batch);
                let body = async { store.get(&key).await?.bytes().await }
                    .await
                    .map_err(|e| store_err(uri, &key, e))?;
                (
                    format!("{uri}/{}", key.filename().unwrap_or_default()),
                    body.to_vec(),
                )
            }
        };
        serde_json::from_slice(&body).map_err(|e| EngineError::CorruptPlan {
            path: name,
            message: e.to_string(),
        })
    }

    /// Where the data files of `batch` are announced before they are written.
    pub fn intent(&self, batch: u64) -> FileIntents {
        FileIntents {
            backend: self.backend.clone(),
            batch,
        }
    }

    /// The data files announced for `batch`, by table URI.
    pub async fn announced(&self, batch: u64) -> Result<BTreeMap<String, Vec<String>>> {
        let lines: Vec<String> = match &self.backend {
            Backend::Local { dir } => {
                let path = intents_file(dir, batch);
                match std::fs::read_to_string(&path) {
                    Ok(b) => b.lines().map(str::to_string).collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(err(&path, e)),
                }
            }
            Backend::Object { store, uri, prefix } => {
                let intents = intents_prefix(prefix, batch);
                let mut lines = Vec::new();
                let mut listing = store.list(Some(&intents));
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| store_err(uri, &intents, e))?;
                    let body = async { store.get(&meta.location).await?.bytes().await }
                        .await
                        .map_err(|e| store_err(uri, &meta.location, e))?;
                    lines.push(String::from_utf8_lossy(&body).into_owned());
                }
                lines
            }
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // A line cut short by a crash is no announcement: its file was never written.
        for line in &lines {
            if let Some((table, file)) = line.split_once('\t') {
                out.entry(table.to_string())
                    .or_default()
                    .push(file.to_string());
            }
        }
        Ok(out)
    }

    /// The newest recorded plan.
    pub async fn latest(&self) -> Result<Option<BatchPlan>> {
        match self.recorded_batches().await?.last() {
            Some(id) => self.read(*id).await.map(Some),
            None => Ok(None),
        }
    }

    /// The ids of the plans the log holds, in order.
    pub async fn recorded_batches(&self) -> Result<Vec<u64>> {
        let names: Vec<String> = match &self.backend {
            Backend::Local { dir } => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
                    let name = entry.map_err(|e| err(dir, e))?.file_name();
                    names.extend(name.to_str().map(str::to_string));
                }
                names
            }
            Backend::Object { store, uri, prefix } => {
                // One level only: the intents under `<batch>.files/` are not listed.
                let listing = store
                    .list_with_delimiter(Some(prefix))
                    .await
                    .map_err(|e| store_err(uri, prefix, e))?;
                listing
                    .objects
                    .iter()
                    .filter_map(|m| m.location.filename().map(str::to_string))
                    .collect()
            }
        };
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

fn plan_file(dir: &Path, batch: u64) -> PathBuf {
    dir.join(format!("{batch:020}.json"))
}

fn intents_file(dir: &Path, batch: u64) -> PathBuf {
    dir.join(format!("{batch:020}.files"))
}

fn plan_key(prefix: &ObjectPath, batch: u64) -> ObjectPath {
    prefix.clone().join(format!("{batch:020}.json"))
}

fn intents_prefix(prefix: &ObjectPath, batch: u64) -> ObjectPath {
    prefix.clone().join(format!("{batch:020}.files"))
}

fn plan_body(plan: &BatchPlan) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(plan).map_err(|e| EngineError::Internal(e.to_string()))
}

fn write_aside(dir: &Path, plan: &BatchPlan) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{:020}.{}.tmp", plan.batch_id, std::process::id()));
    let body = plan_body(plan)?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&tmp, e))?;
    Ok(tmp)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

/// Announces data files before they are written: a fsynced line per file in
/// a local log, or an object per file in an object store.
pub struct FileIntents {
    backend: Backend,
    batch: u64,
}

#[async_trait::async_trait]
impl FileIntent for FileIntents {
    async fn announce(&self, table_uri: &str, path: &str) -> std::io::Result<()> {
        let line = format!("{table_uri}\t{path}");
        match &self.backend {
            Backend::Local { dir } => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(intents_file(dir, self.batch))?;
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            }
            Backend::Object { store, prefix, .. } => {
                // A fresh key per announcement: attempts never overwrite each other's.
                let key = intents_prefix(prefix, self.batch).join(uuid::Uuid::new_v4().to_string());
                store
                    .put(&key, line.into_bytes().into())
                    .await
                    .map(|_| ())
                    .map_err(std::io::Error::other)
            }
        }
    }
}

fn store_err(uri: &str, key: &ObjectPath, e: object_store::Error) -> EngineError {
    EngineError::OffsetLog {
        path: format!("{uri} ({key})"),
        message: e.to_string(),
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
    use object_store::memory::InMemory;

    fn plan(id: u64, end: i64) -> BatchPlan {
        let mut ranges = OffsetRanges::new("t");
        ranges.record(0, end - 1);
        BatchPlan {
            batch_id: id,
            group: "topic".into(),
            ranges,
            end_offsets: BTreeMap::from([(0, end)]),
            dead_letters: 0,
            dead_letter_records: None,
        }
    }

    /// The contract both backends keep; `reopen` gives a second handle on
    /// the same log, as a restarted or a rival instance has.
    async fn plans_are_recorded_once_and_survive_reopen(
        log: OffsetLog,
        reopen: impl AsyncFn() -> OffsetLog,
    ) {
        assert_eq!(log.latest().await.unwrap(), None);
        for id in 0..3 {
            assert_eq!(
                log.record(&plan(id, id as i64 * 10 + 1)).await.unwrap(),
                None
            );
        }
        let again = reopen().await;
        let latest = again.latest().await.unwrap().unwrap();
        assert_eq!(latest.batch_id, 2);
        assert_eq!(latest.end_offsets[&0], 21);
        // Another plan for batch 2 is refused, and the recorded one returned.
        let rival = plan(2, 99);
        assert_eq!(again.record(&rival).await.unwrap(), Some(latest));
        assert_eq!(again.latest().await.unwrap().unwrap().end_offsets[&0], 21);
        again.adopt(&rival).await.unwrap();
        assert_eq!(log.latest().await.unwrap().unwrap().end_offsets[&0], 99);
    }

    async fn announcements_are_kept_per_batch_and_forgotten_with_it(log: OffsetLog) {
        let intent = log.intent(7);
        intent
            .announce("file:///t", "date=2026-01-01/part-a.parquet")
            .await
            .unwrap();
        intent
            .announce("file:///d", "part-b.parquet")
            .await
            .unwrap();
        let announced = log.announced(7).await.unwrap();
        assert_eq!(
            announced["file:///t"],
            vec!["date=2026-01-01/part-a.parquet".to_string()]
        );
        assert_eq!(announced["file:///d"], vec!["part-b.parquet".to_string()]);
        assert!(log.announced(8).await.unwrap().is_empty());
        // Recording batch 7 + RETAINED forgets batch 7's plan and intents.
        log.record(&plan(7, 1)).await.unwrap();
        log.record(&plan(7 + RETAINED, 2)).await.unwrap();
        assert!(log.announced(7).await.unwrap().is_empty());
        assert_eq!(log.latest().await.unwrap().unwrap().batch_id, 7 + RETAINED);
    }

    #[tokio::test]
    async fn local_plans_are_recorded_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let loc = format!("file://{}", dir.path().display());
        let none = BTreeMap::new();
        let log = OffsetLog::open(&loc, &none, "topic").await.unwrap();
        plans_are_recorded_once_and_survive_reopen(log, async || {
            OffsetLog::open(&loc, &none, "topic").await.unwrap()
        })
        .await;
    }

    #[tokio::test]
    async fn object_store_plans_are_recorded_once_and_survive_reopen() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = OffsetLog::on_store(store.clone(), "s3://b/c", "topic");
        plans_are_recorded_once_and_survive_reopen(log, async || {
            OffsetLog::on_store(store.clone(), "s3://b/c", "topic")
        })
        .await;
        let keys: Vec<String> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert!(keys.contains(&"offsets/topic/00000000000000000002.json".to_string()));
    }

    #[tokio::test]
    async fn local_announcements_are_kept_per_batch_and_forgotten_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = OffsetLog::open(&dir.path().display().to_string(), &BTreeMap::new(), "topic")
            .await
            .unwrap();
        announcements_are_kept_per_batch_and_forgotten_with_it(log).await;
    }

    #[tokio::test]
    async fn object_store_announcements_are_kept_per_batch_and_forgotten_with_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        announcements_are_kept_per_batch_and_forgotten_with_it(OffsetLog::on_store(
            store, "s3://b/c", "topic",
        ))
        .await;
    }

    #[tokio::test]
    async fn a_local_announcement_cut_short_by_a_crash_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let log = OffsetLog::open(&dir.path().display().to_string(), &BTreeMap::new(), "topic")
            .await
            .unwrap();
        log.intent(7)
            .announce("file:///t", "part-a.parquet")
            .await
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("offsets/topic/00000000000000000007.files"))
            .unwrap();
        f.write_all(b"file:///t").unwrap();
        let announced = log.announced(7).await.unwrap();
        assert_eq!(announced.len(), 1);
        assert_eq!(announced["file:///t"], vec!["part-a.parquet".to_string()]);
    }
}
