use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::{OperatorConfig, OutputMode, WINDOW_END, WINDOW_START, Watermarks, Window};
use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tributary_core::{StagedWrites, StateStore};

use crate::aggregate::{Acc, Reader, WindowRow, aggregate_column, encode_accs, read_accs};
use crate::dedup;
use crate::error::{Result, StreamError};
use crate::key_filter::KeyFilter;

use crate::keys;
use crate::panes::{PaneBatch, Panes};
use crate::prepare::{
    KeyCodec, Prepared, Types, canonical, column, event_times, output_type, without,
};

/// The result of operating one batch.
#[derive(Debug, Default)]
pub struct Operated {
    /// Rows for the table: the deduplicated records, or windows (final ones
    /// in append mode, changed ones in update mode).
    pub rows: Option<RecordBatch>,
    /// Input rows that are late (see [`Watermarks::late`]), or without an
    /// event time.
    pub late: Option<RecordBatch>,
    pub late_rows: u64,
    /// Rows dropped as duplicates.
    pub duplicates: u64,
    /// State changes, to apply once the output is committed.
    pub writes: StagedWrites,
    /// The watermarks this batch ran with, and the one the next batch's
    /// windows close with.
    pub watermarks: Watermarks,
    pub next_watermark: Option<i64>,
}

/// The event-time operators of one pipeline, bound to one state store.
///
/// It keeps in memory which dedup and features keys the state holds,
/// updated by every batch it operates as if that batch's writes were
/// committed: when a batch's writes are not committed, drop the operator
/// and build a new one, which reads the committed state again.
pub struct Operator {
    config: OperatorConfig,
    /// Dedup keys that may be in the store, loaded from it at the first
    /// batch (see `key_filter`).
    key_filter: Mutex<Option<KeyFilter>>,
    /// Whether the state's layout was checked (see [`keys::LAYOUT`]).
    checked_layout: Mutex<bool>,
    /// The same for the keys of `features`.
    feature_filter: Mutex<Option<KeyFilter>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("config", &self.config)
            .finish()
    }
}

/// A session of a group: `[start, end)` with `end` = last row + gap.
#[derive(Debug, Clone, PartialEq)]
struct Session {
    start: i64,
    end: i64,
    accs: Vec<Acc>,
}

impl Operator {
    pub fn new(config: OperatorConfig) -> Operator {
        Operator {
            config,
            key_filter: Mutex::new(None),
            checked_layout: Mutex::new(false),
            feature_filter: Mutex::new(None),
        }
    }

    /// The watermarks the next batch runs with, from the committed state.
    pub fn watermarks(&self, store: &dyn StateStore) -> Result<Watermarks> {
        Ok(Watermarks {
            late: keys::read_time(store, keys::LAST_WATERMARK)?,
            eviction: keys::read_time(store, keys::MAX_EVENT_TIME)?
                .map(|m| watermark_of(m, self.config.watermark_delay)),
        })
    }

    /// Whether a row at `t` is late against the late-events watermark `w`:
    /// dedup's rule when it deduplicates, else the window's.
    fn is_late(&self, t: i64, w: i64) -> bool {
        match self.config.window {
            Some(Window::Sliding { size, slide }) if self.config.dedup_keys.is_empty() => {
                // Its last window ends last.
                (t - t.rem_euclid(slide)).saturating_add(size) <= w
            }
            Some(Window::Session { gap }) if self.config.dedup_keys.is_empty() => {
                t.saturating_add(gap) <= w
            }
            _ => t <= w,
        }
    }

    /// Operates batch `batch_id` on the committed state. `input` holds the
    /// batch's rows in any order and chunking.
    pub fn process(
        &self,
        store: &dyn StateStore,
        batch_id: u64,
        input: &[RecordBatch],
    ) -> Result<Operated> {
        let watermarks = self.watermarks(store)?;
        self.process_at(store, batch_id, input, watermarks)
    }

    /// [`Operator::process`] with given watermarks.
    pub fn process_at(
        &self,
        store: &dyn StateStore,
        batch_id: u64,
        input: &[RecordBatch],
        watermarks: Watermarks,
    ) -> Result<Operated> {
        let c = &self.config;
        let mut out = Operated {
            watermarks,
            ..Operated::default()
        };
        self.check_layout(store, &mut out.writes)?;
        let batch = canonical(input, &c.partition_column, &c.offset_column)?;
        let times = match &batch {
            Some(b) => event_times(b, &c.time_column)?,
            None => Vec::new(),
        };
        let mut on_time = Vec::with_capacity(times.len());
        let mut late = Vec::new();
        let mut batch_max: Option<i64> = None;
        for (i, t) in times.iter().enumerate() {
            let Some(t) = *t else {
                late.push(i as u32);
                continue;
            };
            batch_max = Some(batch_max.map_or(t, |m| m.max(t)));
            if watermarks.late.is_some_and(|w| self.is_late(t, w)) {
                late.push(i as u32);
            } else {
                on_time.push(i as u32);
            }
        }
        if let Some(b) = &batch
            && !late.is_empty()
        {
            out.late_rows = late.len() as u64;
            out.late = Some(without(
                &take_record_batch(b, &UInt32Array::from(late))?,
                &c.hidden_columns,
            )?);
        }

        let kept = if c.dedup_keys.is_empty() {
            on_time
        } else {
            let kept = self.dedup(
                store,
                batch.as_ref(),
                &times,
                &on_time,
                watermarks.late,
                &mut out,
            )?;
            out.duplicates = (on_time.len() - kept.len()) as u64;
            kept
        };

        let mut feature_filter = self
            .feature_filter
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut features_moving = false;
        if let Some(f) = &c.features {
            let filter = match &mut *feature_filter {
                Some(filter) => filter,
                empty => {
                    let (filter, moving) = crate::feature_state::load(f, store, &mut out.writes)?;
                    features_moving = moving;
                    empty.insert(filter)
                }
            };
            crate::feature_state::expire(f, filter, watermarks.eviction, &mut out.writes);
        }
        out.rows = match c.window {
            None => match &batch {
                Some(b) if !kept.is_empty() => {
                    let kept_times: Vec<i64> = kept
                        .iter()
                        .map(|&i| times[i as usize].unwrap_or_default())
                        .collect();
                    let mut rows = take_record_batch(b, &UInt32Array::from(kept))?;
                    if let (Some(f), Some(filter)) = (&c.features, feature_filter.as_mut()) {
                        rows = crate::features::attach(
                            f,
                            store,
                            crate::feature_state::InState {
                                filter,
                                moving: features_moving,
                            },
                            &rows,
                            &kept_times,
                            watermarks.eviction,
                            &mut out.writes,
                        )?;
                    }
                    Some(without(&rows, &c.hidden_columns)?)
                }
                _ => None,
            },
            Some(window) => {
                // The kept rows with their event times, read once above.
                let rows = match &batch {
                    Some(b) => {
                        let kept_times = kept
                            .iter()
                            .map(|&i| times[i as usize].unwrap_or_default())
                            .collect();
                        Some((take_record_batch(b, &UInt32Array::from(kept))?, kept_times))
                    }
                    None => None,
                };
                self.windows(store, batch_id, rows, window, watermarks, &mut out.writes)?
            }
        };
        if let (Some(f), Some(filter)) = (&c.features, feature_filter.as_mut()) {
            crate::feature_state::forget_in_filter(f, filter, watermarks.eviction);
        }
        drop(feature_filter);

        let before = keys::read_time(store, keys::MAX_EVENT_TIME)?;
        let max = match (before, batch_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(m) = max
            && max != before
        {
            out.writes
                .put(keys::MAX_EVENT_TIME.to_vec(), m.to_be_bytes().to_vec());
        }
        if let Some(w) = watermarks.eviction
            && watermarks.eviction != keys::read_time(store, keys::LAST_WATERMARK)?
        {
            out.writes
                .put(keys::LAST_WATERMARK.to_vec(), w.to_be_bytes().to_vec());
        }
        out.next_watermark = max
            .map(|m| watermark_of(m, c.watermark_delay))
            .max(watermarks.eviction);
        Ok(out)
    }

    /// Keeps the first row of each key among `rows`; returns the kept rows.
    /// A key is remembered while its first event time plus the delay is
    /// after the watermark; Spark forgets the expired keys after the batch
    /// whose watermark reaches them, so they are forgotten here before the
    /// next batch, whose late-events watermark that is.
    fn dedup(
        &self,
        store: &dyn StateStore,
        batch: Option<&RecordBatch>,
        times: &[Option<i64>],
        rows: &[u32],
        watermark: Option<i64>,
        out: &mut Operated,
    ) -> Result<Vec<u32>> {
        let c = &self.config;
        let writes = &mut out.writes;
        let mut guard = self.key_filter.lock().unwrap_or_else(|p| p.into_inner());
        let (filter, moving) = match &mut *guard {
            Some(f) => (f, false),
            empty => {
                let (filter, moving) = dedup::load(store, c.watermark_delay, writes)?;
                (empty.insert(filter), moving)
            }
        };
        if let Some(w) = watermark {
            dedup::expire(filter, w, writes);
        }
        let Some(batch) = batch else {
            return Ok(Vec::new());
        };
        let columns = c
            .dedup_keys
            .iter()
            .map(|k| column(batch, k).cloned())
            .collect::<Result<Vec<_>>>()?;
        let codec = KeyCodec::new(
            &columns
                .iter()
                .map(|a| a.data_type().clone())
                .collect::<Vec<_>>(),
        )?;
        let encoded = codec.encode(&columns)?;
        // First occurrences within the batch, then the lookups of their keys.
        let mut firsts: Vec<u32> = Vec::with_capacity(rows.len());
        let mut seen: HashSet<&[u8], foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(rows.len(), Default::default());
        for &i in rows {
            if seen.insert(encoded.get(i as usize)) {
                firsts.push(i);
            }
        }
        let first_keys: Vec<&[u8]> = firsts.iter().map(|&i| encoded.get(i as usize)).collect();
        let (known, hashes) = dedup::remembered(store, filter, &first_keys, watermark, moving)?;
        let mut kept = Vec::with_capacity(firsts.len());
        // New keys are written in key order: RocksDB inserts sorted keys
        // into its memtable several times faster than random ones.
        let mut remember: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(firsts.len());
        for (((&i, key), known), hash) in firsts.iter().zip(first_keys).zip(known).zip(hashes) {
            if known {
                continue;
            }
            let t = times[i as usize].unwrap_or_default();
            let expiry = t.saturating_add(c.watermark_delay);
            remember.push(dedup::remember(filter, key, hash, expiry));
            kept.push(i);
        }
        remember.sort_unstable();
        dedup::record_width(filter, writes);
        writes.reserve(remember.len());
        for (k, v) in remember {
            writes.put(k, v);
        }
        Ok(kept)
    }

    /// Feeds `rows` to the windows and returns the rows to write.
    fn windows(
        &self,
        store: &dyn StateStore,
        batch_id: u64,
        rows: Option<(RecordBatch, Vec<i64>)>,
        window: Window,
        watermarks: Watermarks,
        writes: &mut StagedWrites,
    ) -> Result<Option<RecordBatch>> {
        let c = &self.config;
        let prepared = match rows {
            Some((b, times)) if b.num_rows() > 0 => Some(Prepared::new(c, &b, times)?),
            _ => None,
        };
        let stored = stored_types(store)?;
        let types = match &prepared {
            Some(p) => {
                if stored.as_ref() != Some(&p.types) {
                    writes.put(keys::WINDOW_TYPES.to_vec(), write_types(&p.types));
                }
                Some(p.types.clone())
            }
            None => stored,
        };
        let template = self.template(types.as_ref());
        let emitted = match window {
            Window::Sliding { size, slide } => {
                let batch = PaneBatch {
                    batch_id,
                    prepared: prepared.as_ref(),
                    template: &template,
                    watermarks,
                    append: c.output_mode == OutputMode::Append,
                };
                Panes::new(size, slide).process(store, &batch, writes)?
            }
            Window::Session { gap } => self.sessions(
                store,
                batch_id,
                prepared.as_ref(),
                &template,
                gap,
                watermarks,
                writes,
            )?,
        };
        if emitted.is_empty() {
            return Ok(None);
        }
        let types =
            types.ok_or_else(|| StreamError::Corrupt("windows without their types".into()))?;
        self.window_rows(&types, emitted).map(Some)
    }

    /// At an operator's first batch: refuses state in a layout newer than
    /// this version's, or holding windows as an earlier version kept them
    /// (one state entry per window: panes cannot be rebuilt from whole
    /// windows, and reading on without them would lose their rows); and
    /// records this version's layout with the batch's writes.
    fn check_layout(&self, store: &dyn StateStore, writes: &mut StagedWrites) -> Result<()> {
        let mut checked = self
            .checked_layout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *checked {
            return Ok(());
        }
        let found = keys::read_time(store, keys::LAYOUT_VERSION)?.map(|v| v as u64);
        if let Some(found) = found.filter(|&f| f > keys::LAYOUT) {
            return Err(StreamError::NewerLayout {
                found,
                supported: keys::LAYOUT,
            });
        }
        if matches!(self.config.window, Some(Window::Sliding { .. })) {
            for tag in [keys::LEGACY_WINDOW, keys::LEGACY_DISTINCT] {
                if !store.scan(&[tag], &[tag + 1])?.is_empty() {
                    return Err(StreamError::Spec(
                        "the state holds windows in the per-window layout of an earlier \
                         Tributary; this version keeps sliding and tumbling windows as panes \
                         and cannot read them. Finish the open windows with the earlier version \
                         (stop the producers until the watermark passes them) or reset the \
                         pipeline's state"
                            .into(),
                    ));
                }
            }
        }
        if found != Some(keys::LAYOUT) {
            writes.put(
                keys::LAYOUT_VERSION.to_vec(),
                keys::LAYOUT.to_be_bytes().to_vec(),
            );
        }
        *checked = true;
        Ok(())
    }

    /// Empty accumulators for a window: a sum's type follows its input's.
    fn template(&self, types: Option<&Types>) -> Vec<Acc> {
        self.config
            .aggregations
            .iter()
            .enumerate()
            .map(|(a, spec)| {
                let float = types
                    .and_then(|t| t.inputs[a].as_ref())
                    .is_some_and(|t| t.is_floating());
                Acc::new(spec.function, float)
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn sessions(
        &self,
        store: &dyn StateStore,
        batch_id: u64,
        prepared: Option<&Prepared>,
        template: &[Acc],
        gap: i64,
        watermarks: Watermarks,
        writes: &mut StagedWrites,
    ) -> Result<Vec<WindowRow>> {
        // Groups with a session the eviction watermark closes, and groups
        // with rows.
        let mut groups: BTreeSet<Vec<u8>> = BTreeSet::new();
        if let Some(w) = watermarks.eviction {
            let (lo, hi) = keys::older_than(keys::SESSION_END, w.saturating_add(1));
            for (k, _) in store.scan(&lo, &hi)? {
                groups.insert(k[9..].to_vec());
            }
        }
        if let Some(p) = prepared {
            for i in 0..p.len() {
                groups.insert(p.groups.get(i).to_vec());
            }
        }
        let groups: Vec<Vec<u8>> = groups.into_iter().collect();
        let lookups: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| keys::tagged(keys::SESSIONS, g))
            .collect();
        let mut open: HashMap<&[u8], Vec<Session>> = HashMap::new();
        let mut before: HashMap<&[u8], Vec<i64>> = HashMap::new();
        for (g, stored) in groups.iter().zip(store.multi_get(&lookups)?) {
            let sessions = match stored {
                Some(v) => read_sessions(&v, template)?,
                None => Vec::new(),
            };
            before.insert(g, sessions.iter().map(|s| s.end).collect());
            open.insert(g, sessions);
        }
        let mut emitted = Vec::new();
        if let Some(p) = prepared {
            for i in 0..p.len() {
                let t = p.times[i];
                let sessions = open.entry(p.groups.get(i)).or_default();
                let mut joined = Session {
                    start: t,
                    end: t.saturating_add(gap),
                    accs: template.to_vec(),
                };
                p.feed(&mut joined.accs, i, batch_id);
                // Every open session overlapping or touching [t, t + gap)
                // merges with it, as in Spark.
                let mut k = 0;
                while k < sessions.len() {
                    let s = &sessions[k];
                    if s.start <= joined.end && joined.start <= s.end {
                        let s = sessions.remove(k);
                        joined.start = joined.start.min(s.start);
                        joined.end = joined.end.max(s.end);
                        for (acc, other) in joined.accs.iter_mut().zip(s.accs) {
                            acc.absorb(other);
                        }
                    } else {
                        k += 1;
                    }
                }
                let at = sessions.partition_point(|s| s.start < joined.start);
                sessions.insert(at, joined);
            }
        }
        if let Some(w) = watermarks.eviction {
            for (g, sessions) in open.iter_mut() {
                let (done, alive): (Vec<Session>, Vec<Session>) =
                    sessions.drain(..).partition(|s| s.end <= w);
                *sessions = alive;
                if self.config.output_mode == OutputMode::Append {
                    emitted.extend(done.into_iter().map(|s| WindowRow {
                        start: s.start,
                        end: s.end,
                        group: g.to_vec(),
                        accs: s.accs,
                    }));
                }
            }
        }
        for g in &groups {
            let sessions = open.remove(g.as_slice()).unwrap_or_default();
            let old_ends = before.remove(g.as_slice()).unwrap_or_default();
            for end in old_ends {
                writes.delete(keys::timed(keys::SESSION_END, end, &[g]));
            }
            for s in &sessions {
                writes.put(keys::timed(keys::SESSION_END, s.end, &[g]), Vec::new());
            }
            let key = keys::tagged(keys::SESSIONS, g);
            if sessions.is_empty() {
                writes.delete(key);
            } else {
                writes.put(key, write_sessions(&sessions));
            }
        }
        Ok(emitted)
    }

    /// Output rows of windows: bounds, group keys, aggregates.
    fn window_rows(&self, types: &Types, rows: Vec<WindowRow>) -> Result<RecordBatch> {
        let c = &self.config;
        let group_codec = KeyCodec::new(&types.groups)?;
        let utc = Some(Arc::<str>::from("UTC"));
        let mut fields = vec![
            Field::new(
                WINDOW_START,
                DataType::Timestamp(TimeUnit::Microsecond, utc.clone()),
                false,
            ),
            Field::new(
                WINDOW_END,
                DataType::Timestamp(TimeUnit::Microsecond, utc.clone()),
                false,
            ),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.start))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.end))
                    .with_timezone("UTC"),
            ),
        ];
        let groups: Vec<&[u8]> = rows.iter().map(|r| r.group.as_slice()).collect();
        for ((name, t), array) in c
            .group_by
            .iter()
            .zip(&types.groups)
            .zip(group_codec.decode(&groups)?)
        {
            fields.push(Field::new(name, t.clone(), true));
            columns.push(array);
        }
        for (a, spec) in c.aggregations.iter().enumerate() {
            let t = output_type(spec, types.inputs[a].as_ref());
            let accs: Vec<&Acc> = rows.iter().map(|r| &r.accs[a]).collect();
            let array = aggregate_column(spec, &t, &accs)?;
            fields.push(Field::new(&spec.name, t, true));
            columns.push(array);
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

/// Spark's watermark for a greatest event time: in whole milliseconds, less
/// the delay.
fn watermark_of(max_event_time: i64, delay: i64) -> i64 {
    (max_event_time - max_event_time.rem_euclid(1000)).saturating_sub(delay)
}

/// The types of the rows that made the windows, as stored: windows can
/// close in a batch without rows.
fn stored_types(store: &dyn StateStore) -> Result<Option<Types>> {
    let Some(bytes) = store.get(keys::WINDOW_TYPES)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| StreamError::Corrupt("window types are not text".into()))?;
    let parse = |t: &str| {
        t.parse::<DataType>()
            .map_err(|e| StreamError::Corrupt(format!("window type {t:?}: {e}")))
    };
    let mut lines = text.lines();
    let mut list = || -> Result<Vec<Option<DataType>>> {
        let line = lines.next().unwrap_or_default();
        line.split('\t')
            .filter(|t| !t.is_empty())
            .map(|t| {
                if t == "-" {
                    Ok(None)
                } else {
                    parse(t).map(Some)
                }
            })
            .collect()
    };
    let groups = list()?.into_iter().flatten().collect();
    let inputs = list()?;
    Ok(Some(Types { groups, inputs }))
}

fn write_types(types: &Types) -> Vec<u8> {
    let groups: Vec<String> = types.groups.iter().map(|t| t.to_string()).collect();
    let inputs: Vec<String> = types
        .inputs
        .iter()
        .map(|t| t.as_ref().map_or("-".to_string(), |t| t.to_string()))
        .collect();
    format!("{}\n{}\n", groups.join("\t"), inputs.join("\t")).into_bytes()
}

fn write_sessions(sessions: &[Session]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(sessions.len() as u32).to_be_bytes());
    for s in sessions {
        out.extend_from_slice(&s.start.to_be_bytes());
        out.extend_from_slice(&s.end.to_be_bytes());
        let mut accs = Vec::new();
        encode_accs(&s.accs, &mut accs);
        out.extend_from_slice(&(accs.len() as u32).to_be_bytes());
        out.extend_from_slice(&accs);
    }
    out
}

fn read_sessions(bytes: &[u8], template: &[Acc]) -> Result<Vec<Session>> {
    let mut r = Reader::new(bytes);
    let n = r.u32()?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let start = r.i64()?;
        let end = r.i64()?;
        let accs = r.bytes()?;
        out.push(Session {
            start,
            end,
            accs: read_accs(&accs, template)?,
        });
    }
    Ok(out)
}
