use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DataBlockIndexType, Direction,
    FlushOptions, IteratorMode, Options, ReadOptions, WriteBatch, WriteBufferManager, WriteOptions,
};

use crate::{Result, StagedWrites, StateError, StateStore, Write, check_order};

const META: &str = "meta";
const COMMITTED_BATCH: &[u8] = b"committed_batch";
/// A random id given to a database when it is created, kept by its
/// snapshots: SST file names are unique only within one database.
const LINEAGE: &[u8] = b"lineage";

/// Memory RocksDB may use, shared by every store opened with clones of one
/// `RocksOptions` (every group of a process); state beyond it lives on disk.
///
/// Of `memory`: one LRU block cache of that size holds the data blocks read,
/// and the memtables being written are charged to it too, up to a quarter
/// of it (a write buffer manager flushes them beyond that). Outside the
/// budget, each store keeps the index and bloom filter blocks of the SST
/// files it has open, at most `max_open_files` (about 1.3 bytes per key for
/// the filters).
#[derive(Clone)]
pub struct RocksOptions {
    memory: usize,
    cache: Cache,
    write_buffers: WriteBufferManager,
    /// Size of one memtable of one store.
    write_buffer_size: usize,
    /// Most SST files each store keeps open.
    max_open_files: i32,
}

impl std::fmt::Debug for RocksOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksOptions")
            .field("memory", &self.memory)
            .field("write_buffer_size", &self.write_buffer_size)
            .field("max_open_files", &self.max_open_files)
            .finish()
    }
}

/// Default budget of a process's state stores.
pub const DEFAULT_STATE_MEMORY: usize = 512 << 20;

/// Most SST files one store keeps open (bounds its index and filter memory).
const MAX_OPEN_FILES: i32 = 256;

/// Commits between two flushes of the memtables: the most a crash can undo
/// (commits skip the WAL). Well under the offsets log's 100 retained plans,
/// from which recovery re-runs them.
pub const COMMITS_PER_FLUSH: u32 = 16;

/// Keys looked up by one batched call: its answers pin up to this many
/// blocks (4 KiB each) at once.
const MULTI_GET_CHUNK: usize = 4096;

impl RocksOptions {
    /// A budget of `memory` bytes for every store opened with a clone.
    pub fn with_memory(memory: usize) -> RocksOptions {
        let memory = memory.max(16 << 20);
        let cache = Cache::new_lru_cache(memory);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            memory / 4,
            // No stalls: an idle store holding memtables would stall every
            // other store's writers until it flushed, which it never does.
            false,
            cache.clone(),
        );
        RocksOptions {
            memory,
            cache,
            write_buffers,
            write_buffer_size: (memory / 16).min(32 << 20),
            max_open_files: MAX_OPEN_FILES,
        }
    }
}

impl Default for RocksOptions {
    fn default() -> RocksOptions {
        RocksOptions::with_memory(DEFAULT_STATE_MEMORY)
    }
}

/// A batch's writes encoded by [`RocksStore::prepare`], not yet applied.
pub struct PreparedWrites(WriteBatch);

/// State in RocksDB on local disk. Each commit is one `WriteBatch` holding
/// the batch's changes and its id, written to the memtables without a WAL:
/// it is durable once flushed, and every [`COMMITS_PER_FLUSH`]th commit
/// flushes. After a crash the store is at the last flushed commit, whole
/// (flushes are atomic across the column families), and recovery re-runs
/// the batches after it from their recorded offsets, as it re-runs a batch
/// whose state was never applied. Without the WAL's copy and checksums the
/// fraud example applies its state in about a third less time.
pub struct RocksStore {
    path: PathBuf,
    db: DB,
    /// Commits since the last flush.
    unflushed: u32,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens the store at `path`, creating it when missing.
    pub fn open(path: &Path, options: RocksOptions) -> Result<RocksStore> {
        let db = open_db(path, &options)?;
        let store = RocksStore {
            path: path.to_path_buf(),
            db,
            unflushed: 0,
        };
        store.ensure_lineage()?;
        Ok(store)
    }

    fn meta(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(META).ok_or_else(|| StateError::Corrupt {
            path: self.path.display().to_string(),
            message: "the meta column family is missing".into(),
        })
    }

    /// Opens a database just restored from a snapshot as a lineage of its
    /// own: its SST files from now on are not the files of the database
    /// the snapshot was taken from, though they may get the same names.
    pub fn open_restored(path: &Path, options: RocksOptions) -> Result<RocksStore> {
        let store = RocksStore::open(path, options)?;
        store.write_lineage()?;
        Ok(store)
    }

    fn write_lineage(&self) -> Result<()> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .put_cf_opt(&self.meta()?, LINEAGE, id, &sync)
            .map_err(self.err())
    }

    fn ensure_lineage(&self) -> Result<()> {
        let db = &self.db;
        if db
            .get_cf(&self.meta()?, LINEAGE)
            .map_err(self.err())?
            .is_none()
        {
            self.write_lineage()?;
        }
        Ok(())
    }

    /// The database's lineage id (see [`crate::Snapshots`]).
    pub fn lineage(&self) -> Result<String> {
        let v = self
            .db
            .get_cf(&self.meta()?, LINEAGE)
            .map_err(self.err())?
            .ok_or_else(|| StateError::Corrupt {
                path: self.path.display().to_string(),
                message: "the lineage id is missing".into(),
            })?;
        String::from_utf8(v).map_err(|_| StateError::Corrupt {
            path: self.path.display().to_string(),
            message: "the lineage id is not text".into(),
        })
    }

    /// Writes a consistent copy of the committed state into `dir` (which
    /// must not exist): memtables are flushed and SST files hard-linked.
    pub fn checkpoint_to(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(self.err())
    }

    /// Encodes a batch's writes as RocksDB will apply them. It needs no
    /// database, so it can run on another thread while the batch's tables
    /// commit: for the fraud example's state that is about half of applying
    /// it (the copy into the `WriteBatch`, and freeing the staged writes).
    pub fn prepare(writes: StagedWrites) -> PreparedWrites {
        // Sized up front: grown by doubling, a batch's hundred megabytes of
        // state were copied again at each step, into fresh pages.
        let mut batch = WriteBatch::with_capacity_bytes(encoded_size(&writes));
        for w in writes.writes {
            match w {
                Write::Put(k, v) => batch.put(k, v),
                Write::Delete(k) => batch.delete(k),
                Write::DeleteRange(start, end) => {
                    if start < end {
                        batch.delete_range(start, end)
                    }
                }
            }
        }
        PreparedWrites(batch)
    }

    /// [`StateStore::commit`] of writes [`RocksStore::prepare`] encoded.
    pub fn commit_prepared(&mut self, batch_id: u64, writes: PreparedWrites) -> Result<()> {
        check_order(self.committed_batch()?, batch_id)?;
        let PreparedWrites(mut batch) = writes;
        batch.put_cf(self.meta()?, COMMITTED_BATCH, batch_id.to_be_bytes());
        let mut no_wal = WriteOptions::default();
        no_wal.disable_wal(true);
        self.db.write_opt(batch, &no_wal).map_err(self.err())?;
        self.unflushed += 1;
        if self.unflushed >= COMMITS_PER_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every commit so far durable, waiting for the flush.
    fn flush(&mut self) -> Result<()> {
        let data = self.data()?;
        let meta = self.meta()?;
        let mut wait = FlushOptions::default();
        wait.set_wait(true);
        self.db
            .flush_cfs_opt(&[data, meta], &wait)
            .map_err(self.err())?;
        self.unflushed = 0;
        Ok(())
    }

    fn data(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| StateError::Corrupt {
                path: self.path.display().to_string(),
                message: "the default column family is missing".into(),
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rocksdb::Error) -> StateError + '_ {
        |e| StateError::Store {
            path: self.path.display().to_string(),
            source: Box::new(e),
        }
    }
}

fn db_options(options: &RocksOptions) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // A commit writes both column families and skips the WAL: flushed
    // apart, the meta family could name a batch whose data was lost.
    o.set_atomic_flush(true);
    o.set_write_buffer_size(options.write_buffer_size);
    // A batch's state can fill several memtables (500,000 fraud
    // transactions write about 100 MB): with two, its writes waited for
    // flushes. The write buffer manager still flushes beyond its budget.
    o.set_max_write_buffer_number(4);
    o.set_write_buffer_manager(&options.write_buffers);
    o.set_max_open_files(options.max_open_files);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_max_background_jobs(2);
    // State is written once and deleted by range when it expires: universal
    // compaction rewrites it far less than leveled (measured: same speed,
    // a fifth less memory, more disk).
    o.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
    // Lookups of absent keys: a bloom filter on the memtables answers them
    // without walking the skiplist.
    o.set_memtable_whole_key_filtering(true);
    o.set_memtable_prefix_bloom_ratio(0.1);
    let mut table = BlockBasedOptions::default();
    // Point lookups of absent keys skip files by filter. Filters and indexes
    // stay in memory beside the cache: looking them up in the block cache
    // for every probe made lookups twice as slow (tributary bench dedup).
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(&options.cache);
    table.set_cache_index_and_filter_blocks(false);
    // A point lookup finds its key in a data block by hash, not by binary
    // search (the features' lookups of keys in state; bench fraud 2-5 %
    // faster in six of seven pairs, bench dedup unchanged).
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);
    o.set_block_based_table_factory(&table);
    o
}

fn open_db(path: &Path, options: &RocksOptions) -> Result<DB> {
    let o = db_options(options);
    let meta = ColumnFamilyDescriptor::new(META, Options::default());
    let data = ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, o.clone());
    DB::open_cf_descriptors(&o, path, vec![data, meta]).map_err(|e| StateError::Store {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

impl StateStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(self.err())
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let db = &self.db;
        let data = self.data()?;
        // The batched form looks keys up level by level, sorted, instead of
        // one at a time. Each answer pins its block in the cache until it is
        // copied out, beyond the cache's budget: a chunk at a time bounds
        // that (all of a 100,000-key batch at once pinned ~180 MiB).
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MULTI_GET_CHUNK) {
            for r in db.batched_multi_get_cf(data, chunk, false) {
                values.push(r.map(|v| v.map(|v| v.to_vec())).map_err(self.err())?);
            }
        }
        Ok(values)
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(start, Direction::Forward), read);
        iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(self.err()))
            .collect()
    }

    fn visit_keys(&self, start: &[u8], end: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek(start);
        while let Some(k) = iter.key() {
            visit(k);
            iter.next();
        }
        iter.status().map_err(self.err())
    }

    fn commit(&mut self, batch_id: u64, writes: StagedWrites) -> Result<()> {
        self.commit_prepared(batch_id, RocksStore::prepare(writes))
    }

    fn committed_batch(&self) -> Result<Option<u64>> {
        let db = &self.db;
        let meta = self.meta()?;
        match db.get_cf(&meta, COMMITTED_BATCH).map_err(self.err())? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| StateError::Corrupt {
                    path: self.path.display().to_string(),
                    message: "the committed batch id is not 8 bytes".into(),
                })?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }
}

/// About the bytes `writes` take in a `WriteBatch`: per entry a tag, the
/// lengths as varints (at most five bytes each) and the bytes, plus the
/// batch's header and its committed batch id.
fn encoded_size(writes: &StagedWrites) -> usize {
    const HEADER: usize = 12;
    const ENTRY: usize = 1 + 5 + 5;
    let entries: usize = writes
        .writes
        .iter()
        .map(|w| {
            ENTRY
                + match w {
                    Write::Put(k, v) | Write::DeleteRange(k, v) => k.len() + v.len(),
                    Write::Delete(k) => k.len(),
                }
        })
        .sum();
    HEADER + entries + ENTRY + 5 + COMMITTED_BATCH.len() + 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conforms() {
        let dirs = std::cell::RefCell::new(Vec::new());
        crate::conformance::run_all(&mut || {
            let dir = tempfile::tempdir().unwrap();
            let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
            dirs.borrow_mut().push(dir);
            Box::new(store)
        });
    }

    #[test]
    fn commits_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
            let mut w = StagedWrites::default();
            w.put(b"k".to_vec(), b"v".to_vec());
            s.commit(4, w).unwrap();
        }
        let s = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(s.committed_batch().unwrap(), Some(4));
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    /// A crash (the process aborted, as `TRIBUTARY_CRASH_AT` does) loses
    /// the commits after the last flush, each whole, and keeps the rest.
    #[test]
    fn a_crash_keeps_the_flushed_commits_whole() {
        const CHILD_DIR: &str = "TRIBUTARY_TEST_CRASHING_STORE";
        let commits = u64::from(COMMITS_PER_FLUSH) + 3;
        if let Ok(dir) = std::env::var(CHILD_DIR) {
            let mut s = RocksStore::open(Path::new(&dir), RocksOptions::default()).unwrap();
            for batch in 0..commits {
                let mut w = StagedWrites::default();
                w.put(b"last".to_vec(), batch.to_be_bytes().to_vec());
                w.put(batch.to_be_bytes().to_vec(), b"written".to_vec());
                s.commit(batch, w).unwrap();
            }
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "rocks::tests::a_crash_keeps_the_flushed_commits_whole",
            ])
            .env(CHILD_DIR, dir.path())
            .output()
            .unwrap();
        assert!(!child.status.success(), "the child did not abort");
        let s = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        let flushed = u64::from(COMMITS_PER_FLUSH) - 1;
        assert_eq!(s.committed_batch().unwrap(), Some(flushed));
        assert_eq!(
            s.get(b"last").unwrap(),
            Some(flushed.to_be_bytes().to_vec())
        );
        for batch in 0..commits {
            let kept = s.get(&batch.to_be_bytes()).unwrap().is_some();
            assert_eq!(kept, batch <= flushed, "batch {batch}");
        }
    }

    #[test]
    fn stores_sharing_a_budget_stay_within_it() {
        let budget = RocksOptions::with_memory(32 << 20);
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut stores: Vec<RocksStore> = dirs
            .iter()
            .map(|d| RocksStore::open(d.path(), budget.clone()).unwrap())
            .collect();
        let (mut peak_memtables, mut peak_usage) = (0, 0);
        let value = vec![7u8; 1000];
        for batch in 0..40u64 {
            for store in &mut stores {
                let mut w = StagedWrites::default();
                for i in 0..1000u64 {
                    w.put((batch * 1000 + i).to_be_bytes().to_vec(), value.clone());
                }
                store.commit(batch, w).unwrap();
                peak_memtables = peak_memtables.max(budget.write_buffers.get_usage());
                peak_usage = peak_usage.max(budget.cache.get_usage());
            }
        }
        // 160 MB written through four stores: every store's memtables are
        // charged to the one cache, which stays within the budget.
        assert!(peak_memtables > 0 && peak_usage >= peak_memtables);
        assert!(
            peak_usage <= budget.memory + (1 << 20),
            "the budget's cache reached {peak_usage} bytes"
        );
        for store in &stores {
            for k in (0..40_000u64).step_by(97) {
                assert_eq!(store.get(&k.to_be_bytes()).unwrap(), Some(value.clone()));
            }
        }
        assert!(budget.cache.get_usage() <= budget.memory + (1 << 20));
    }
}
