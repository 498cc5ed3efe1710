//! Deduplication's state: one entry per remembered key, filed under the
//! start of its expiry's bucket, `(bucket start, key) -> expiry`.
//!
//! A bucket the watermark has passed is deleted whole by one range delete,
//! with no per-key work; a key in a bucket still live is checked against
//! its own expiry, so keys are forgotten exactly when Spark forgets them.
//! A lookup probes only the buckets whose Bloom filter (the operator's
//! [`KeyFilter`], bucketed the same way) may hold the key: one probe for a
//! remembered key, none for a new one. Buckets are as wide as the watermark
//! delay (at least a second), so two or three are live; the width is
//! stored, and a later delay keeps the width the state was filed with.
//!
//! Earlier versions kept each key twice (key -> expiry, and (expiry, key)
//! to expire it by range): the first batch of an operator that finds such
//! state moves it to this layout, and looks its keys up in both.

use tributary_core::{StagedWrites, StateStore};

use crate::error::Result;
use crate::key_filter::{
    KeyFilter, KeyHash, delete_buckets_before, load_shifted, lookup_in_buckets,
};
use crate::keys;

/// The filter of the keys in state, and whether this batch must also look
/// keys up in the earlier layout (it is moving them).
pub(crate) fn load(
    store: &dyn StateStore,
    watermark_delay: i64,
    writes: &mut StagedWrites,
) -> Result<(KeyFilter, bool)> {
    let width =
        keys::read_time(store, keys::DEDUP_WIDTH)?.unwrap_or(watermark_delay.max(1_000_000));
    let mut filter = load_shifted(store, keys::DEDUP, 8, width, 0)?;
    let earlier = store.scan(&[keys::DEDUP_KEY], &[keys::DEDUP_KEY + 1])?;
    let moving = !earlier.is_empty();
    for (k, v) in earlier {
        let expiry = keys::stored_time(&v)?;
        filter.insert(KeyHash::of(&k[1..]), expiry);
        let key = keys::timed(keys::DEDUP, filter.bucket_start(expiry), &[&k[1..]]);
        writes.put(key, v);
    }
    if moving {
        for tag in [keys::DEDUP_KEY, keys::DEDUP_EXPIRY] {
            writes.delete_range(vec![tag], vec![tag + 1]);
        }
    }
    Ok((filter, moving))
}

/// Forgets the buckets the watermark `w` has passed (every expiry in them
/// is at or before `w`).
pub(crate) fn expire(filter: &mut KeyFilter, w: i64, writes: &mut StagedWrites) {
    delete_buckets_before(filter, keys::DEDUP, w.saturating_add(1), writes);
    filter.expire(w.saturating_add(1));
}

/// Which of `keys` (encoded dedup keys) are remembered and not yet expired
/// under `watermark`; also each key's hash, to file the new ones with.
pub(crate) fn remembered(
    store: &dyn StateStore,
    filter: &KeyFilter,
    keys: &[&[u8]],
    watermark: Option<i64>,
    moving: bool,
) -> Result<(Vec<bool>, Vec<KeyHash>)> {
    let hashes: Vec<KeyHash> = keys.iter().map(|k| KeyHash::of(k)).collect();
    let earlier = moving.then_some(keys::DEDUP_KEY);
    let mut live = vec![false; keys.len()];
    for (n, _, v) in lookup_in_buckets(store, filter, keys::DEDUP, keys, &hashes, earlier)? {
        let expiry = keys::stored_time(&v)?;
        live[n] |= watermark.is_none_or(|w| expiry > w);
    }
    Ok((live, hashes))
}

/// Remembers `key` until `expiry`.
pub(crate) fn remember(
    filter: &mut KeyFilter,
    key: &[u8],
    hash: KeyHash,
    expiry: i64,
) -> (Vec<u8>, Vec<u8>) {
    filter.insert(hash, expiry);
    (
        keys::timed(keys::DEDUP, filter.bucket_start(expiry), &[key]),
        expiry.to_be_bytes().to_vec(),
    )
}

/// Records the bucket width a batch filed its keys with.
pub(crate) fn record_width(filter: &KeyFilter, writes: &mut StagedWrites) {
    writes.put(
        keys::DEDUP_WIDTH.to_vec(),
        filter.width().to_be_bytes().to_vec(),
    );
}
