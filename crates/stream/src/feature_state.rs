//! The state of rolling features: each key's recent rows, one value,
//! filed under the start of the time bucket of its newest row, `(bucket
//! start, key) -> rows`, as dedup files its keys by expiry: a bucket wholly
//! `range` or more behind the watermark is one range delete, and a key that
//! stays in its bucket costs one write a batch (a key moves at most once
//! per bucket width). Buckets are half the first range wide (at least a
//! second), so a quiet key's rows stay on disk at most one bucket width
//! after they expire; they are never read into a frame, which only reaches
//! rows after the last watermark minus `range`. Filing by the newest time,
//! not by the expiry, keeps the layout independent of `range`: a later
//! range expires the keys by itself. The width is stored, and a later range
//! keeps the width the state was filed with.
//!
//! Earlier versions kept a key's rows by key and indexed it by its newest
//! time (three writes a batch): the first batch of an operator that finds
//! such state moves it to this layout, and looks its keys up in both.

use std::collections::HashMap;

use tributary_core::{StagedWrites, StateStore};

use crate::aggregate::{Input, Reader};
use crate::config::Features;
use crate::error::{Result, StreamError};
use crate::key_filter::{
    KeyFilter, KeyHash, delete_buckets_before, load_shifted, lookup_in_buckets,
};
use crate::keys;
use crate::prepare::AggInput;

/// A stored row of a key: its event time and its aggregate inputs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub time: i64,
    pub inputs: Vec<Stored>,
}

/// One aggregate input of a stored row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stored {
    /// `count` of rows: nothing to keep.
    Row,
    Null,
    Int(i64),
    Float(f64),
    /// In Arrow's row format.
    Value(Vec<u8>),
}

impl Stored {
    pub(crate) fn of(input: Input<'_>) -> Stored {
        match input {
            Input::Row => Stored::Row,
            Input::Null(_) => Stored::Null,
            Input::Int(v) => Stored::Int(v),
            Input::Float(v) => Stored::Float(v),
            Input::Value(v) => Stored::Value(v.to_vec()),
        }
    }

    pub(crate) fn input(&self) -> Input<'_> {
        match self {
            Stored::Row => Input::Row,
            Stored::Null => Input::Null(&[]),
            Stored::Int(v) => Input::Int(*v),
            Stored::Float(v) => Input::Float(*v),
            Stored::Value(v) => Input::Value(v),
        }
    }
}

pub(crate) fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 24);
    for e in entries {
        out.extend_from_slice(&e.time.to_be_bytes());
        for input in &e.inputs {
            match input {
                Stored::Row => {}
                Stored::Null => out.push(0),
                Stored::Int(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_be_bytes());
                }
                Stored::Float(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_be_bytes());
                }
                Stored::Value(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
    }
    out
}

/// How each aggregate's input is stored, from the function and input type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Row,
    Int,
    Float,
    Value,
}

pub(crate) fn kinds_of(inputs: &[AggInput]) -> Vec<Kind> {
    inputs
        .iter()
        .map(|i| match i {
            AggInput::Rows => Kind::Row,
            AggInput::Ints(_) => Kind::Int,
            AggInput::Floats(_) => Kind::Float,
            AggInput::Values { .. } => Kind::Value,
        })
        .collect()
}

/// The time of the newest row in a stored value, whose inputs are typed
/// as `rows`' columns.
#[cfg(test)]
pub(crate) fn newest_time(
    features: &Features,
    rows: &arrow::array::RecordBatch,
    value: &[u8],
) -> Option<i64> {
    let (inputs, _) = crate::prepare::agg_inputs(&features.aggregations, rows).ok()?;
    let entries = decode_entries(value, &kinds_of(&inputs)).ok()?;
    entries.last().map(|e| e.time)
}

pub(crate) fn decode_entries(bytes: &[u8], kinds: &[Kind]) -> Result<Vec<Entry>> {
    let mut r = Reader::new(bytes);
    let mut entries = Vec::new();
    while !r.is_done() {
        let time = r.i64()?;
        let inputs = kinds
            .iter()
            .map(|k| {
                Ok(match k {
                    Kind::Row => Stored::Row,
                    _ if r.u8()? == 0 => Stored::Null,
                    Kind::Int => Stored::Int(r.i64()?),
                    Kind::Float => Stored::Float(r.f64()?),
                    Kind::Value => Stored::Value(r.bytes()?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        entries.push(Entry { time, inputs });
    }
    Ok(entries)
}

/// The filter of the keys in the state, filed by their newest row, and whether
/// this batch must also look keys up in the earlier layout (it is moving
/// them).
pub(crate) fn load(
    features: &Features,
    store: &dyn StateStore,
    writes: &mut StagedWrites,
) -> Result<(KeyFilter, bool)> {
    let stored_width = keys::read_time(store, keys::FEATURE_WIDTH)?;
    let width = stored_width.unwrap_or((features.range / 2).max(1_000_000));
    let mut filter = load_shifted(store, keys::FEATURES, 8, width, 0)?;
    if stored_width.is_none() {
        writes.put(
            keys::FEATURE_WIDTH.to_vec(),
            filter.width().to_be_bytes().to_vec(),
        );
    }
    let (rows, newest) = (keys::FEATURE_ROWS, keys::FEATURE_NEWEST);
    let newest_of: HashMap<Vec<u8>, i64> = store
        .scan(&[newest], &[newest + 1])?
        .into_iter()
        .filter_map(|(k, _)| Some((k.get(9..)?.to_vec(), keys::time_of(&k)?)))
        .collect();
    let earlier = store.scan(&[rows], &[rows + 1])?;
    let moving = !earlier.is_empty();
    for (k, v) in earlier {
        let key = &k[1..];
        let newest = newest_of.get(key).ok_or_else(|| {
            StreamError::Corrupt("a features key of the earlier layout has no index entry".into())
        })?;
        filter.insert(KeyHash::of(key), *newest);
        writes.put(
            keys::timed(keys::FEATURES, filter.bucket_start(*newest), &[key]),
            v,
        );
    }
    if moving || !newest_of.is_empty() {
        for tag in [rows, newest] {
            writes.delete_range(vec![tag], vec![tag + 1]);
        }
    }
    Ok((filter, moving))
}

/// Forgets the buckets of keys whose newest row is `range` or more before
/// `watermark`: no row after the watermark can reach them. The batch's own
/// rows may (they are only after the previous watermark): they read the
/// committed state, and the key filter forgets the keys after them
/// ([`forget_in_filter`]).
pub(crate) fn expire(
    features: &Features,
    filter: &KeyFilter,
    watermark: Option<i64>,
    writes: &mut StagedWrites,
) {
    if let Some(first_kept) = first_kept(features, watermark) {
        delete_buckets_before(filter, keys::FEATURES, first_kept, writes);
    }
}

/// Drops from `filter` the keys [`expire`] forgot, once the batch's rows
/// have looked theirs up.
pub(crate) fn forget_in_filter(
    features: &Features,
    filter: &mut KeyFilter,
    watermark: Option<i64>,
) {
    if let Some(first_kept) = first_kept(features, watermark) {
        filter.expire(first_kept);
    }
}

/// The oldest newest-row time a key must have to be kept under
/// `watermark`: a row after it reaches back `range`.
fn first_kept(features: &Features, watermark: Option<i64>) -> Option<i64> {
    watermark.map(|w| w.saturating_sub(features.range).saturating_add(1))
}

/// The keys in the state: a filter of them, and whether this batch must
/// also look them up in the earlier layout (it is moving them).
pub(crate) struct InState<'a> {
    pub filter: &'a mut KeyFilter,
    pub moving: bool,
}

/// A key's stored rows, and the bucket they are filed in (`None`: in the
/// earlier layout).
pub(crate) type Found = Option<(Option<i64>, Vec<u8>)>;

/// Each key's stored rows, probing only the buckets `filter` may hold it
/// in.
pub(crate) fn lookup(
    store: &dyn StateStore,
    filter: &KeyFilter,
    order: &[&[u8]],
    hashes: &[KeyHash],
    moving: bool,
) -> Result<Vec<Found>> {
    let earlier = moving.then_some(keys::FEATURE_ROWS);
    let mut found = vec![None; order.len()];
    for (n, bucket, v) in lookup_in_buckets(store, filter, keys::FEATURES, order, hashes, earlier)?
    {
        found[n] = Some((bucket, v));
    }
    Ok(found)
}

/// Refuses inputs whose type differs from the stored rows' (their values
/// would not compare), and records the types the first time.
pub(crate) fn check_types(
    store: &dyn StateStore,
    types: &[Option<arrow::datatypes::DataType>],
    writes: &mut StagedWrites,
) -> Result<()> {
    let text: String = types
        .iter()
        .map(|t| t.as_ref().map_or("-".to_string(), |t| t.to_string()))
        .collect::<Vec<_>>()
        .join("\t");
    match store.get(keys::FEATURE_TYPES)? {
        Some(stored) if stored == text.as_bytes() => Ok(()),
        Some(stored) => Err(StreamError::Spec(format!(
            "features: the aggregated columns were of types [{}] in earlier batches and are \
             [{}] now; the stored rows cannot be aggregated with them (reset the pipeline's \
             state to start the features afresh)",
            String::from_utf8_lossy(&stored).replace('\t', ", "),
            text.replace('\t', ", ")
        ))),
        None => {
            writes.put(keys::FEATURE_TYPES.to_vec(), text.into_bytes());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rows_round_trip_through_bytes() {
        let kinds = [Kind::Row, Kind::Int, Kind::Float, Kind::Value, Kind::Value];
        let entries = vec![
            Entry {
                time: -3,
                inputs: vec![
                    Stored::Row,
                    Stored::Int(i64::MIN),
                    Stored::Float(2.5),
                    Stored::Value(vec![1, 2, 3]),
                    Stored::Null,
                ],
            },
            Entry {
                time: 7,
                inputs: vec![
                    Stored::Row,
                    Stored::Null,
                    Stored::Null,
                    Stored::Value(vec![]),
                    Stored::Value(vec![9]),
                ],
            },
        ];
        let bytes = encode_entries(&entries);
        assert_eq!(decode_entries(&bytes, &kinds).unwrap(), entries);
        // Truncated state is an error, not a panic.
        assert!(decode_entries(&bytes[..bytes.len() - 1], &kinds).is_err());
    }
}
