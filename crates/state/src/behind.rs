//! [`ApplyBehind`]: a RocksDB store whose commits return at once and are
//! written by a thread of their own, so that writing batch N's state
//! overlaps operating batch N+1. Reads in between see batch N through an
//! index of its staged writes laid over the store.
//!
//! Why it is safe: a key batch N wrote is answered from N's writes, never
//! from the store, and a key it did not write is the same in the store
//! before and after N is applied; RocksDB writes a batch atomically and lets
//! other threads read meanwhile. The caller decides how far the store may
//! lag: [`ApplyBehind::settle`] waits for the pending batch (the engine
//! settles before committing the next batch to its tables, so the state on
//! disk stays at most one batch behind them).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::thread::JoinHandle;

use hashbrown::HashTable;

use crate::{
    Result, RocksStore, StagedWrites, StateError, StateRead, StateStore, Write, check_order,
};

/// A RocksDB store applying each commit on a thread of its own.
pub struct ApplyBehind {
    store: Arc<RocksStore>,
    pending: Option<Pending>,
}

/// A committed batch not yet known to be in the store.
struct Pending {
    batch_id: u64,
    overlay: Overlay,
    applying: JoinHandle<Result<()>>,
}

impl ApplyBehind {
    pub fn new(store: RocksStore) -> ApplyBehind {
        ApplyBehind {
            store: Arc::new(store),
            pending: None,
        }
    }

    /// The store as applied so far: without a pending batch. For snapshots,
    /// after [`ApplyBehind::settle`].
    pub fn store(&self) -> &RocksStore {
        &self.store
    }

    /// Waits until the pending batch is in the store; returns its id, or
    /// `None` when there was none. An error applying it is returned here.
    pub fn settle(&mut self) -> Result<Option<u64>> {
        let Some(pending) = self.pending.take() else {
            return Ok(None);
        };
        let batch_id = pending.batch_id;
        match pending.applying.join() {
            Ok(applied) => applied.map(|()| Some(batch_id)),
            Err(_) => Err(StateError::ApplyPanicked {
                path: self.store.path().display().to_string(),
                batch_id,
            }),
        }
    }
}

impl Drop for ApplyBehind {
    /// Lets the pending batch finish: the store must not be reopened while
    /// a thread still writes to it. A failure leaves the state one batch
    /// behind, which recovery re-runs.
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "the last batch's state was not applied; recovery will re-run it");
        }
    }
}

impl StateRead for ApplyBehind {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.as_ref().map(|p| p.overlay.lookup(key)) {
            Some(Seen::Value(v)) => Ok(Some(v.to_vec())),
            Some(Seen::Deleted) => Ok(None),
            Some(Seen::Untouched) | None => self.store.get(key),
        }
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let Some(pending) = &self.pending else {
            return self.store.multi_get(keys);
        };
        let seen: Vec<Seen> = keys.iter().map(|k| pending.overlay.lookup(k)).collect();
        let untouched: Vec<usize> = (0..keys.len())
            .filter(|&n| matches!(seen[n], Seen::Untouched))
            .collect();
        if untouched.len() == keys.len() {
            return self.store.multi_get(keys);
        }
        let lookups: Vec<Vec<u8>> = untouched.iter().map(|&n| keys[n].clone()).collect();
        let mut stored = self.store.multi_get(&lookups)?.into_iter();
        Ok(seen
            .into_iter()
            .map(|s| match s {
                Seen::Value(v) => Some(v.to_vec()),
                Seen::Deleted => None,
                Seen::Untouched => stored.next().flatten(),
            })
            .collect())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let stored = self.store.scan(start, end)?;
        let Some(pending) = &self.pending else {
            return Ok(stored);
        };
        let overlay = &pending.overlay;
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = stored
            .into_iter()
            .filter(|(k, _)| matches!(overlay.lookup(k), Seen::Untouched))
            .collect();
        let before = pairs.len();
        pairs.extend(overlay.values_in(start, end));
        if pairs.len() > before {
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(pairs)
    }

    fn committed_batch(&self) -> Result<Option<u64>> {
        match &self.pending {
            Some(p) => Ok(Some(p.batch_id)),
            None => self.store.committed_batch(),
        }
    }
}

impl StateStore for ApplyBehind {
    /// Settles the batch before, then starts applying this one and returns:
    /// reads from now on see it.
    fn commit(&mut self, batch_id: u64, writes: StagedWrites) -> Result<()> {
        check_order(self.committed_batch()?, batch_id)?;
        self.settle()?;
        let writes = Arc::new(writes);
        let (store, applied) = (self.store.clone(), writes.clone());
        let applying = std::thread::Builder::new()
            .name("state-apply".into())
            .spawn(move || store.commit_shared(batch_id, &applied))
            .map_err(|e| StateError::Store {
                path: self.store.path().display().to_string(),
                source: Box::new(e),
            })?;
        // Indexed while the thread applies: both only read the writes.
        self.pending = Some(Pending {
            batch_id,
            overlay: Overlay::new(writes),
            applying,
        });
        Ok(())
    }
}

/// What a batch's staged writes say of a key.
enum Seen<'a> {
    Value(&'a [u8]),
    Deleted,
    /// The batch left it alone: the store has it right.
    Untouched,
}

/// A batch's staged writes, indexed to answer reads as if applied.
struct Overlay {
    writes: Arc<StagedWrites>,
    /// The position of each key's last put or delete.
    points: HashTable<usize>,
    hasher: RandomState,
    /// The positions of the range deletes, in order (a handful per batch).
    ranges: Vec<usize>,
}

impl Overlay {
    fn new(writes: Arc<StagedWrites>) -> Overlay {
        let hasher = RandomState::new();
        let mut points = HashTable::with_capacity(writes.writes.len());
        let mut ranges = Vec::new();
        for (n, w) in writes.writes.iter().enumerate() {
            let key = match w {
                Write::Put(k, _) | Write::Delete(k) => k,
                Write::DeleteRange(..) => {
                    ranges.push(n);
                    continue;
                }
            };
            let hash = hasher.hash_one(key.as_slice());
            let same = |&m: &usize| point_key(&writes.writes[m]) == Some(key.as_slice());
            match points.find_mut(hash, same) {
                Some(last) => *last = n,
                None => {
                    let rehash = |&m: &usize| {
                        hasher.hash_one(point_key(&writes.writes[m]).unwrap_or_default())
                    };
                    points.insert_unique(hash, n, rehash);
                }
            }
        }
        Overlay {
            writes,
            points,
            hasher,
            ranges,
        }
    }

    fn lookup(&self, key: &[u8]) -> Seen<'_> {
        let writes = &self.writes.writes;
        let point = self
            .points
            .find(self.hasher.hash_one(key), |&m| {
                point_key(&writes[m]) == Some(key)
            })
            .copied();
        let range = self.ranges.iter().rev().copied().find(|&m| {
            matches!(&writes[m], Write::DeleteRange(s, e) if s.as_slice() <= key && key < e.as_slice())
        });
        match (point, range) {
            (Some(p), r) if r.is_none_or(|r| p > r) => match &writes[p] {
                Write::Put(_, v) => Seen::Value(v),
                _ => Seen::Deleted,
            },
            (_, Some(_)) => Seen::Deleted,
            _ => Seen::Untouched,
        }
    }

    /// The values the batch gives to keys in `[start, end)`, unordered.
    fn values_in(&self, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.writes
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Put(k, _) if start <= k.as_slice() && k.as_slice() < end => Some(k),
                _ => None,
            })
            .filter_map(|k| match self.lookup(k) {
                Seen::Value(v) => Some((k.clone(), v.to_vec())),
                _ => None,
            })
            // A key put twice is answered once, by its last put.
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect()
    }
}

fn point_key(w: &Write) -> Option<&[u8]> {
    match w {
        Write::Put(k, _) | Write::Delete(k) => Some(k),
        Write::DeleteRange(..) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, RocksOptions};

    fn open(dir: &tempfile::TempDir) -> ApplyBehind {
        ApplyBehind::new(RocksStore::open(dir.path(), RocksOptions::default()).unwrap())
    }

    #[test]
    fn conforms() {
        let mut dirs = Vec::new();
        crate::conformance::run_all(&mut || {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            dirs.push(dir);
            Box::new(store)
        });
    }

    /// A tiny xorshift, for reproducible random batches.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_writes(rng: &mut Rng) -> StagedWrites {
        let key = |rng: &mut Rng| vec![b'k', rng.below(40) as u8];
        let mut staged = StagedWrites::default();
        for _ in 0..rng.below(30) {
            match rng.below(8) {
                0 => {
                    let (a, b) = (key(rng), key(rng));
                    let (start, end) = if a <= b { (a, b) } else { (b, a) };
                    staged.delete_range(start, end);
                }
                1 | 2 => staged.delete(key(rng)),
                _ => staged.put(key(rng), vec![rng.below(255) as u8]),
            }
        }
        staged
    }

    /// Reads between commits (so with the last batch still pending) agree
    /// with a store that applies at once, whatever mix of puts, deletes and
    /// range deletes the batches stage.
    #[test]
    fn reads_while_applying_match_a_store_that_applied() {
        for seed in 1..40u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut behind = open(&dir);
            let mut reference = MemoryStore::new();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            for batch in 0..12 {
                let writes = random_writes(&mut rng);
                reference.commit(batch, writes.clone()).unwrap();
                behind.commit(batch, writes).unwrap();
                let all = |s: &dyn StateRead| s.scan(b"k", b"l").unwrap();
                assert_eq!(all(&behind), all(&reference), "seed {seed}, batch {batch}");
                let (lo, hi) = (vec![b'k', 10], vec![b'k', 25]);
                assert_eq!(
                    behind.scan(&lo, &hi).unwrap(),
                    reference.scan(&lo, &hi).unwrap()
                );
                let keys: Vec<Vec<u8>> = (0..40).map(|n| vec![b'k', n]).collect();
                assert_eq!(
                    behind.multi_get(&keys).unwrap(),
                    reference.multi_get(&keys).unwrap()
                );
                for k in &keys {
                    assert_eq!(behind.get(k).unwrap(), reference.get(k).unwrap());
                }
                assert_eq!(behind.committed_batch().unwrap(), Some(batch));
            }
            assert_eq!(behind.settle().unwrap(), Some(11));
            assert_eq!(behind.settle().unwrap(), None);
            assert_eq!(
                behind.store().scan(b"k", b"l").unwrap(),
                reference.scan(b"k", b"l").unwrap()
            );
        }
    }

    #[test]
    fn a_dropped_store_has_its_last_batch_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut behind = open(&dir);
        let mut writes = StagedWrites::default();
        writes.put(b"a".to_vec(), b"1".to_vec());
        behind.commit(7, writes).unwrap();
        drop(behind);
        let reopened = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(reopened.committed_batch().unwrap(), Some(7));
        assert_eq!(reopened.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_replayed_batch_is_refused_while_it_is_still_applying() {
        let dir = tempfile::tempdir().unwrap();
        let mut behind = open(&dir);
        behind.commit(3, StagedWrites::default()).unwrap();
        assert!(matches!(
            behind.commit(3, StagedWrites::default()),
            Err(StateError::OutOfOrder {
                committed: 3,
                batch_id: 3
            })
        ));
    }
}
