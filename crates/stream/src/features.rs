//! Rolling features: each row gets the aggregates of its key's rows whose
//! event times lie in `[t - range, t]` and that were read before it (or are
//! it), the streaming form of SQL's `RANGE BETWEEN range PRECEDING AND
//! CURRENT ROW`. A key's recent rows are one state value (see
//! `feature_state`), rewritten when the key has rows in a batch.
//!
//! Invariant: after batch N, every row of a key with an event time after
//! N's watermark minus `range` is stored. Rows of batch N+1 are after N's
//! watermark (older ones are late), so their frames only reach stored rows.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use tributary_core::{StagedWrites, StateStore};

use crate::aggregate::{Acc, Input, aggregate_column};
use crate::config::{AggregateFunction, Features};
use crate::error::{Result, StreamError};
use crate::feature_state::{InState, KeyRows, Kind, check_types, kinds_of, lookup};
use crate::key_filter::{KeyFilter, KeyHash};
use crate::keys;
use crate::prepare::{AggInput, agg_inputs, group_keys, output_type};

/// The hasher of per-batch maps: fast; their order is never relied on.
type FastHash = foldhash::fast::RandomState;

/// `rows` (the batch's kept rows, in Kafka order) with their features
/// after their columns. `times`: their event times. Stages the keys' new
/// stored rows, trimmed to what rows after `watermark` can reach.
pub(crate) fn attach(
    features: &Features,
    store: &dyn StateStore,
    in_state: InState<'_>,
    rows: &RecordBatch,
    times: &[i64],
    watermark: Option<i64>,
    writes: &mut StagedWrites,
) -> Result<RecordBatch> {
    let InState { filter, moving } = in_state;
    if let Some(a) = features.aggregations.iter().find(|a| {
        matches!(
            a.function,
            AggregateFunction::First | AggregateFunction::Last
        )
    }) {
        return Err(StreamError::Spec(format!(
            "feature {:?}: {} is not a rolling feature",
            a.name,
            a.function.name()
        )));
    }
    let (_, groups) = group_keys(rows, &features.group_by)?;
    let (inputs, input_types) = agg_inputs(&features.aggregations, rows)?;
    check_types(store, &input_types, writes)?;
    let kinds = kinds_of(&inputs);
    let template: Vec<Acc> = features
        .aggregations
        .iter()
        .zip(&kinds)
        .map(|(a, k)| Acc::new(a.function, *k == Kind::Float))
        .collect();

    // Each key's rows, keys numbered in order of first appearance: key
    // `k`'s rows are `members[starts[k]..starts[k + 1]]`, in Kafka order
    // (one list for all keys, not one allocation per key).
    let mut order: Vec<&[u8]> = Vec::new();
    let mut numbers: HashMap<&[u8], usize, FastHash> =
        HashMap::with_capacity_and_hasher(rows.num_rows(), FastHash::default());
    let key_of: Vec<usize> = (0..rows.num_rows())
        .map(|i| {
            let key = groups.get(i);
            *numbers.entry(key).or_insert_with(|| {
                order.push(key);
                order.len() - 1
            })
        })
        .collect();
    drop(numbers);
    let mut starts = vec![0; order.len() + 1];
    for &k in &key_of {
        starts[k + 1] += 1;
    }
    for k in 0..order.len() {
        starts[k + 1] += starts[k];
    }
    let mut members = vec![0; key_of.len()];
    let mut next = starts.clone();
    for (i, &k) in key_of.iter().enumerate() {
        members[next[k]] = i;
        next[k] += 1;
    }
    let hashes: Vec<KeyHash> = order.iter().map(|k| KeyHash::of(k)).collect();
    let cx = Context {
        features,
        store,
        filter,
        moving,
        kinds: &kinds,
        template: &template,
        inputs: &inputs,
        times,
        keys: &order,
        hashes: &hashes,
        members: &members,
        starts: &starts,
        horizon: watermark.map_or(i64::MIN, |w| w.saturating_sub(features.range)),
    };
    // Keys are independent: a large batch's are split in two, one share
    // per core (RocksDB's reads are thread-safe).
    let shares = if order.len() >= SPLIT_FROM_KEYS {
        let half = order.len() / 2;
        std::thread::scope(|s| {
            let other = s.spawn(|| cx.share(half..order.len()));
            let mine = cx.share(0..half);
            let other = other
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            [mine, other]
        })
    } else {
        [cx.share(0..order.len()), Ok(Share::default())]
    };
    let [mine, other] = shares;
    let mut shares = [mine?, other?];
    for share in &mut shares {
        for (hash, newest) in share.filed.drain(..) {
            filter.insert(hash, newest);
        }
    }
    // In key order: RocksDB inserts sorted keys into its memtable several
    // times faster than random ones. Each share sorted its own; no two
    // writes share a key.
    let [mine, other] = &mut shares;
    writes.reserve(mine.writes.len() + other.writes.len());
    let mut mine = std::mem::take(&mut mine.writes).into_iter().peekable();
    let mut other = std::mem::take(&mut other.writes).into_iter().peekable();
    while let Some((k, v)) = match (mine.peek(), other.peek()) {
        (Some(a), Some(b)) if b.0 < a.0 => other.next(),
        (Some(_), _) => mine.next(),
        (None, _) => other.next(),
    } {
        match v {
            Some(v) => writes.put(k, v),
            None => writes.delete(k),
        }
    }

    // Each row's accumulators, where its share left them (not copied
    // into one array: they are large, and a batch's are many).
    let n = template.len();
    let mut row_accs: Vec<&[Acc]> = vec![&[]; rows.num_rows()];
    for share in &shares {
        for (&i, accs) in share.rows.iter().zip(share.accs.chunks_exact(n.max(1))) {
            row_accs[i] = accs;
        }
    }
    let schema = rows.schema();
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    for (a, spec) in features.aggregations.iter().enumerate() {
        let t = output_type(spec, input_types[a].as_ref());
        let column_accs: Vec<&Acc> = row_accs.iter().map(|accs| &accs[a]).collect();
        columns.push(aggregate_column(spec, &t, &column_accs)?);
        fields.push(Arc::new(Field::new(&spec.name, t, true)));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )?)
}

/// Batches with at least this many keys are split across two threads (in
/// tests, nearly all, so the oracle tests check the split).
const SPLIT_FROM_KEYS: usize = if cfg!(test) { 2 } else { 20_000 };

/// What computing features needs of a batch, shared by its key shares.
struct Context<'a> {
    features: &'a Features,
    store: &'a dyn StateStore,
    filter: &'a KeyFilter,
    moving: bool,
    kinds: &'a [Kind],
    template: &'a [Acc],
    inputs: &'a [AggInput],
    times: &'a [i64],
    /// The batch's keys, numbered in order of first appearance, and their
    /// hashes.
    keys: &'a [&'a [u8]],
    hashes: &'a [KeyHash],
    /// The rows of each key number, from `starts[k]` to `starts[k + 1]`.
    members: &'a [usize],
    starts: &'a [usize],
    /// Stored rows at or before it are no longer reachable.
    horizon: i64,
}

/// The features of one share of a batch's keys.
#[derive(Default)]
struct Share {
    /// The rows whose accumulators `accs` holds, in its order.
    rows: Vec<usize>,
    /// Their accumulators, flat: one per aggregation and row.
    accs: Vec<Acc>,
    /// The keys' new state (`None`: delete), in key order.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The keys to file in the filter: their hash and newest row's time.
    filed: Vec<(KeyHash, i64)>,
}

impl Context<'_> {
    /// Looks up the keys numbered in `numbers`, aggregates each of their
    /// rows' frames and stages their stored rows, trimmed to what rows after
    /// the watermark reach.
    fn share(&self, numbers: Range<usize>) -> Result<Share> {
        let filter = self.filter;
        let (keys, hashes) = (&self.keys[numbers.clone()], &self.hashes[numbers.clone()]);
        let found = lookup(self.store, filter, keys, hashes, self.moving)?;
        // Sized once: the accumulators of a large share's rows are many
        // megabytes, and each doubling would copy them to fresh pages.
        let row_count = self.starts[numbers.end] - self.starts[numbers.start];
        let mut share = Share {
            rows: Vec::with_capacity(row_count),
            accs: Vec::with_capacity(row_count * self.template.len()),
            writes: Vec::with_capacity(keys.len()),
            filed: Vec::with_capacity(keys.len()),
        };
        // Scratch space, reused by each key in turn.
        let mut key_rows = KeyRows::new(self.kinds.len());
        let mut kept = Vec::new();
        let mut distinct = Vec::new();
        for (k, ((key, found), hash)) in numbers.zip(keys.iter().zip(&found).zip(hashes)) {
            key_rows.clear();
            let filed = match found {
                Some((bucket, bytes)) => {
                    key_rows.decode(bytes, self.kinds)?;
                    // A key of the earlier layout is being filed by its newest row.
                    let newest = key_rows.times.last().copied().unwrap_or(0);
                    Some(bucket.unwrap_or_else(|| filter.bucket_start(newest)))
                }
                None => None,
            };
            let stored = key_rows.len();
            let members = &self.members[self.starts[k]..self.starts[k + 1]];
            for (pos, &i) in members.iter().enumerate() {
                share.rows.push(i);
                self.frame(&key_rows, members, pos, &mut distinct, &mut share.accs);
            }
            for &i in members.iter().filter(|&&i| self.times[i] > self.horizon) {
                key_rows.push(self.times[i], self.inputs.iter().map(|input| input.at(i)));
            }
            // The rows still reachable, in time order: the stored ones are,
            // and a stable sort keeps rows of one time in the order read.
            let times = &key_rows.times;
            kept.clear();
            kept.extend(times[..stored].partition_point(|&t| t <= self.horizon)..times.len());
            kept.sort_by_key(|&r| times[r]);
            let bucket = kept.last().map(|&r| {
                share.filed.push((*hash, times[r]));
                filter.bucket_start(times[r])
            });
            if let Some(old) = filed
                && Some(old) != bucket
            {
                share
                    .writes
                    .push((keys::timed(keys::FEATURES, old, &[key]), None));
            }
            if let Some(b) = bucket {
                share.writes.push((
                    keys::timed(keys::FEATURES, b, &[key]),
                    Some(key_rows.encode(&kept)),
                ));
            }
        }
        share.writes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(share)
    }

    /// Appends to `out` the aggregates of the frame of `members[pos]`: the
    /// key's first `stored` rows (in time order) and its rows of this batch
    /// up to it, within `range` before it. A distinct count is counted
    /// from the values in `distinct` (scratch space, reused by the key's
    /// rows), not gathered into a set: it is output, never kept, and a set
    /// costs an allocation per value.
    fn frame<'s>(
        &'s self,
        stored: &KeyRows<'s>,
        members: &[usize],
        pos: usize,
        distinct: &mut Vec<&'s [u8]>,
        out: &mut Vec<Acc>,
    ) {
        let times = self.times;
        let t = times[members[pos]];
        let from = t.saturating_sub(self.features.range);
        let first = stored.times.partition_point(|&s| s < from);
        let last = stored.times.partition_point(|&s| s <= t);
        let stored_rows = first..last;
        let batch = members[..=pos]
            .iter()
            .filter(|&&j| (from..=t).contains(&times[j]));
        let base = out.len();
        out.extend_from_slice(self.template);
        for (a, acc) in out[base..].iter_mut().enumerate() {
            let input = &self.inputs[a];
            if let Acc::DistinctSet(_) = acc {
                let value = |i: Input<'s>| match i {
                    Input::Value(v) => Some(v),
                    _ => None,
                };
                distinct.clear();
                distinct.extend(
                    stored_rows
                        .clone()
                        .filter_map(|r| value(stored.input(r, a))),
                );
                distinct.extend(batch.clone().filter_map(|&j| value(input.at(j))));
                distinct.sort_unstable();
                distinct.dedup();
                *acc = Acc::Count(distinct.len() as i64);
                continue;
            }
            // In time order, then the batch's rows in Kafka order: float
            // sums depend on it.
            for r in stored_rows.clone() {
                acc.add(&stored.input(r, a), stored.times[r], (0, 0, 0));
            }
            for &j in batch.clone() {
                acc.add(&input.at(j), times[j], (0, 0, 0));
            }
        }
    }
}
