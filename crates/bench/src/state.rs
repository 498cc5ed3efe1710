//! `tributary bench dedup` and `bench windows`: the event-time operators
//! over RocksDB state on disk, one thread, micro-batch by micro-batch, each
//! batch's state committed as the pipeline commits it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use tributary_state::{RocksOptions, RocksStore, StateStore};
use tributary_stream::{
    AggregateFunction, Aggregation, Operator, OperatorConfig, OutputMode, Window,
};

use tributary_devstack::generator::Rng;

use crate::{Result, ensure};

const MINUTE: i64 = 60_000_000;

/// The windows of `bench windows`: 10 minutes every 2, closed 15 minutes
/// behind the newest event.
const SIZE: i64 = 10 * MINUTE;
const SLIDE: i64 = 2 * MINUTE;
const DELAY: i64 = 15 * MINUTE;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("p", DataType::Int32, false),
        Field::new("o", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("card_id", DataType::Int64, false),
        Field::new("merchant", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]))
}

/// Rows `first..first + n`: event ids unique per row (hex of a mixed
/// sequence number), event times 1 ms apart with up to 2 s of disorder.
fn rows(rng: &mut Rng, first: u64, n: usize, cards: u64) -> RecordBatch {
    let seqs: Vec<u64> = (first..first + n as u64).collect();
    let columns: Vec<ArrayRef> =
        vec![
            Arc::new(Int32Array::from_iter_values(seqs.iter().map(|_| 0))),
            Arc::new(Int64Array::from_iter_values(seqs.iter().map(|s| *s as i64))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(seqs.iter().map(|s| {
                    1_767_225_600_000_000 + *s as i64 * 1_000 - rng.below(2_000_000) as i64
                }))
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(seqs.iter().map(|s| {
                format!("{:032x}", s.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            }))),
            Arc::new(Int64Array::from_iter_values(
                seqs.iter().map(|_| rng.below(cards) as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                seqs.iter().map(|_| format!("merchant-{}", rng.below(50))),
            )),
            Arc::new(Float64Array::from_iter_values(
                seqs.iter().map(|_| rng.below(50_000) as f64 / 100.0),
            )),
        ];
    RecordBatch::try_new(schema(), columns).expect("bench rows match their schema")
}

fn config(delay: i64) -> OperatorConfig {
    OperatorConfig {
        time_column: "ts".into(),
        partition_column: "p".into(),
        offset_column: "o".into(),
        hidden_columns: vec!["p".into(), "o".into()],
        watermark_delay: delay,
        dedup_keys: Vec::new(),
        window: None,
        group_by: Vec::new(),
        aggregations: Vec::new(),
        output_mode: OutputMode::Append,
        features: None,
    }
}

/// Peak resident memory of this process, from /proc.
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dir_mib(path: &std::path::Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    bytes as f64 / (1 << 20) as f64
}

/// Runs batches of `batch_rows` through `operator` with its state in a
/// fresh RocksDB, showing `inspect` each input and its output (untimed);
/// returns (operate time, commit time, output rows, rows dropped).
fn drive(
    operator: &Operator,
    store: &mut RocksStore,
    (total, batch_rows, cards): (u64, usize, u64),
    mut inspect: impl FnMut(&RecordBatch, Option<&RecordBatch>) -> Result<()>,
) -> Result<(Duration, Duration, u64, u64)> {
    let mut rng = Rng::new(5);
    let (mut operate, mut commit) = (Duration::ZERO, Duration::ZERO);
    let (mut out_rows, mut dropped) = (0u64, 0u64);
    let mut first = 0u64;
    let mut batch_id = 0u64;
    while first < total {
        let n = batch_rows.min((total - first) as usize);
        let input = rows(&mut rng, first, n, cards);
        let started = Instant::now();
        let operated = operator.process(store, batch_id, std::slice::from_ref(&input))?;
        operate += started.elapsed();
        inspect(&input, operated.rows.as_ref())?;
        out_rows += operated.rows.as_ref().map_or(0, |r| r.num_rows() as u64);
        dropped += operated.duplicates + operated.late_rows;
        let started = Instant::now();
        store.commit(batch_id, operated.writes)?;
        commit += started.elapsed();
        first += n as u64;
        batch_id += 1;
    }
    Ok((operate, commit, out_rows, dropped))
}

/// `state_memory`: the state's budget, as `tributary run --state-memory`.
pub fn dedup(keys: u64, batch_rows: usize, state_memory: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = RocksStore::open(dir.path(), RocksOptions::with_memory(state_memory))?;
    // A watermark delay longer than the stream: every key stays in state.
    let mut config = config(24 * 60 * MINUTE);
    config.dedup_keys = vec!["event_id".into()];
    let operator = Operator::new(config);
    let (operate, commit, kept, dropped) =
        drive(&operator, &mut store, (keys, batch_rows, 1), |_, _| Ok(()))?;
    // Generating the rows and checking the output are left out.
    let total = operate + commit;
    ensure!(
        kept == keys && dropped == 0,
        "kept {kept} and dropped {dropped} of {keys} distinct keys"
    );
    // Every key is remembered: sending the first batch again drops it whole.
    let again = operator.process(
        &store,
        keys,
        &[rows(&mut Rng::new(5), 0, batch_rows.min(keys as usize), 1)],
    )?;
    ensure!(
        again.rows.is_none() && again.duplicates as usize == batch_rows.min(keys as usize),
        "replayed keys were not recognised as duplicates"
    );
    println!(
        "bench dedup: {keys} distinct keys (32-character ids) in batches of {batch_rows}, RocksDB on disk \
         with a {} MiB state budget\n  \
         operator thread (operate + commit): {:>6.0} rows/s\n  \
         operate (sort, lookups, staging): {:>8.0} rows/s\n  \
         state commits:                  {:>10.0} rows/s\n  \
         peak RSS {:.0} MiB; state on disk {:.0} MiB\n  \
         {}",
        state_memory >> 20,
        keys as f64 / total.as_secs_f64(),
        keys as f64 / operate.as_secs_f64(),
        keys as f64 / commit.as_secs_f64(),
        peak_rss_mib(),
        dir_mib(dir.path()),
        crate::rocksdb_build(),
    );
    Ok(())
}

pub fn windows(rows_total: u64, batch_rows: usize, cards: u64, state_memory: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = RocksStore::open(dir.path(), RocksOptions::with_memory(state_memory))?;
    let mut config = config(DELAY);
    config.window = Some(Window::Sliding {
        size: SIZE,
        slide: SLIDE,
    });
    config.group_by = vec!["card_id".into()];
    let agg = |name: &str, function, column: Option<&str>| Aggregation {
        name: name.into(),
        function,
        column: column.map(Into::into),
    };
    config.aggregations = vec![
        agg("payments", AggregateFunction::Count, None),
        agg("amount", AggregateFunction::Sum, Some("amount")),
        agg(
            "merchants",
            AggregateFunction::CountDistinct,
            Some("merchant"),
        ),
    ];
    let operator = Operator::new(config);
    let mut oracle = WindowOracle::default();
    let mut seen = HashSet::new();
    let (operate, commit, windows, dropped) = drive(
        &operator,
        &mut store,
        (rows_total, batch_rows, cards),
        |input, output| {
            if let Some(output) = output {
                oracle.compare(output, &mut seen)?;
            }
            oracle.add(input)
        },
    )?;
    let total = operate + commit;
    ensure!(dropped == 0, "{dropped} rows were dropped as late");
    oracle.complete(&seen)?;
    println!(
        "bench windows: {rows_total} rows, {cards} cards, 10-minute windows sliding every 2 minutes \
         (5 per row), count + sum + count_distinct, batches of {batch_rows}, RocksDB on disk with a \
         {} MiB state budget\n  \
         operator thread (operate + commit): {:>6.0} rows/s\n  \
         operate:                        {:>10.0} rows/s\n  \
         state commits:                  {:>10.0} rows/s\n  \
         {windows} final windows written; peak RSS {:.0} MiB\n  \
         {}",
        state_memory >> 20,
        rows_total as f64 / total.as_secs_f64(),
        rows_total as f64 / operate.as_secs_f64(),
        rows_total as f64 / commit.as_secs_f64(),
        peak_rss_mib(),
        crate::rocksdb_build(),
    );
    Ok(())
}

/// What `bench windows` must write, counted apart from the operator: per
/// card and window start, the rows, the sum of amounts and the distinct
/// merchants; and the watermark each batch ran under.
#[derive(Default)]
struct WindowOracle {
    windows: HashMap<(i64, i64), (i64, f64, HashSet<String>)>,
    newest: Option<i64>,
    /// The watermark the batch last added ran under.
    watermark: Option<i64>,
}

impl WindowOracle {
    /// The watermark the next batch runs under: the newest event time of
    /// the batches before it, less the delay.
    fn next_watermark(&self) -> Option<i64> {
        self.newest.map(|t| t - DELAY)
    }

    fn add(&mut self, input: &RecordBatch) -> Result<()> {
        self.watermark = self.next_watermark();
        let (times, cards, merchants, amounts) = (
            column::<TimestampMicrosecondArray>(input, "ts")?,
            column::<Int64Array>(input, "card_id")?,
            column::<StringArray>(input, "merchant")?,
            column::<Float64Array>(input, "amount")?,
        );
        for row in 0..input.num_rows() {
            let t = times.value(row);
            self.newest = self.newest.max(Some(t));
            let mut start = t - t.rem_euclid(SLIDE);
            while start > t - SIZE {
                let window = self.windows.entry((cards.value(row), start)).or_default();
                window.0 += 1;
                window.1 += amounts.value(row);
                window.2.insert(merchants.value(row).to_string());
                start -= SLIDE;
            }
        }
        Ok(())
    }

    /// Each window written is closed, written once, and holds what its rows add up to.
    fn compare(&self, output: &RecordBatch, seen: &mut HashSet<(i64, i64)>) -> Result<()> {
        let (starts, ends, cards, payments, amounts, merchants) = (
            column::<TimestampMicrosecondArray>(output, tributary_core::WINDOW_START)?,
            column::<TimestampMicrosecondArray>(output, tributary_core::WINDOW_END)?,
            column::<Int64Array>(output, "card_id")?,
            column::<Int64Array>(output, "payments")?,
            column::<Float64Array>(output, "amount")?,
            column::<Int64Array>(output, "merchants")?,
        );
        for row in 0..output.num_rows() {
            let key = (cards.value(row), starts.value(row));
            // The rows of this batch are not in the oracle yet: a closed
            // window holds none of them (their disorder is far below DELAY).
            let expected = self.windows.get(&key);
            ensure!(
                seen.insert(key) && expected.is_some(),
                "window {key:?} written twice, or holding no rows"
            );
            let (count, sum, distinct) = expected.expect("checked above");
            // This batch's rows are not added yet: it ran under the next watermark.
            let watermark = self.next_watermark();
            ensure!(
                ends.value(row) - starts.value(row) == SIZE
                    && watermark.is_some_and(|w| ends.value(row) <= w),
                "window {key:?} ends at {} under watermark {watermark:?}",
                ends.value(row),
            );
            ensure!(
                payments.value(row) == *count
                    && merchants.value(row) == distinct.len() as i64
                    && (amounts.value(row) - sum).abs() <= 1e-6 * sum.abs().max(1.0),
                "window {key:?}: {} payments, {} merchants, amount {}; expected {count}, {}, {sum}",
                payments.value(row),
                merchants.value(row),
                amounts.value(row),
                distinct.len()
            );
        }
        Ok(())
    }

    /// Every window closed under the last batch's watermark was written.
    fn complete(&self, seen: &HashSet<(i64, i64)>) -> Result<()> {
        let watermark = self.watermark.unwrap_or(i64::MIN);
        let missing = self
            .windows
            .keys()
            .filter(|(_, start)| start + SIZE <= watermark)
            .filter(|key| !seen.contains(key))
            .count();
        ensure!(missing == 0, "{missing} closed windows were never written");
        Ok(())
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| crate::BenchError::Check(format!("no column {name} of the expected type")))
}
