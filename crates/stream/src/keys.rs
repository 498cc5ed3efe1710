//! The operators' state keys. The first byte names what a key holds; keys
//! that expire start with their time, encoded so byte order is time order,
//! which makes "everything older than the watermark" one key range.

use tributary_core::{StateStore, encode_time};

use crate::error::{Result, StreamError};

/// The version of the layout of the keys below that the state was last
/// written in. Absent in state from before versions were recorded, whose
/// layouts this version moves when met (dedup, features) or refuses by
/// name (windows kept per window).
pub(crate) const LAYOUT_VERSION: &[u8] = &[0x01, b'V'];
/// The layout this version writes: dedup and features keys filed by time
/// bucket, windows as panes. State in a later layout is refused, not
/// misread: an older version would miss the keys it does not know.
pub(crate) const LAYOUT: u64 = 1;
/// The greatest event time seen in committed batches.
pub(crate) const MAX_EVENT_TIME: &[u8] = &[0x01, b'M'];
/// The watermark the last committed batch ran with: the next batch's rows
/// are late against it.
pub(crate) const LAST_WATERMARK: &[u8] = &[0x01, b'L'];
/// The types of group keys and aggregate inputs the windows hold.
pub(crate) const WINDOW_TYPES: &[u8] = &[0x01, b'T'];
/// The types of the features' aggregated columns.
pub(crate) const FEATURE_TYPES: &[u8] = &[0x01, b'F'];
/// The width of dedup's expiry buckets, in microseconds.
pub(crate) const DEDUP_WIDTH: &[u8] = &[0x01, b'D'];
/// The width of the features' time buckets, in microseconds.
pub(crate) const FEATURE_WIDTH: &[u8] = &[0x01, b'G'];
/// Dedup: (start of the key's expiry bucket, key) -> its expiry.
pub(crate) const DEDUP: u8 = b'B';
/// What earlier versions kept per dedup key, moved to `DEDUP` when met:
/// key -> its expiry, and (expiry, key) -> ().
pub(crate) const DEDUP_KEY: u8 = b'K';
pub(crate) const DEDUP_EXPIRY: u8 = b'D';
/// Tumbling and sliding windows' panes: (pane start, group) ->
/// accumulators (see `panes`).
pub(crate) const PANE: u8 = b'P';
/// What earlier versions kept per window, before panes: refused, not read.
pub(crate) const LEGACY_WINDOW: u8 = b'W';
pub(crate) const LEGACY_DISTINCT: u8 = b'V';
/// Group -> its open sessions.
pub(crate) const SESSIONS: u8 = b'S';
/// Session end index: (session end, group) -> ().
pub(crate) const SESSION_END: u8 = b'E';
/// Features: (start of the bucket of the key's newest row, key) -> its
/// recent rows.
pub(crate) const FEATURES: u8 = b'G';
/// What earlier versions kept per features key, moved to `FEATURES` when
/// met: key -> its recent rows, and (its newest row's time, key) -> ().
pub(crate) const FEATURE_ROWS: u8 = b'R';
pub(crate) const FEATURE_NEWEST: u8 = b'X';

/// Every tag an operator writes, for tests that look for leftovers.
#[cfg(test)]
pub(crate) const ALL_TAGS: &[u8] = &[
    DEDUP,
    DEDUP_KEY,
    DEDUP_EXPIRY,
    PANE,
    SESSIONS,
    SESSION_END,
    FEATURES,
    FEATURE_ROWS,
    FEATURE_NEWEST,
];

pub(crate) fn tagged(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

pub(crate) fn timed(tag: u8, time: i64, rest: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + rest.iter().map(|r| r.len()).sum::<usize>());
    k.push(tag);
    k.extend_from_slice(&encode_time(time));
    for r in rest {
        k.extend_from_slice(r);
    }
    k
}

/// The key range of `tag` keys whose leading time is below `time`.
pub(crate) fn older_than(tag: u8, time: i64) -> (Vec<u8>, Vec<u8>) {
    (timed(tag, i64::MIN, &[]), timed(tag, time, &[]))
}

/// The leading time of a timed key.
pub(crate) fn time_of(key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(tributary_core::decode_time(bytes))
}

/// A time stored as a value: the max event time, the last watermark, a
/// dedup expiry or bucket width; also the layout version, stored the same
/// way.
pub(crate) fn stored_time(value: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| StreamError::Corrupt("a stored time is not 8 bytes".into()))?;
    Ok(i64::from_be_bytes(bytes))
}

/// The time stored under `key`, if any.
pub(crate) fn read_time(store: &dyn StateStore, key: &[u8]) -> Result<Option<i64>> {
    store.get(key)?.map(|v| stored_time(&v)).transpose()
}
