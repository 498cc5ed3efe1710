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

use crate::aggregate::{Input, Reader, put_bytes};
use crate::config::Features;
use crate::error::{Result, StreamError};
use crate::key_filter::{
    KeyFilter, KeyHash, delete_buckets_before, load_shifted, lookup_in_buckets,
};
use crate::keys;
use crate::prepare::AggInput;

/// A key's rows, stored and new: their event times and aggregate inputs,
/// flat (row `r`'s inputs are `inputs[r * width..][..width]`). Values
/// borrow the stored bytes or the batch's columns, so a key's rows are
/// decoded and re-encoded without an allocation per row or value; one
/// `KeyRows` serves a batch's keys in turn.
pub(crate) struct KeyRows<'a> {
    width: usize,
    pub times: Vec<i64>,
    inputs: Vec<Input<'a>>,
}

impl<'a> KeyRows<'a> {
    /// No rows, of `width` aggregate inputs each.
    pub(crate) fn new(width: usize) -> KeyRows<'a> {
        KeyRows {
            width,
            times: Vec::new(),
            inputs: Vec::new(),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.times.clear();
        self.inputs.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    /// Aggregate `a`'s input of row `row`.
    pub(crate) fn input(&self, row: usize, a: usize) -> Input<'a> {
        self.inputs[row * self.width + a]
    }

    /// Appends a row; `inputs` yields its `width` aggregate inputs.
    pub(crate) fn push(&mut self, time: i64, inputs: impl IntoIterator<Item = Input<'a>>) {
        self.times.push(time);
        self.inputs.extend(inputs);
        debug_assert_eq!(self.inputs.len(), self.times.len() * self.width);
    }

    /// Appends the rows encoded in `bytes`, whose inputs are stored as
    /// `kinds` say.
    pub(crate) fn decode(&mut self, bytes: &'a [u8], kinds: &[Kind]) -> Result<()> {
        let mut r = Reader::new(bytes);
        while !r.is_done() {
            self.times.push(r.i64()?);
            for kind in kinds {
                self.inputs.push(match kind {
                    Kind::Row => Input::Row,
                    _ if r.u8()? == 0 => Input::Null(&[]),
                    Kind::Int => Input::Int(r.i64()?),
                    Kind::Float => Input::Float(r.f64()?),
                    Kind::Value => Input::Value(r.slice()?),
                });
            }
        }
        Ok(())
    }

    /// The rows numbered in `order`, encoded in that order.
    pub(crate) fn encode(&self, order: &[usize]) -> Vec<u8> {
        let mut out = Vec::with_capacity(order.len() * (8 + 9 * self.width));
        for &row in order {
            out.extend_from_slice(&self.times[row].to_be_bytes());
            for input in &self.inputs[row * self.width..][..self.width] {
                match input {
                    Input::Row => {}
                    Input::Null(_) => out.push(0),
                    Input::Int(v) => {
                        out.push(1);
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    Input::Float(v) => {
                        out.push(1);
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    Input::Value(v) => {
                        out.push(1);
                        put_bytes(&mut out, v);
                    }
                }
            }
        }
        out
    }
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
    let kinds = kinds_of(&inputs);
    let mut stored = KeyRows::new(kinds.len());
    stored.decode(value, &kinds).ok()?;
    stored.times.last().copied()
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
        let mut rows = KeyRows::new(kinds.len());
        rows.push(
            7,
            [
                Input::Row,
                Input::Null(&[]),
                Input::Null(&[]),
                Input::Value(&[]),
                Input::Value(&[9]),
            ],
        );
        rows.push(
            -3,
            [
                Input::Row,
                Input::Int(i64::MIN),
                Input::Float(2.5),
                Input::Value(&[1, 2, 3]),
                Input::Null(&[]),
            ],
        );
        // Encoded in the order asked for, and only the rows asked for.
        let bytes = rows.encode(&[1, 0]);
        let mut decoded = KeyRows::new(kinds.len());
        decoded.decode(&bytes, &kinds).unwrap();
        assert_eq!(decoded.times, [-3, 7]);
        for a in 0..kinds.len() {
            assert_eq!(decoded.input(0, a), rows.input(1, a));
            assert_eq!(decoded.input(1, a), rows.input(0, a));
        }
        let only_second = rows.encode(&[1]);
        let mut first = KeyRows::new(kinds.len());
        first.decode(&only_second, &kinds).unwrap();
        assert_eq!(first.times, [-3]);
        // Truncated state is an error, not a panic.
        assert!(
            KeyRows::new(kinds.len())
                .decode(&bytes[..bytes.len() - 1], &kinds)
                .is_err()
        );
    }
}
