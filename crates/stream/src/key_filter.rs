//! An in-memory filter of the dedup and features keys in the state, so that new keys —
//! most keys — need no RocksDB lookup: a key the filter has never seen is
//! certainly not in the state. Keys are filed by expiry bucket, and a bucket
//! the watermark has passed is dropped whole, so the filter stays as bounded
//! as the state. It is rebuilt from the state when an operator first runs,
//! and may hold more than the state (keys of a batch whose state never
//! committed, keys expired early in their bucket): that costs a lookup,
//! never a wrong answer.

use std::collections::BTreeMap;

use tributary_core::{StagedWrites, StateStore};

use crate::error::Result;
use crate::keys;

/// 512-bit blocks: every probe of a key touches one cache line.
const BLOCK_WORDS: usize = 8;
/// Bits set per key (about 1-2% false positives at 10 bits a key).
const PROBES: u32 = 8;
const FIRST_CAPACITY: usize = 1 << 16;

/// A key's two hashes: block, and bits within it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash(u64, u64);

impl KeyHash {
    pub(crate) fn of(key: &[u8]) -> KeyHash {
        use std::hash::BuildHasher;
        // Fixed seeds: the filter lives in memory only, so the hash need
        // not be stable across versions, only fast.
        let a = foldhash::fast::FixedState::with_seed(0x5eed_0001).hash_one(key);
        let b = foldhash::fast::FixedState::with_seed(0x5eed_0002).hash_one(key);
        KeyHash(a, b)
    }
}

/// The block of a key among `blocks`, and its bits in it (word, mask).
fn probe(blocks: usize, KeyHash(h1, h2): KeyHash) -> (usize, impl Iterator<Item = (usize, u64)>) {
    let block = (h1 % blocks as u64) as usize;
    // Double hashing within the block: bit i = h2 + i * step.
    let step = (h1 >> 32) | 1;
    let bits = (0..PROBES).map(move |i| {
        let bit = h2.wrapping_add(u64::from(i).wrapping_mul(step)) as usize & 511;
        (bit / 64, 1u64 << (bit % 64))
    });
    (block, bits)
}

/// A blocked Bloom filter for a fixed number of keys.
struct Bloom {
    blocks: Vec<[u64; BLOCK_WORDS]>,
    capacity: usize,
    len: usize,
}

impl Bloom {
    fn new(capacity: usize) -> Bloom {
        // 10 bits a key, in whole blocks.
        let blocks = (capacity * 10).div_ceil(BLOCK_WORDS * 64).max(1);
        Bloom {
            blocks: vec![[0; BLOCK_WORDS]; blocks],
            capacity,
            len: 0,
        }
    }

    fn insert(&mut self, h: KeyHash) {
        let (block, bits) = probe(self.blocks.len(), h);
        for (word, mask) in bits {
            self.blocks[block][word] |= mask;
        }
        self.len += 1;
    }

    fn may_contain(&self, h: KeyHash) -> bool {
        let (block, mut bits) = probe(self.blocks.len(), h);
        bits.all(|(word, mask)| self.blocks[block][word] & mask != 0)
    }
}

/// Filters of the keys expiring within one bucket of time; a full filter
/// is followed by one twice its size.
#[derive(Default)]
struct Bucket {
    filters: Vec<Bloom>,
}

impl Bucket {
    fn insert(&mut self, h: KeyHash) {
        let full = self.filters.last().is_none_or(|f| f.len >= f.capacity);
        if full {
            let next = self
                .filters
                .last()
                .map_or(FIRST_CAPACITY, |f| f.capacity * 2);
            self.filters.push(Bloom::new(next));
        }
        if let Some(f) = self.filters.last_mut() {
            f.insert(h);
        }
    }

    fn may_contain(&self, h: KeyHash) -> bool {
        self.filters.iter().any(|f| f.may_contain(h))
    }
}

/// Dedup keys that may be in the state, by expiry bucket.
pub(crate) struct KeyFilter {
    /// Width of an expiry bucket, in microseconds.
    width: i64,
    buckets: BTreeMap<i64, Bucket>,
}

impl KeyFilter {
    pub(crate) fn new(width: i64) -> KeyFilter {
        KeyFilter {
            width: width.max(1),
            buckets: BTreeMap::new(),
        }
    }

    fn bucket(&self, expiry: i64) -> i64 {
        expiry.div_euclid(self.width)
    }

    pub(crate) fn insert(&mut self, key: KeyHash, expiry: i64) {
        let b = self.bucket(expiry);
        self.buckets.entry(b).or_default().insert(key);
    }

    /// How wide a bucket is, in microseconds.
    pub(crate) fn width(&self) -> i64 {
        self.width
    }

    /// The start of the bucket of `expiry`.
    pub(crate) fn bucket_start(&self, expiry: i64) -> i64 {
        self.bucket(expiry).saturating_mul(self.width)
    }

    /// The starts of the buckets that may hold `key` (none: the key is
    /// certainly not in the state).
    pub(crate) fn bucket_starts_that_may_hold(
        &self,
        key: KeyHash,
    ) -> impl Iterator<Item = i64> + '_ {
        self.buckets
            .iter()
            .filter(move |(_, b)| b.may_contain(key))
            .map(|(b, _)| b.saturating_mul(self.width))
    }

    /// Whether a bucket that starts before `start` may hold keys.
    pub(crate) fn holds_buckets_before(&self, start: i64) -> bool {
        self.buckets
            .keys()
            .next()
            .is_some_and(|b| b.saturating_mul(self.width) < start)
    }

    /// Drops the buckets whose every key expired before `watermark`.
    pub(crate) fn expire(&mut self, watermark: i64) {
        let width = self.width;
        self.buckets
            .retain(|b, _| b.saturating_add(1).saturating_mul(width) > watermark);
    }
}

/// A filter of the `tag` keys in the store, filed by their leading time
/// plus `shift` (keys that expire `shift` after the time they are indexed
/// by); keyed by the key's bytes after the tag and `skip` more bytes.
/// Buckets are `width` wide (at least a second).
pub(crate) fn load_shifted(
    store: &dyn StateStore,
    tag: u8,
    skip: usize,
    width: i64,
    shift: i64,
) -> Result<KeyFilter> {
    let mut filter = KeyFilter::new(width.max(1_000_000));
    let (lo, _) = keys::older_than(tag, i64::MIN);
    // Keys only: a features value is a key's rows, and the whole state
    // need not be in memory at once to file its keys.
    store.visit_keys(&lo, &[tag + 1], &mut |k| {
        if let (Some(time), Some(rest)) = (keys::time_of(k), k.get(1 + skip..)) {
            filter.insert(KeyHash::of(rest), time.saturating_add(shift));
        }
    })?;
    Ok(filter)
}

/// Stages the range delete of the `tag` buckets that start before the one
/// holding `time`, only when `filter` holds such a bucket: every key in the
/// state was filed in the filter, and a range tombstone turns off the Bloom
/// filter of the RocksDB memtable it lands in, so one per batch would slow
/// every lookup.
pub(crate) fn delete_buckets_before(
    filter: &KeyFilter,
    tag: u8,
    time: i64,
    writes: &mut StagedWrites,
) {
    let live = filter.bucket_start(time);
    if filter.holds_buckets_before(live) {
        let (lo, hi) = keys::older_than(tag, live);
        writes.delete_range(lo, hi);
    }
}

/// One stored value [`lookup_in_buckets`] found: the number of the key it belongs
/// to, the start of the bucket it is filed in (`None`: under the earlier
/// layout's tag), and the value.
pub(crate) type Hit = (usize, Option<i64>, Vec<u8>);

/// Looks `keys` up in the `tag` buckets `filter` may hold each in (and, if
/// given, under the earlier layout's tag too): every value found, in the
/// order of the keys, then of their buckets.
pub(crate) fn lookup_in_buckets(
    store: &dyn StateStore,
    filter: &KeyFilter,
    tag: u8,
    keys: &[&[u8]],
    hashes: &[KeyHash],
    earlier: Option<u8>,
) -> Result<Vec<Hit>> {
    let (mut probes, mut owners) = (Vec::new(), Vec::new());
    for (n, (key, hash)) in keys.iter().zip(hashes).enumerate() {
        for start in filter.bucket_starts_that_may_hold(*hash) {
            probes.push(keys::timed(tag, start, &[key]));
            owners.push((n, Some(start)));
        }
        if let Some(earlier) = earlier {
            probes.push(keys::tagged(earlier, key));
            owners.push((n, None));
        }
    }
    Ok(owners
        .into_iter()
        .zip(store.multi_get(&probes)?)
        .filter_map(|((n, bucket), value)| Some((n, bucket, value?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may_contain(f: &KeyFilter, key: u32) -> bool {
        f.bucket_starts_that_may_hold(KeyHash::of(&key.to_be_bytes()))
            .next()
            .is_some()
    }

    #[test]
    fn never_forgets_a_live_key_and_rarely_imagines_one() {
        let mut f = KeyFilter::new(1_000);
        for k in 0..300_000u32 {
            f.insert(KeyHash::of(&k.to_be_bytes()), (k % 10_000) as i64);
        }
        for k in 0..300_000u32 {
            assert!(may_contain(&f, k), "key {k} forgotten");
        }
        let imagined = (300_000..400_000u32)
            .filter(|&k| may_contain(&f, k))
            .count();
        // Ten buckets of 30,000 keys each, probed together.
        assert!(
            imagined < 100_000 / 5,
            "{imagined} false positives in 100,000"
        );
        // Expiring before 5,000 drops the buckets of expiries 0..5,000 only.
        f.expire(5_000);
        assert!(may_contain(&f, 5_000));
        assert_eq!(f.buckets.len(), 5);
    }
}
