//! Property tests: random out-of-order streams with duplicates and late
//! rows, cut into random batches, run through the operators and through a
//! plain oracle that applies the documented rules (docs/event-time.md) by
//! brute force. Both must give identical output, batch by batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::{AggregateFunction as F, Aggregation, OutputMode};
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType,
};
use tributary_state::{MemoryStore, RocksOptions, RocksStore, StateStore};

use crate::{Features, Operator, OperatorConfig, Watermarks, Window};

const MINUTE: i64 = 60_000_000;

/// A small deterministic generator (xorshift64*), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Event {
    partition: i32,
    offset: i64,
    ts: Option<i64>,
    id: i64,
    user: String,
    card: i64,
    amount: Option<f64>,
    merchant: Option<String>,
}

/// A cell of an output row, comparable across implementations.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum V {
    Null,
    I(i64),
    F(f64),
    S(String),
}

fn stream(rng: &mut Rng) -> Vec<Event> {
    let partitions = 1 + rng.below(3) as i32;
    let mut offsets = vec![0i64; partitions as usize];
    let mut clock = 1_700_000_000_000_000i64 + rng.below(1000) as i64 * MINUTE;
    let mut out: Vec<Event> = Vec::new();
    for _ in 0..(20 + rng.below(150)) {
        // Times in steps of 10 s: watermarks, window ends and session gaps
        // meet exact ties often.
        clock += rng.below(9) as i64 * 10_000_000;
        let p = rng.below(partitions as u64) as i32;
        let offset = offsets[p as usize];
        offsets[p as usize] += 1;
        // Duplicates repeat an earlier event's key and payload.
        if !out.is_empty() && rng.chance(15) {
            let mut e = out[rng.below(out.len() as u64) as usize].clone();
            e.partition = p;
            e.offset = offset;
            if rng.chance(50) {
                e.ts = e.ts.map(|t| t + rng.below(3 * MINUTE as u64) as i64);
            }
            out.push(e);
            continue;
        }
        let ts = if rng.chance(2) {
            None
        } else if rng.chance(10) {
            // Far behind: late for most watermarks.
            Some(clock - rng.below(240) as i64 * 10_000_000)
        } else {
            // Out of order within a few minutes.
            Some(clock - rng.below(24) as i64 * 10_000_000)
        };
        out.push(Event {
            partition: p,
            offset,
            ts,
            id: rng.below(10_000) as i64,
            user: format!("u{}", rng.below(4)),
            card: rng.below(50) as i64 - 10,
            amount: (!rng.chance(10)).then(|| rng.below(1000) as f64),
            merchant: (!rng.chance(10)).then(|| format!("m{}", rng.below(6))),
        });
    }
    out
}

/// Cuts the stream into batches; each batch's rows are shuffled and
/// chunked, as reads interleave partitions differently on every replay.
fn batches(rng: &mut Rng, events: &[Event]) -> Vec<Vec<Vec<Event>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let n = (1 + rng.below(40) as usize).min(events.len() - i);
        let mut batch: Vec<Event> = events[i..i + n].to_vec();
        for k in (1..batch.len()).rev() {
            batch.swap(k, rng.below(k as u64 + 1) as usize);
        }
        let mut chunks = Vec::new();
        while !batch.is_empty() {
            let take = (1 + rng.below(batch.len() as u64) as usize).min(batch.len());
            chunks.push(batch.drain(..take).collect());
        }
        out.push(chunks);
        i += n;
        // Now and then a batch without rows (a quiet trigger).
        if rng.chance(10) {
            out.push(Vec::new());
        }
    }
    out
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("_p", DataType::Int32, false),
        Field::new("_o", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("card", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("merchant", DataType::Utf8, true),
    ]))
}

fn to_batch(events: &[Event]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(
            events.iter().map(|e| e.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.offset),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(events.iter().map(|e| e.ts)).with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.id))),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.user.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.card))),
        Arc::new(Float64Array::from_iter(events.iter().map(|e| e.amount))),
        Arc::new(StringArray::from_iter(
            events.iter().map(|e| e.merchant.as_deref()),
        )),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

fn aggregations() -> Vec<Aggregation> {
    let agg = |name: &str, function, column: Option<&str>| Aggregation {
        name: name.into(),
        function,
        column: column.map(Into::into),
    };
    vec![
        agg("rows", F::Count, None),
        agg("amounts", F::Count, Some("amount")),
        agg("merchants", F::CountDistinct, Some("merchant")),
        agg("total", F::Sum, Some("amount")),
        agg("card_sum", F::Sum, Some("card")),
        agg("min_merchant", F::Min, Some("merchant")),
        agg("max_amount", F::Max, Some("amount")),
        agg("mean", F::Avg, Some("amount")),
        agg("first_merchant", F::First, Some("merchant")),
        agg("last_amount", F::Last, Some("amount")),
    ]
}

fn config(window: Option<Window>, dedup: bool, mode: OutputMode, delay: i64) -> OperatorConfig {
    OperatorConfig {
        time_column: "ts".into(),
        partition_column: "_p".into(),
        offset_column: "_o".into(),
        hidden_columns: vec!["_p".into(), "_o".into()],
        watermark_delay: delay,
        dedup_keys: if dedup { vec!["id".into()] } else { vec![] },
        window,
        group_by: if window.is_some() {
            vec!["user".into()]
        } else {
            vec![]
        },
        aggregations: if window.is_some() {
            aggregations()
        } else {
            vec![]
        },
        output_mode: mode,
        features: None,
    }
}

fn cell(array: &ArrayRef, i: usize) -> V {
    if array.is_null(i) {
        return V::Null;
    }
    match array.data_type() {
        DataType::Int64 => V::I(array.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => {
            V::I(array.as_primitive::<arrow::datatypes::Int32Type>().value(i) as i64)
        }
        DataType::Float64 => V::F(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => V::S(array.as_string::<i32>().value(i).to_string()),
        DataType::Timestamp(..) => V::I(array.as_primitive::<TimestampMicrosecondType>().value(i)),
        t => panic!("unexpected output type {t}"),
    }
}

fn rows_of(batch: Option<&RecordBatch>) -> Vec<Vec<V>> {
    let Some(b) = batch else { return Vec::new() };
    let mut rows: Vec<Vec<V>> = (0..b.num_rows())
        .map(|i| b.columns().iter().map(|c| cell(c, i)).collect())
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows
}

/// What the oracle and the operator produce for one batch.
#[derive(Debug, PartialEq)]
struct BatchResult {
    rows: Vec<Vec<V>>,
    late: usize,
    duplicates: u64,
}

/// The documented rules, by brute force over kept rows.
struct Oracle {
    config: OperatorConfig,
    max_seen: Option<i64>,
    /// The watermark the previous batch closed windows with.
    last_watermark: Option<i64>,
    dedup: HashMap<i64, i64>,
    /// Fixed windows: (start, end, user) -> rows; sessions: user -> open rows.
    windows: BTreeMap<(i64, i64, String), Vec<(u64, Event)>>,
    open: BTreeMap<String, Vec<(u64, Event)>>,
    /// Every kept row so far, in the order read (features).
    history: Vec<Event>,
}

impl Oracle {
    fn new(config: OperatorConfig) -> Oracle {
        Oracle {
            config,
            max_seen: None,
            last_watermark: None,
            dedup: HashMap::new(),
            windows: BTreeMap::new(),
            open: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    fn batch(&mut self, batch_id: u64, events: &[Event]) -> BatchResult {
        let c = self.config.clone();
        // Spark's watermark: whole milliseconds of the greatest event time
        // of earlier batches, less the delay. Rows are late against the
        // previous batch's; windows close with this batch's.
        let late_wm = self.last_watermark;
        let w = self
            .max_seen
            .map(|m| m.div_euclid(1000) * 1000 - c.watermark_delay);
        let mut events = events.to_vec();
        events.sort_by_key(|e| (e.partition, e.offset));
        // Late: every window the row would update closed before this batch.
        let last_end = |t: i64| match c.window {
            _ if !c.dedup_keys.is_empty() => t,
            Some(Window::Sliding { size, slide }) => t.div_euclid(slide) * slide + size,
            Some(Window::Session { gap }) => t + gap,
            None => t,
        };
        let (on_time, late): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| {
            e.ts.is_some_and(|t| late_wm.is_none_or(|lw| last_end(t) > lw))
        });
        let mut kept = Vec::new();
        let mut duplicates = 0;
        if c.dedup_keys.is_empty() {
            kept = on_time.clone();
        } else {
            if let Some(lw) = late_wm {
                self.dedup.retain(|_, expiry| *expiry > lw);
            }
            for e in &on_time {
                match self.dedup.entry(e.id) {
                    std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(e.ts.unwrap() + c.watermark_delay);
                        kept.push(e.clone());
                    }
                }
            }
        }
        let update = c.output_mode == OutputMode::Update;
        let mut out: Vec<Vec<V>> = Vec::new();
        match c.window {
            None => {
                for e in &kept {
                    let mut row = vec![
                        V::I(e.ts.unwrap()),
                        V::I(e.id),
                        V::S(e.user.clone()),
                        V::I(e.card),
                        e.amount.map_or(V::Null, V::F),
                        e.merchant.clone().map_or(V::Null, V::S),
                    ];
                    if let Some(f) = &c.features {
                        // The key's rows read so far, this one included,
                        // within [t - range, t]: nothing is ever forgotten
                        // here, so the operator's expiry must not matter.
                        self.history.push(e.clone());
                        let t = e.ts.unwrap();
                        let frame: Vec<(u64, Event)> = self
                            .history
                            .iter()
                            .filter(|h| h.user == e.user)
                            .filter(|h| (t - f.range..=t).contains(&h.ts.unwrap()))
                            .map(|h| (0, h.clone()))
                            .collect();
                        let all = window_row(&(0, 0, String::new()), &frame);
                        // The window row's aggregates, without first / last.
                        row.extend_from_slice(&all[3..all.len() - 2]);
                    }
                    out.push(row);
                }
            }
            Some(Window::Sliding { size, slide }) => {
                let mut touched = BTreeSet::new();
                for e in &kept {
                    let t = e.ts.unwrap();
                    // Every aligned start whose window covers t and was
                    // open before this batch, by brute force.
                    let mut start = (t - size).div_euclid(slide) * slide;
                    while start <= t {
                        let open = late_wm.is_none_or(|lw| start + size > lw);
                        if start <= t && t < start + size && open {
                            let key = (start, start + size, e.user.clone());
                            self.windows
                                .entry(key.clone())
                                .or_default()
                                .push((batch_id, e.clone()));
                            touched.insert(key);
                        }
                        start += slide;
                    }
                }
                if update {
                    for key in &touched {
                        out.push(window_row(key, &self.windows[key]));
                    }
                }
                if let Some(w) = w {
                    let done: Vec<_> = self
                        .windows
                        .keys()
                        .filter(|(_, end, _)| *end <= w)
                        .cloned()
                        .collect();
                    for key in done {
                        let rows = self.windows.remove(&key).unwrap();
                        if !update {
                            out.push(window_row(&key, &rows));
                        }
                    }
                }
            }
            Some(Window::Session { gap }) => {
                for e in &kept {
                    self.open
                        .entry(e.user.clone())
                        .or_default()
                        .push((batch_id, e.clone()));
                }
                if let Some(w) = w {
                    for (user, rows) in self.open.iter_mut() {
                        let mut left = Vec::new();
                        for (start, end, members) in sessions_of(rows, gap) {
                            if end <= w {
                                out.push(window_row(&(start, end, user.clone()), &members));
                            } else {
                                left.extend(members);
                            }
                        }
                        *rows = left;
                    }
                }
            }
        }
        self.last_watermark = w.or(self.last_watermark);
        if let Some(m) = events.iter().filter_map(|e| e.ts).max() {
            self.max_seen = Some(self.max_seen.map_or(m, |s| s.max(m)));
        }
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        BatchResult {
            rows: out,
            late: late.len(),
            duplicates,
        }
    }
}

/// Sessions of a group's rows: sorted by time, a row at or before the
/// running session's end joins it.
/// A session: start, end and its rows with their batch ids.
type OracleSession = (i64, i64, Vec<(u64, Event)>);

fn sessions_of(rows: &[(u64, Event)], gap: i64) -> Vec<OracleSession> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|(_, e)| e.ts);
    let mut out: Vec<OracleSession> = Vec::new();
    for r in sorted {
        let t = r.1.ts.unwrap();
        match out.last_mut() {
            Some((_, end, members)) if t <= *end => {
                *end = (*end).max(t + gap);
                members.push(r);
            }
            _ => out.push((t, t + gap, vec![r])),
        }
    }
    out
}

/// A window's output row from its member rows, by the definitions.
fn window_row(key: &(i64, i64, String), rows: &[(u64, Event)]) -> Vec<V> {
    let amounts: Vec<f64> = rows.iter().filter_map(|(_, e)| e.amount).collect();
    let merchants: BTreeSet<&String> = rows
        .iter()
        .filter_map(|(_, e)| e.merchant.as_ref())
        .collect();
    let order = |(b, e): &(u64, Event)| (e.ts.unwrap(), *b, e.partition, e.offset);
    let first = rows.iter().min_by_key(|r| order(r)).unwrap();
    let last = rows.iter().max_by_key(|r| order(r)).unwrap();
    let opt_f = |v: Option<f64>| v.map_or(V::Null, V::F);
    vec![
        V::I(key.0),
        V::I(key.1),
        V::S(key.2.clone()),
        V::I(rows.len() as i64),
        V::I(amounts.len() as i64),
        V::I(merchants.len() as i64),
        opt_f((!amounts.is_empty()).then(|| amounts.iter().sum())),
        V::I(rows.iter().map(|(_, e)| e.card).sum()),
        merchants
            .iter()
            .next()
            .map_or(V::Null, |m| V::S(m.to_string())),
        opt_f(amounts.iter().cloned().reduce(f64::max)),
        opt_f((!amounts.is_empty()).then(|| amounts.iter().sum::<f64>() / amounts.len() as f64)),
        first.1.merchant.clone().map_or(V::Null, V::S),
        opt_f(last.1.amount),
    ]
}

/// Runs the operator over `batches`, committing each batch's state. With
/// `restart`, a new operator takes every batch, as after a restart: its
/// in-memory key filters are rebuilt from the store each time.
fn operate(
    config: &OperatorConfig,
    operator: &Operator,
    store: &mut dyn StateStore,
    batches: &[Vec<Vec<Event>>],
    restart: bool,
) -> Vec<BatchResult> {
    batches
        .iter()
        .enumerate()
        .map(|(n, chunks)| {
            let input: Vec<RecordBatch> = chunks.iter().map(|c| to_batch(c)).collect();
            let fresh;
            let operator = if restart {
                fresh = Operator::new(config.clone());
                &fresh
            } else {
                operator
            };
            let out = operator.process(store, n as u64, &input).unwrap();
            let result = BatchResult {
                rows: rows_of(out.rows.as_ref()),
                late: out.late.as_ref().map_or(0, |l| l.num_rows()),
                duplicates: out.duplicates,
            };
            assert_eq!(out.late_rows as usize, result.late);
            store.commit(n as u64, out.writes).unwrap();
            result
        })
        .collect()
}

fn check(
    config: OperatorConfig,
    seeds: std::ops::Range<u64>,
    store: &mut dyn FnMut() -> Box<dyn StateStore>,
) {
    for seed in seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let events = stream(&mut rng);
        let cut = batches(&mut rng, &events);
        let mut oracle = Oracle::new(config.clone());
        let expected: Vec<BatchResult> = cut
            .iter()
            .enumerate()
            .map(|(n, chunks)| oracle.batch(n as u64, &chunks.concat()))
            .collect();
        let operator = Operator::new(config.clone());
        let restarted = operate(&config, &operator, store().as_mut(), &cut, true);
        for (n, (g, e)) in restarted.iter().zip(&expected).enumerate() {
            assert_eq!(
                g, e,
                "seed {seed}, batch {n}, restarted each batch, config {config:?}"
            );
        }
        let mut s = store();
        let got = operate(&config, &operator, s.as_mut(), &cut, false);
        for (n, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "seed {seed}, batch {n}, config {config:?}");
        }
        // The stream's end: a watermark past everything closes every
        // window and expires every key, leaving no operator state behind.
        let last = operator
            .process_at(
                s.as_ref(),
                cut.len() as u64,
                &[],
                Watermarks::PAST_EVERYTHING,
            )
            .unwrap();
        s.commit(cut.len() as u64, last.writes).unwrap();
        for tag in crate::keys::ALL_TAGS {
            let left = s.scan(&[*tag], &[*tag + 1]).unwrap();
            assert!(
                left.is_empty(),
                "seed {seed}: {} keys of tag {} left",
                left.len(),
                *tag as char
            );
        }
    }
}

fn memory() -> Box<dyn StateStore> {
    Box::new(MemoryStore::new())
}

fn windows() -> Vec<(&'static str, Window)> {
    vec![
        (
            "tumbling",
            Window::Sliding {
                size: 5 * MINUTE,
                slide: 5 * MINUTE,
            },
        ),
        (
            "sliding",
            Window::Sliding {
                size: 10 * MINUTE,
                slide: 2 * MINUTE,
            },
        ),
        (
            "sliding-uneven",
            Window::Sliding {
                size: 7 * MINUTE,
                slide: 3 * MINUTE,
            },
        ),
        ("session", Window::Session { gap: 3 * MINUTE }),
    ]
}

#[test]
fn dedup_matches_the_oracle() {
    for delay in [0, 2 * MINUTE, 10 * MINUTE] {
        check(
            config(None, true, OutputMode::Append, delay),
            0..60,
            &mut memory,
        );
    }
}

/// Operates `events` as batch `batch_id` with a fresh operator (as after a
/// restart) and commits its state.
fn fresh_batch(
    config: &OperatorConfig,
    store: &mut MemoryStore,
    batch_id: u64,
    events: &[Event],
) -> crate::Operated {
    let out = Operator::new(config.clone())
        .process(store, batch_id, &[to_batch(events)])
        .unwrap();
    store.commit(batch_id, out.writes.clone()).unwrap();
    out
}

#[test]
fn dedup_state_of_the_earlier_layout_is_moved_and_still_remembered() {
    use crate::keys::{DEDUP, DEDUP_EXPIRY, DEDUP_KEY, DEDUP_WIDTH, tagged, timed};
    let config = config(None, true, OutputMode::Append, 10 * MINUTE);
    let events = stream(&mut Rng(11));
    let (first, second) = events.split_at(events.len() / 2);
    let mut store = MemoryStore::new();
    fresh_batch(&config, &mut store, 0, first);
    // The same state, as versions before buckets kept it.
    let bucketed = store.scan(&[DEDUP], &[DEDUP + 1]).unwrap();
    assert!(!bucketed.is_empty());
    let mut earlier = store.clone();
    let mut writes = tributary_core::StagedWrites::default();
    writes.delete_range(vec![DEDUP], vec![DEDUP + 1]);
    writes.delete(DEDUP_WIDTH.to_vec());
    for (k, v) in &bucketed {
        let expiry = i64::from_be_bytes(v.as_slice().try_into().unwrap());
        writes.put(tagged(DEDUP_KEY, &k[9..]), v.clone());
        writes.put(timed(DEDUP_EXPIRY, expiry, &[&k[9..]]), Vec::new());
    }
    earlier.commit(1, writes).unwrap();

    let expected = fresh_batch(&config, &mut store, 2, second);
    let moved = fresh_batch(&config, &mut earlier, 2, second);
    assert!(expected.duplicates > 0, "the second half repeats keys");
    assert_eq!(moved.duplicates, expected.duplicates);
    assert_eq!(
        rows_of(moved.rows.as_ref()),
        rows_of(expected.rows.as_ref())
    );
    for tag in [DEDUP_KEY, DEDUP_EXPIRY] {
        assert!(earlier.scan(&[tag], &[tag + 1]).unwrap().is_empty());
    }
    assert_eq!(
        earlier.scan(&[DEDUP], &[DEDUP + 1]).unwrap(),
        store.scan(&[DEDUP], &[DEDUP + 1]).unwrap()
    );
}

/// Keys are filed in buckets as wide as the watermark delay: a restart
/// with another delay still finds the keys filed with the earlier width.
#[test]
fn dedup_keys_are_found_after_the_delay_changes() {
    let events = stream(&mut Rng(5));
    let mut store = MemoryStore::new();
    let ten = config(None, true, OutputMode::Append, 10 * MINUTE);
    fresh_batch(&ten, &mut store, 0, &events);
    // Every row again: each is late under the new delay or a duplicate.
    let three = config(None, true, OutputMode::Append, 3 * MINUTE);
    let again = fresh_batch(&three, &mut store, 1, &events);
    assert!(again.duplicates > 0);
    assert_eq!(rows_of(again.rows.as_ref()), Vec::<Vec<V>>::new());
    assert_eq!(again.duplicates + again.late_rows, events.len() as u64);
}

#[test]
fn late_rows_without_dedup_match_the_oracle() {
    // A window-less, dedup-less operator only filters late rows.
    check(
        config(None, false, OutputMode::Append, MINUTE),
        0..30,
        &mut memory,
    );
}

#[test]
fn windows_in_append_mode_match_the_oracle() {
    for (_, window) in windows() {
        for dedup in [false, true] {
            for delay in [0, 5 * MINUTE] {
                check(
                    config(Some(window), dedup, OutputMode::Append, delay),
                    0..25,
                    &mut memory,
                );
            }
        }
    }
}

#[test]
fn windows_in_update_mode_match_the_oracle() {
    for (name, window) in windows() {
        if name == "session" {
            continue;
        }
        for dedup in [false, true] {
            check(
                config(Some(window), dedup, OutputMode::Update, 5 * MINUTE),
                0..25,
                &mut memory,
            );
        }
    }
}

#[test]
fn window_state_of_the_layout_before_panes_is_refused() {
    // One window's accumulators as versions before panes kept them.
    let mut store = MemoryStore::new();
    let mut writes = tributary_core::StagedWrites::default();
    writes.put(vec![crate::keys::LEGACY_WINDOW, 0x80, 1], vec![0; 8]);
    store.commit(0, writes).unwrap();
    let window = windows()[1].1;
    let operator = Operator::new(config(Some(window), false, OutputMode::Append, MINUTE));
    let events = stream(&mut Rng(7));
    let err = operator
        .process(&store, 1, &[to_batch(&events)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("per-window layout"), "{err}");
    // Sessions keep their own layout and are not refused.
    let sessions = Operator::new(config(
        Some(Window::Session { gap: MINUTE }),
        false,
        OutputMode::Append,
        MINUTE,
    ));
    sessions.process(&store, 1, &[to_batch(&events)]).unwrap();
}

#[test]
fn the_layout_is_recorded_and_state_in_a_newer_one_is_refused() {
    use tributary_core::Write;
    let records_layout = |w: &tributary_core::StagedWrites| {
        w.writes
            .iter()
            .any(|w| matches!(w, Write::Put(k, _) if k == crate::keys::LAYOUT_VERSION))
    };
    let mut store = MemoryStore::new();
    let events = stream(&mut Rng(11));
    let dedup = || config(None, true, OutputMode::Append, MINUTE);
    let first = Operator::new(dedup())
        .process(&store, 0, &[to_batch(&events)])
        .unwrap();
    assert!(records_layout(&first.writes));
    store.commit(0, first.writes).unwrap();
    assert_eq!(
        store.get(crate::keys::LAYOUT_VERSION).unwrap(),
        Some(crate::keys::LAYOUT.to_be_bytes().to_vec())
    );
    // Recorded once: a restarted operator finds it and writes nothing more.
    let again = Operator::new(dedup())
        .process(&store, 1, &[to_batch(&events)])
        .unwrap();
    assert!(!records_layout(&again.writes));

    let mut newer = tributary_core::StagedWrites::default();
    newer.put(
        crate::keys::LAYOUT_VERSION.to_vec(),
        (crate::keys::LAYOUT + 1).to_be_bytes().to_vec(),
    );
    store.commit(1, newer).unwrap();
    for config in [
        dedup(),
        config(Some(windows()[1].1), false, OutputMode::Append, MINUTE),
    ] {
        let err = Operator::new(config)
            .process(&store, 2, &[to_batch(&events)])
            .unwrap_err();
        assert!(
            matches!(err, crate::StreamError::NewerLayout { found, .. } if found == crate::keys::LAYOUT + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer Tributary"), "{err}");
    }
}

#[test]
fn rocksdb_gives_the_same_results() {
    let dirs = std::cell::RefCell::new(Vec::new());
    let mut rocks = || -> Box<dyn StateStore> {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        dirs.borrow_mut().push(dir);
        Box::new(store)
    };
    check(
        config(None, true, OutputMode::Append, 2 * MINUTE),
        0..8,
        &mut rocks,
    );
    for (_, window) in windows() {
        check(
            config(Some(window), true, OutputMode::Append, 5 * MINUTE),
            0..5,
            &mut rocks,
        );
    }
    check(
        with_features(
            config(None, true, OutputMode::Append, 2 * MINUTE),
            5 * MINUTE,
        ),
        0..6,
        &mut rocks,
    );
}

fn with_features(mut config: OperatorConfig, range: i64) -> OperatorConfig {
    config.features = Some(Features {
        group_by: vec!["user".into()],
        range,
        aggregations: aggregations()
            .into_iter()
            .filter(|a| !matches!(a.function, F::First | F::Last))
            .collect(),
    });
    config
}

#[test]
fn features_match_the_oracle() {
    for dedup in [false, true] {
        for delay in [0, 5 * MINUTE] {
            for range in [MINUTE, 10 * MINUTE] {
                check(
                    with_features(config(None, dedup, OutputMode::Append, delay), range),
                    0..25,
                    &mut memory,
                );
            }
        }
    }
}

/// Features state as versions before buckets kept it (rows by key, and an
/// index by the newest row's time) is moved, and gives the same features.
#[test]
fn features_state_of_the_earlier_layout_is_moved_and_gives_the_same_features() {
    use crate::keys::{FEATURE_NEWEST, FEATURE_ROWS, FEATURE_WIDTH, FEATURES, tagged, timed};
    let config = with_features(
        config(None, false, OutputMode::Append, 2 * MINUTE),
        10 * MINUTE,
    );
    let features = config.features.clone().unwrap();
    let events = stream(&mut Rng(13));
    let (first, second) = events.split_at(events.len() / 2);
    let mut store = MemoryStore::new();
    fresh_batch(&config, &mut store, 0, first);
    let bucketed = store.scan(&[FEATURES], &[FEATURES + 1]).unwrap();
    assert!(!bucketed.is_empty());
    let mut earlier = store.clone();
    let mut writes = tributary_core::StagedWrites::default();
    writes.delete_range(vec![FEATURES], vec![FEATURES + 1]);
    writes.delete(FEATURE_WIDTH.to_vec());
    let rows = to_batch(first);
    for (k, v) in &bucketed {
        let newest = crate::feature_state::newest_time(&features, &rows, v).unwrap();
        writes.put(tagged(FEATURE_ROWS, &k[9..]), v.clone());
        writes.put(timed(FEATURE_NEWEST, newest, &[&k[9..]]), Vec::new());
    }
    earlier.commit(1, writes).unwrap();

    let expected = fresh_batch(&config, &mut store, 2, second);
    let moved = fresh_batch(&config, &mut earlier, 2, second);
    assert!(expected.rows.as_ref().is_some_and(|r| r.num_rows() > 0));
    assert_eq!(
        rows_of(moved.rows.as_ref()),
        rows_of(expected.rows.as_ref())
    );
    for tag in [FEATURE_ROWS, FEATURE_NEWEST] {
        assert!(earlier.scan(&[tag], &[tag + 1]).unwrap().is_empty());
    }
    assert_eq!(
        earlier.scan(&[FEATURES], &[FEATURES + 1]).unwrap(),
        store.scan(&[FEATURES], &[FEATURES + 1]).unwrap()
    );
}

/// Features keys are filed in buckets half a range wide: a restart with
/// another range still finds the rows filed with the earlier width, and
/// gives the new range's features.
#[test]
fn features_are_found_after_the_range_changes() {
    for seed in 0..10 {
        let mut rng = Rng(seed * 2 + 1);
        let events = stream(&mut rng);
        let (first, second) = events.split_at(events.len() / 2);
        let base = config(None, false, OutputMode::Append, 2 * MINUTE);
        let ten = with_features(base.clone(), 10 * MINUTE);
        let four = with_features(base, 4 * MINUTE);
        let mut store = MemoryStore::new();
        fresh_batch(&ten, &mut store, 0, first);
        let got = fresh_batch(&four, &mut store, 1, second);
        let mut oracle = Oracle::new(four.clone());
        oracle.batch(0, first);
        let expected = oracle.batch(1, second);
        assert_eq!(rows_of(got.rows.as_ref()), expected.rows, "seed {seed}");
    }
}

/// A quiet key is kept as long as the current `range` needs it: after the
/// range grows, a row reaches a key's rows that the earlier range would
/// already have forgotten.
#[test]
fn features_keep_quiet_keys_for_a_range_that_grew() {
    let base = config(None, false, OutputMode::Append, 0);
    let (four, ten) = (
        with_features(base.clone(), 4 * MINUTE),
        with_features(base, 10 * MINUTE),
    );
    let t = 600 * MINUTE;
    let at = |offset: i64, minute: i64, user: &str| Event {
        partition: 0,
        offset,
        ts: Some(t + minute * MINUTE),
        id: offset,
        user: user.into(),
        card: 1,
        amount: Some(1.0),
        merchant: Some("m".into()),
    };
    // a pays at 0; b's rows move the watermark to 7, past a's row plus the
    // first range; then the range grows to 10 and a pays again at 9.
    let batches = [
        (&four, vec![at(0, 0, "a")]),
        (&four, vec![at(1, 7, "b")]),
        (&ten, vec![at(2, 8, "b")]),
        (&ten, vec![at(3, 9, "a")]),
    ];
    let mut store = MemoryStore::new();
    let mut oracle = Oracle::new(ten.clone());
    let mut results = Vec::new();
    for (n, (config, events)) in batches.iter().enumerate() {
        let got = fresh_batch(config, &mut store, n as u64, events);
        results.push((
            rows_of(got.rows.as_ref()),
            oracle.batch(n as u64, events).rows,
        ));
    }
    let (got, expected) = results.pop().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got, expected);
}

/// Spark's boundaries for sessions, seen in pyspark 4: a row exactly at a
/// session's end joins it, and a row whose own session `[t, t + gap)` ends
/// exactly at the late-events watermark is late.
#[test]
fn session_boundaries_are_sparks() {
    let gap = 3 * MINUTE;
    let c = config(Some(Window::Session { gap }), false, OutputMode::Append, 0);
    let at = |partition: i32, offset: i64, minute: i64, user: &str| Event {
        partition,
        offset,
        ts: Some(600 * MINUTE + minute * MINUTE),
        id: offset,
        user: user.into(),
        card: 1,
        amount: Some(1.0),
        merchant: None,
    };
    let batches = vec![
        // a: 10:00 and 10:03 touch: one session [10:00, 10:06).
        vec![vec![at(0, 0, 0, "a"), at(0, 1, 3, "a")]],
        // Watermark 10:03 (late-events: none yet).
        vec![vec![at(0, 2, 10, "b")]],
        // Late-events watermark 10:03; c's session [10:00, 10:03) ends at
        // it: late. The eviction watermark 10:10 closes a's session.
        vec![vec![at(0, 3, 0, "c")]],
    ];
    let operator = Operator::new(c.clone());
    let mut store = MemoryStore::new();
    let got = operate(&c, &operator, &mut store, &batches, false);
    let sessions = |r: &BatchResult| -> Vec<(V, V, V)> {
        r.rows
            .iter()
            .map(|row| (row[0].clone(), row[1].clone(), row[2].clone()))
            .collect()
    };
    assert_eq!(got[0].late + got[1].late, 0);
    assert_eq!(got[2].late, 1, "{got:?}");
    assert_eq!(
        sessions(&got[2]),
        vec![(V::I(600 * MINUTE), V::I(606 * MINUTE), V::S("a".into()))]
    );
}
