//! The implementations of operator state's contract,
//! [`tributary_core::StateStore`]: [`RocksStore`] (RocksDB on local disk, what pipelines
//! run on) and [`MemoryStore`] (tests and property checks). One conformance
//! suite (`conformance` below) runs against both.
//!
//! The contract and the key codec live in `tributary-core`, so the
//! operators build without RocksDB; they are re-exported here.

mod memory;
mod rocks;
mod snapshot;

pub use tributary_core::{StagedWrites, StateError, StateStore, Write, decode_time, encode_time};

pub use memory::MemoryStore;
pub use rocks::{PreparedWrites, RocksOptions, RocksStore};
pub use snapshot::{SnapshotManifest, Snapshots, UploadOutcome};

/// What this crate's functions return.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Refuses a batch id that does not follow the committed one.
fn check_order(committed: Option<u64>, batch_id: u64) -> Result<()> {
    match committed {
        Some(c) if batch_id <= c => Err(StateError::OutOfOrder {
            committed: c,
            batch_id,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The contract of [`StateStore`], checked on any implementation.

    use super::*;

    fn key(tag: u8, t: i64, rest: &[u8]) -> Vec<u8> {
        let mut k = vec![tag];
        k.extend_from_slice(&encode_time(t));
        k.extend_from_slice(rest);
        k
    }

    pub(crate) fn run_all(open: &mut dyn FnMut() -> Box<dyn StateStore>) {
        empty_store(open().as_mut());
        commit_applies_in_order(open().as_mut());
        reads_see_committed_only(open().as_mut());
        batch_ids_only_grow(open().as_mut());
        range_delete_expires_by_time(open().as_mut());
        scan_is_ordered_and_half_open(open().as_mut());
    }

    fn empty_store(s: &mut dyn StateStore) {
        assert_eq!(s.committed_batch().unwrap(), None);
        assert_eq!(s.get(b"x").unwrap(), None);
        assert!(s.scan(&[0], &[0xff]).unwrap().is_empty());
    }

    fn commit_applies_in_order(s: &mut dyn StateStore) {
        let mut w = StagedWrites::default();
        w.put(b"a".to_vec(), b"1".to_vec());
        w.put(b"b".to_vec(), b"2".to_vec());
        w.delete(b"a".to_vec());
        w.put(b"a".to_vec(), b"3".to_vec());
        w.put(b"c".to_vec(), b"4".to_vec());
        w.delete_range(b"c".to_vec(), b"d".to_vec());
        s.commit(0, w).unwrap();
        assert_eq!(s.committed_batch().unwrap(), Some(0));
        let got = s
            .multi_get(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
            .unwrap();
        assert_eq!(got, vec![Some(b"3".to_vec()), Some(b"2".to_vec()), None]);
    }

    fn reads_see_committed_only(s: &mut dyn StateStore) {
        let mut w = StagedWrites::default();
        w.put(b"k".to_vec(), b"v".to_vec());
        // Staged, not committed: invisible.
        assert_eq!(s.get(b"k").unwrap(), None);
        s.commit(7, w).unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.committed_batch().unwrap(), Some(7));
    }

    fn batch_ids_only_grow(s: &mut dyn StateStore) {
        let mut w = StagedWrites::default();
        w.put(b"k".to_vec(), b"1".to_vec());
        s.commit(3, w).unwrap();
        let mut again = StagedWrites::default();
        again.put(b"k".to_vec(), b"2".to_vec());
        let err = s.commit(3, again.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::OutOfOrder {
                    committed: 3,
                    batch_id: 3
                }
            ),
            "{err}"
        );
        assert!(s.commit(2, again.clone()).is_err());
        assert_eq!(s.get(b"k").unwrap(), Some(b"1".to_vec()));
        s.commit(4, again).unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(b"2".to_vec()));
        // An empty batch still advances the committed id.
        s.commit(5, StagedWrites::default()).unwrap();
        assert_eq!(s.committed_batch().unwrap(), Some(5));
    }

    fn range_delete_expires_by_time(s: &mut dyn StateStore) {
        let mut w = StagedWrites::default();
        for t in [-5_000i64, -1, 0, 1, 999, 1_000, 1_001, i64::MAX - 1] {
            w.put(key(b'W', t, b"g"), t.to_be_bytes().to_vec());
        }
        w.put(key(b'X', 0, b"other"), vec![]);
        s.commit(0, w).unwrap();
        // Everything of tag W older than 1000, in one range delete.
        let mut expire = StagedWrites::default();
        expire.delete_range(key(b'W', i64::MIN, b""), key(b'W', 1_000, b""));
        s.commit(1, expire).unwrap();
        let left: Vec<i64> = s
            .scan(b"W", b"X")
            .unwrap()
            .into_iter()
            .map(|(k, _)| decode_time(k[1..9].try_into().unwrap()))
            .collect();
        assert_eq!(left, vec![1_000, 1_001, i64::MAX - 1]);
        assert_eq!(s.scan(b"X", b"Y").unwrap().len(), 1);
    }

    fn scan_is_ordered_and_half_open(s: &mut dyn StateStore) {
        let mut w = StagedWrites::default();
        for k in [b"b2".as_slice(), b"a", b"b1", b"b", b"c"] {
            w.put(k.to_vec(), k.to_vec());
        }
        s.commit(0, w).unwrap();
        let keys: Vec<Vec<u8>> = s
            .scan(b"b", b"c")
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v);
                k
            })
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"b1".to_vec(), b"b2".to_vec()]);
        let mut visited = Vec::new();
        s.visit_keys(b"b", b"c", &mut |k| visited.push(k.to_vec()))
            .unwrap();
        assert_eq!(visited, keys);
        s.visit_keys(b"c", b"b", &mut |k| visited.push(k.to_vec()))
            .unwrap();
        assert_eq!(visited, keys, "an empty range visits nothing");
    }

    #[test]
    fn time_encoding_preserves_order() {
        let values = [i64::MIN, -1_000, -1, 0, 1, 1_000, i64::MAX];
        for w in values.windows(2) {
            assert!(encode_time(w[0]) < encode_time(w[1]));
        }
        for v in values {
            assert_eq!(decode_time(encode_time(v)), v);
        }
    }
}
