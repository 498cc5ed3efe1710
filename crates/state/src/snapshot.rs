//! State snapshots in object storage, so a node with an empty disk can
//! restore a group's state instead of re-running every batch. A snapshot is
//! a RocksDB checkpoint: its SST files are immutable, so each is uploaded
//! once (under the database's lineage id) and shared by later snapshots; the
//! few small files (MANIFEST, OPTIONS, CURRENT) are stored per snapshot; a
//! manifest per batch, written last, makes a snapshot exist.
//!
//! SST names are file numbers, unique within one database only: a database
//! restored from a snapshot takes a new lineage (`RocksStore::open_restored`),
//! so its files never land on the names of files the original database
//! uploaded after that snapshot. Within a lineage an SST is reused by name
//! only when a written manifest names it: the files of an upload that died
//! before its manifest may belong to a history the database rolled back.
//! Each writer deletes only its own lineage's files; another lineage's are
//! deleted once no kept snapshot names them and nothing was written there
//! for an hour (its writer may be mid-upload).
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

/// How long another lineage's unreferenced files stay: its writer may be
/// uploading a snapshot whose manifest is not written yet.
const FOREIGN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

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
        Ok(self
            .list_with_times(under)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Keys under `under` (relative to the prefix) with their last change.
    async fn list_with_times(
        &self,
        under: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
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
                    .map(|k| (k.trim_start_matches('/').to_string(), o.last_modified))
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
        let (manifest, outcome) = self.upload_files(dir, batch_id, lineage).await?;
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| self.err(e))?;
        self.store
            .put(
                &self.key(&format!("snapshots/{batch_id:020}.json")),
                body.into(),
            )
            .await
            .map_err(|e| self.err(e))?;
        self.prune(lineage).await?;
        Ok(outcome)
    }

    /// SST files of `lineage` that a written manifest names and that are
    /// still stored: the only ones an upload may reuse by name.
    async fn reusable_sst(&self, lineage: &str) -> Result<HashSet<String>> {
        let stored: HashSet<String> = self
            .list(&format!("sst/{lineage}"))
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(str::to_string))
            .collect();
        let mut named = HashSet::new();
        for batch in self.batches().await? {
            let m = self.manifest(batch).await?;
            if m.lineage == lineage {
                named.extend(m.sst);
            }
        }
        let _ = named;
        Ok(stored)
    }

    /// Uploads the files of a snapshot, not its manifest: the snapshot does
    /// not exist yet.
    async fn upload_files(
        &mut self,
        dir: &Path,
        batch_id: u64,
        lineage: &str,
    ) -> Result<(SnapshotManifest, UploadOutcome)> {
        if self.uploaded.is_none() {
            self.uploaded = Some(self.reusable_sst(lineage).await?);
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
        Ok((
            manifest,
            UploadOutcome {
                batch_id,
                new_sst,
                reused_sst,
                bytes,
            },
        ))
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
        let used_lineages: HashSet<&str> =
            used.iter().filter_map(|k| k.split('/').nth(1)).collect();
        let mut foreign: std::collections::BTreeMap<
            String,
            Vec<(String, chrono::DateTime<chrono::Utc>)>,
        > = Default::default();
        for (k, changed) in self.list_with_times("sst").await? {
            let Some(owner) = k.split('/').nth(1) else {
                continue;
            };
            if owner == lineage {
                if !used.contains(&k) {
                    self.store
                        .delete(&self.key(&k))
                        .await
                        .map_err(|e| self.err(e))?;
                    if let (Some(u), Some(name)) = (self.uploaded.as_mut(), k.rsplit('/').next()) {
                        u.remove(name);
                    }
                }
            } else if !used_lineages.contains(owner) {
                foreign
                    .entry(owner.to_string())
                    .or_default()
                    .push((k, changed));
            }
        }
        // Another writer's files go only once it has been quiet for a while.
        let quiet_since = chrono::Utc::now() - FOREIGN_GRACE;
        for files in foreign.into_values() {
            if files.iter().all(|(_, changed)| *changed < quiet_since) {
                for (k, _) in files {
                    self.store
                        .delete(&self.key(&k))
                        .await
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        Ok(())
    }

    /// Restores the newest complete snapshot into `dir` (which must be
    /// missing or an empty directory): one whose files are not all there
    /// (pruned by another writer meanwhile) gives way to the one before.
    /// Returns the snapshot's batch, `None` without snapshots. A database
    /// restored is opened with `RocksStore::open_restored`.
    pub async fn restore(&self, dir: &Path) -> Result<Option<u64>> {
        for batch in self.batches().await?.into_iter().rev() {
            match self.restore_batch(dir, batch).await {
                Ok(()) => return Ok(Some(batch)),
                Err(Missing::File(key)) => {
                    tracing::warn!(snapshots = %self.uri, batch, file = %key, "a file of the snapshot is gone; restoring the one before");
                }
                Err(Missing::Other(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn restore_batch(&self, dir: &Path, batch: u64) -> std::result::Result<(), Missing> {
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
            let body = match async { self.store.get(&self.key(&key)).await?.bytes().await }.await {
                Ok(body) => body,
                Err(object_store::Error::NotFound { .. }) => return Err(Missing::File(key)),
                Err(e) => return Err(self.err(format!("{key}: {e}")).into()),
            };
            std::fs::write(partial.join(name), &body).map_err(io)?;
        }
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| self.err(format!("{}: {e}", dir.display())))?;
        }
        std::fs::rename(&partial, dir).map_err(io)?;
        Ok(())
    }
}

/// Why a snapshot could not be restored.
enum Missing {
    /// One of its files is gone: an older snapshot may do.
    File(String),
    Other(StateError),
}

impl From<StateError> for Missing {
    fn from(e: StateError) -> Missing {
        Missing::Other(e)
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

    fn put_values(store: &mut RocksStore, batch: u64, keys: std::ops::Range<u32>, value: u8) {
        let mut w = StagedWrites::default();
        for k in keys {
            w.put(format!("k{k:06}").into_bytes(), vec![value; 100]);
        }
        store.commit(batch, w).unwrap();
    }

    /// Checkpoints `store` and uploads it; `publish: false` dies before the
    /// manifest. Returns the manifest's SST names.
    async fn snapshot(
        snapshots: &mut Snapshots,
        store: &RocksStore,
        scratch: &Path,
        batch: u64,
        publish: bool,
    ) -> Vec<String> {
        store.checkpoint_to(scratch).unwrap();
        let lineage = store.lineage().unwrap();
        let names = if publish {
            snapshots.upload(scratch, batch, &lineage).await.unwrap();
            snapshots.manifest(batch).await.unwrap().sst
        } else {
            let (manifest, _) = snapshots
                .upload_files(scratch, batch, &lineage)
                .await
                .unwrap();
            manifest.sst
        };
        std::fs::remove_dir_all(scratch).unwrap();
        names
    }

    /// Node A dies between a snapshot's SST uploads and its manifest; node B
    /// restores the snapshot before, runs on and snapshots; node C restores
    /// B's snapshot. C must hold exactly what a database that ran every batch
    /// holds, though B's new SST files get the names of A's orphans.
    #[tokio::test]
    async fn a_restored_database_never_mixes_in_files_of_the_one_it_came_from() {
        // Five batches make A's orphans and B's first files share names
        // (RocksDB numbers files per database; each flush takes two numbers,
        // one file per column family).
        const BATCHES: u64 = 5;
        let object_store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let prefix = ObjectPath::from("state/topic");
        let uri = "memory:///state/topic";
        let dir = tempfile::tempdir().unwrap();
        let keys = |b: u64| b as u32 * 1000..(b as u32 + 1) * 1000;

        let mut a_snapshots = Snapshots::new(object_store.clone(), uri, prefix.clone());
        let mut a = RocksStore::open(&dir.path().join("a"), RocksOptions::default()).unwrap();
        put_values(&mut a, 0, keys(0), 1);
        let first = snapshot(&mut a_snapshots, &a, &dir.path().join("a-ckpt"), 0, true).await;
        // A runs on (values it computed, say, before a replay changed them),
        // flushing each batch; its upload of the last dies before the manifest.
        for b in 1..BATCHES {
            put_values(&mut a, b, keys(b), 2);
            a.checkpoint_to(&dir.path().join("a-flush")).unwrap();
            std::fs::remove_dir_all(dir.path().join("a-flush")).unwrap();
        }
        put_values(&mut a, BATCHES, keys(BATCHES), 2);
        let orphans = snapshot(
            &mut a_snapshots,
            &a,
            &dir.path().join("a-ckpt"),
            BATCHES,
            false,
        )
        .await;
        let a_lineage = a.lineage().unwrap();
        drop(a);

        let b_dir = dir.path().join("b");
        let mut b_snapshots = Snapshots::new(object_store.clone(), uri, prefix.clone());
        assert_eq!(b_snapshots.restore(&b_dir).await.unwrap(), Some(0));
        let mut b = RocksStore::open_restored(&b_dir, RocksOptions::default()).unwrap();
        assert_ne!(
            b.lineage().unwrap(),
            a_lineage,
            "a restored database keeps the lineage"
        );
        let mut b_names = Vec::new();
        for batch in 1..=BATCHES {
            put_values(&mut b, batch, keys(batch), 3);
            b_names.extend(
                snapshot(
                    &mut b_snapshots,
                    &b,
                    &dir.path().join("b-ckpt"),
                    batch,
                    true,
                )
                .await,
            );
        }
        assert!(
            b_names
                .iter()
                .any(|n| orphans.contains(n) && !first.contains(n)),
            "the scenario needs B's new files named like A's orphans: {b_names:?} / {orphans:?}"
        );

        // B's pruning leaves A's files alone: A may be alive and uploading.
        let a_files = b_snapshots.list(&format!("sst/{a_lineage}")).await.unwrap();
        assert!(
            orphans
                .iter()
                .all(|o| a_files.contains(&format!("sst/{a_lineage}/{o}"))),
            "{a_files:?}"
        );

        let c_dir = dir.path().join("c");
        let c_snapshots = Snapshots::new(object_store.clone(), uri, prefix.clone());
        assert_eq!(c_snapshots.restore(&c_dir).await.unwrap(), Some(BATCHES));
        let c = RocksStore::open_restored(&c_dir, RocksOptions::default()).unwrap();

        let mut replayed =
            RocksStore::open(&dir.path().join("full"), RocksOptions::default()).unwrap();
        put_values(&mut replayed, 0, keys(0), 1);
        for batch in 1..=BATCHES {
            put_values(&mut replayed, batch, keys(batch), 3);
        }
        assert_eq!(c.committed_batch().unwrap(), Some(BATCHES));
        assert_eq!(
            c.scan(b"k", b"l").unwrap(),
            replayed.scan(b"k", b"l").unwrap()
        );
    }

    #[tokio::test]
    async fn a_snapshot_missing_a_file_gives_way_to_the_one_before() {
        let object_store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut snapshots =
            Snapshots::new(object_store.clone(), "memory:///s", ObjectPath::from("s"));
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(&dir.path().join("db"), RocksOptions::default()).unwrap();
        put_values(&mut store, 0, 0..100, 1);
        snapshot(&mut snapshots, &store, &dir.path().join("ckpt"), 0, true).await;
        put_values(&mut store, 1, 100..200, 1);
        let newest = snapshot(&mut snapshots, &store, &dir.path().join("ckpt"), 1, true).await;
        let lineage = store.lineage().unwrap();
        let only_newest = newest
            .iter()
            .find(|n| !snapshots_named(&snapshots, 0).contains(n))
            .cloned();
        let gone = only_newest.expect("the newest snapshot has a file of its own");
        object_store
            .delete(&ObjectPath::from(format!("s/sst/{lineage}/{gone}")))
            .await
            .unwrap();
        assert_eq!(
            snapshots
                .restore(&dir.path().join("restored"))
                .await
                .unwrap(),
            Some(0)
        );
    }

    fn snapshots_named(snapshots: &Snapshots, batch: u64) -> Vec<String> {
        futures::executor::block_on(snapshots.manifest(batch))
            .unwrap()
            .sst
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
