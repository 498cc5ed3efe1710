//! State snapshots in object storage, so a node with an empty disk can
//! restore a group's state instead of re-running every batch. A snapshot is
//! a RocksDB checkpoint: its SST files are immutable, so each is uploaded
//! once (under the database's lineage id) and shared by later snapshots; the
//! few small files (MANIFEST, OPTIONS, CURRENT) are stored per snapshot; a
//! manifest per batch, written last, makes a snapshot exist.
//!
//! Layout under the group's prefix:
//! `sst/<lineage>/<n>.sst`, `snapshots/<batch>/<file>`, `snapshots/<batch>.json`.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

use crate::{Result, StateError};

/// Snapshots kept; older ones (and SST files only they use) are deleted.
const KEPT: usize = 2;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotManifest {
    /// The last batch whose state the snapshot holds.
    pub batch_id: u64,
    /// The database the SST files belong to (`sst/<lineage>/`).
    pub lineage: String,
    pub sst: Vec<String>,
    /// Small files stored with this snapshot.
    pub files: Vec<String>,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    pub batch_id: u64,
    /// SST files uploaded now, and those an earlier snapshot uploaded.
    pub new_sst: usize,
    pub reused_sst: usize,
    pub bytes: u64,
}

/// The snapshots of one state group.
pub struct Snapshots {
    store: Arc<dyn ObjectStore>,
    /// For messages: the URI of the prefix.
    uri: String,
    prefix: ObjectPath,
    /// SST objects known to exist (listed at the first upload).
    uploaded: Option<HashSet<String>>,
}

impl Snapshots {
    pub fn new(store: Arc<dyn ObjectStore>, uri: &str, prefix: ObjectPath) -> Snapshots {
        Snapshots {
            store,
            uri: uri.to_string(),
            prefix,
            uploaded: None,
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> StateError {
        StateError::Snapshot {
            uri: self.uri.clone(),
            message: what.to_string(),
        }
    }

    fn key(&self, rest: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in rest.split('/') {
            key = key.join(part);
        }
        key
    }

    async fn list(&self, under: &str) -> Result<Vec<String>> {
        let prefix = self.key(under);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                o.location
                    .as_ref()
                    .strip_prefix(self.prefix.as_ref())
                    .map(|k| k.trim_start_matches('/').to_string())
            })
            .collect())
    }

    /// The batches of complete snapshots, oldest first.
    pub async fn batches(&self) -> Result<Vec<u64>> {
        let mut out: Vec<u64> = self
            .list("snapshots")
            .await?
            .iter()
            .filter_map(|k| {
                k.strip_prefix("snapshots/")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    async fn manifest(&self, batch: u64) -> Result<SnapshotManifest> {
        let key = self.key(&format!("snapshots/{batch:020}.json"));
        let body = async { self.store.get(&key).await?.bytes().await }
            .await
            .map_err(|e| self.err(e))?;
        serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("manifest of batch {batch}: {e}")))
    }

    /// Uploads the checkpoint in `dir` (made by [`crate::RocksStore::checkpoint_to`])
    /// as the snapshot of `batch_id`, then prunes old snapshots.
    pub async fn upload(
        &mut self,
        dir: &Path,
        batch_id: u64,
        lineage: &str,
    ) -> Result<UploadOutcome> {
        if self.uploaded.is_none() {
            let known: HashSet<String> = self
                .list(&format!("sst/{lineage}"))
                .await?
                .into_iter()
                .filter_map(|k| k.rsplit('/').next().map(str::to_string))
                .collect();
            self.uploaded = Some(known);
        }
        let mut manifest = SnapshotManifest {
            batch_id,
            lineage: lineage.to_string(),
            sst: Vec::new(),
            files: Vec::new(),
        };
        let (mut new_sst, mut reused_sst, mut bytes) = (0, 0, 0u64);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| self.err(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let is_sst = name.ends_with(".sst");
            let key = if is_sst {
                if self.uploaded.as_ref().is_some_and(|u| u.contains(&name)) {
                    reused_sst += 1;
                    manifest.sst.push(name);
                    continue;
                }
                format!("sst/{lineage}/{name}")
            } else {
                format!("snapshots/{batch_id:020}/{name}")
            };
            let body = std::fs::read(dir.join(&name))
                .map_err(|e| self.err(format!("{}: {e}", dir.join(&name).display())))?;
            bytes += body.len() as u64;
            self.store
                .put(&self.key(&key), body.into())
                .await
                .map_err(|e| self.err(e))?;
            if is_sst {
                new_sst += 1;
                if let Some(u) = self.uploaded.as_mut() {
                    u.insert(name.clone());
                }
                manifest.sst.push(name);
            } else {
                manifest.files.push(name);
            }
        }
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| self.err(e))?;
        self.store
            .put(
                &self.key(&format!("snapshots/{batch_id:020}.json")),
                body.into(),
            )
            .await
            .map_err(|e| self.err(e))?;
        self.prune(lineage).await?;
        Ok(UploadOutcome {
            batch_id,
            new_sst,
            reused_sst,
            bytes,
        })
    }

    /// Keeps the newest snapshots and the SST files they use.
    async fn prune(&mut self, lineage: &str) -> Result<()> {
        let batches = self.batches().await?;
        if batches.len() <= KEPT {
            return Ok(());
        }
        let (old, kept) = batches.split_at(batches.len() - KEPT);
        let mut used: BTreeSet<String> = BTreeSet::new();
        for b in kept {
            let m = self.manifest(*b).await?;
            used.extend(m.sst.iter().map(|s| format!("sst/{}/{s}", m.lineage)));
        }
        for b in old {
            // The manifest goes first: a snapshot never lacks a file it names.
            let doomed = self.key(&format!("snapshots/{b:020}.json"));
            self.store.delete(&doomed).await.map_err(|e| self.err(e))?;
            for k in self.list(&format!("snapshots/{b:020}")).await? {
                self.store
                    .delete(&self.key(&k))
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        for k in self.list(&format!("sst/{lineage}")).await? {
            if !used.contains(&k) {
                self.store
                    .delete(&self.key(&k))
                    .await
                    .map_err(|e| self.err(e))?;
                if let (Some(u), Some(name)) = (self.uploaded.as_mut(), k.rsplit('/').next()) {
                    u.remove(name);
                }
            }
        }
        Ok(())
    }

    /// Restores the newest snapshot into `dir` (which must be missing or an
    /// empty directory). Returns the snapshot's batch, `None` without snapshots.
    pub async fn restore(&self, dir: &Path) -> Result<Option<u64>> {
        let Some(batch) = self.batches().await?.last().copied() else {
            return Ok(None);
        };
        let manifest = self.manifest(batch).await?;
        // Downloaded aside and renamed into place: an interrupted restore
        // leaves no half database behind.
        let partial = dir.with_extension("restoring");
        let io = |e: std::io::Error| self.err(format!("{}: {e}", partial.display()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io)?;
        }
        std::fs::create_dir_all(&partial).map_err(io)?;
        let sources = manifest
            .sst
            .iter()
            .map(|s| (s, format!("sst/{}/{s}", manifest.lineage)))
            .chain(
                manifest
                    .files
                    .iter()
                    .map(|f| (f, format!("snapshots/{batch:020}/{f}"))),
            );
        for (name, key) in sources {
            let body = async { self.store.get(&self.key(&key)).await?.bytes().await }
                .await
                .map_err(|e| self.err(format!("{key}: {e}")))?;
            std::fs::write(partial.join(name), &body).map_err(io)?;
        }
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| self.err(format!("{}: {e}", dir.display())))?;
        }
        std::fs::rename(&partial, dir).map_err(io)?;
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RocksOptions, RocksStore, StagedWrites, StateStore};

    fn put(store: &mut RocksStore, batch: u64, keys: std::ops::Range<u32>) {
        let mut w = StagedWrites::default();
        for k in keys {
            w.put(format!("k{k:06}").into_bytes(), vec![7; 100]);
        }
        store.commit(batch, w).unwrap();
    }

    #[tokio::test]
    async fn snapshots_upload_new_files_only_and_restore_onto_an_empty_disk() {
        let object_store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut snapshots = Snapshots::new(
            object_store.clone(),
            "memory:///state/topic",
            ObjectPath::from("state/topic"),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(&dir.path().join("db"), RocksOptions::default()).unwrap();
        let lineage = store.lineage().unwrap();
        let mut outcomes = Vec::new();
        for batch in 0..4u64 {
            put(
                &mut store,
                batch,
                batch as u32 * 1000..(batch as u32 + 1) * 1000,
            );
            let scratch = dir.path().join(format!("ckpt-{batch}"));
            store.checkpoint_to(&scratch).unwrap();
            outcomes.push(snapshots.upload(&scratch, batch, &lineage).await.unwrap());
            std::fs::remove_dir_all(&scratch).unwrap();
        }
        // Each snapshot uploads what its batch flushed (one file per column
        // family: data and meta) and reuses what earlier snapshots uploaded.
        assert!(
            outcomes.iter().all(|o| (1..=2).contains(&o.new_sst)),
            "{outcomes:?}"
        );
        assert!(
            outcomes[1..].iter().all(|o| o.reused_sst >= 1),
            "{outcomes:?}"
        );
        // Two snapshots kept; SSTs only older ones used are gone.
        assert_eq!(snapshots.batches().await.unwrap(), vec![2, 3]);
        let newest = snapshots.manifest(3).await.unwrap();
        let ssts = snapshots.list(&format!("sst/{lineage}")).await.unwrap();
        for s in &newest.sst {
            assert!(ssts.contains(&format!("sst/{lineage}/{s}")));
        }

        // A node with an empty disk.
        let fresh = tempfile::tempdir().unwrap();
        let restored_dir = fresh.path().join("db");
        assert_eq!(snapshots.restore(&restored_dir).await.unwrap(), Some(3));
        let restored = RocksStore::open(&restored_dir, RocksOptions::default()).unwrap();
        assert_eq!(restored.committed_batch().unwrap(), Some(3));
        assert_eq!(restored.lineage().unwrap(), lineage);
        let all = restored.scan(b"k", b"l").unwrap();
        assert_eq!(all.len(), 4000);
        assert_eq!(all, store.scan(b"k", b"l").unwrap());
    }

    #[tokio::test]
    async fn no_snapshot_restores_nothing() {
        let object_store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let snapshots = Snapshots::new(object_store, "memory:///s", ObjectPath::from("s"));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            snapshots.restore(&dir.path().join("db")).await.unwrap(),
            None
        );
    }
}
