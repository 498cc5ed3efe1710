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
use tributary_delta::FileIntent;

use crate::contracts::PlanLog;
use crate::error::{EngineError, Result};
use crate::options::CheckpointStore;
use crate::plan::BatchPlan;

/// How many planned batches stay in the log (Spark's `minBatchesToRetain`).
const RETAINED: u64 = 100;

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
    pub fn open_existing(checkpoint: &CheckpointStore, group: &str) -> Result<Option<OffsetLog>> {
        if let CheckpointStore::Local(root) = checkpoint
            && !root.join("offsets").join(group).is_dir()
        {
            return Ok(None);
        }
        Self::open(checkpoint, group).map(Some)
    }

    /// The log of `group` at the checkpoint location.
    pub fn open(checkpoint: &CheckpointStore, group: &str) -> Result<OffsetLog> {
        match checkpoint {
            CheckpointStore::Object { store, uri } => {
                Ok(OffsetLog::on_store(store.clone(), uri, group))
            }
            CheckpointStore::Local(root) => {
                let dir = root.join("offsets").join(group);
                std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
                Ok(OffsetLog {
                    backend: Backend::Local { dir },
                })
            }
        }
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
        serde_json::from_slice(&body)
            .map_err(|source| EngineError::CorruptPlan { path: name, source })
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

#[async_trait::async_trait]
impl PlanLog for OffsetLog {
    /// Records a new plan durably, only if no plan with its id exists: two
    /// instances can never record different plans for one batch. The plan
    /// appears whole or not at all. Returns the plan already recorded, if any.
    async fn record(&self, plan: &BatchPlan) -> Result<Option<BatchPlan>> {
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
    async fn adopt(&self, plan: &BatchPlan) -> Result<()> {
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

    /// The plan of `batch`, if the log still holds it.
    async fn plan(&self, batch: u64) -> Result<Option<BatchPlan>> {
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

    /// Where the data files of `batch` are announced before they are written.
    fn intent(&self, batch: u64) -> Box<dyn FileIntent> {
        Box::new(FileIntents {
            backend: self.backend.clone(),
            batch,
        })
    }

    /// The data files announced for `batch`, by table URI.
    async fn announced(&self, batch: u64) -> Result<BTreeMap<String, Vec<String>>> {
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
    async fn latest(&self) -> Result<Option<BatchPlan>> {
        match self.recorded_batches().await?.last() {
            Some(id) => self.read(*id).await.map(Some),
            None => Ok(None),
        }
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
    Ok(serde_json::to_vec_pretty(plan)?)
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
struct FileIntents {
    backend: Backend,
    batch: u64,
}

#[async_trait::async_trait]
impl FileIntent for FileIntents {
    async fn announce(&self, table_uri: &str, path: &str) -> std::io::Result<()> {
        let line = format!("{table_uri}\t{path}");
        match &self.backend {
            Backend::Local { dir } => {
                let path = intents_file(dir, self.batch);
                let created = !path.exists();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()?;
                // A new file's name is durable only once its directory is.
                if created {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
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

fn store_err(uri: &str, key: &ObjectPath, source: object_store::Error) -> EngineError {
    EngineError::OffsetLogObject {
        path: format!("{uri} ({key})"),
        source,
    }
}

fn err(path: &Path, source: std::io::Error) -> EngineError {
    EngineError::OffsetLogFile {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
