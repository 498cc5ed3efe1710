//! Tumbling and sliding windows kept as panes: a window of `size` starting
//! every `slide` is the union of consecutive panes `gcd(size, slide)` wide,
//! so a row updates the one pane it falls in, not the `size / slide`
//! windows holding it, and a window's aggregates are its panes' merged when
//! it is written. `count_distinct` stays exact: a pane keeps its distinct
//! values in its accumulators, and a window counts the union of its panes'.
//!
//! A window is written (append mode) in the batch whose eviction watermark
//! reaches its end, as before panes: the windows ending after the previous
//! batch's watermark and at or before this batch's. A pane is dropped once
//! every window holding it has closed.

use std::collections::HashMap;

use tributary_core::{StagedWrites, StateStore, encode_time};

use crate::aggregate::{Acc, WindowRow, encode_accs, read_accs};
use crate::config::Watermarks;
use crate::error::{Result, StreamError};
use crate::keys;
use crate::prepare::Prepared;

/// The hasher of per-batch maps: fast; their order is never relied on.
type FastHash = foldhash::fast::RandomState;

/// Fixed windows as panes. Times in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Panes {
    size: i64,
    slide: i64,
    width: i64,
}

/// One batch's windows: what rows to feed and how to write the result.
pub(crate) struct PaneBatch<'a> {
    pub batch_id: u64,
    pub prepared: Option<&'a Prepared>,
    /// Empty accumulators of a window.
    pub template: &'a [Acc],
    pub watermarks: Watermarks,
    /// Append mode: write closing windows; else the windows this batch changed.
    pub append: bool,
}

impl Panes {
    pub(crate) fn new(size: i64, slide: i64) -> Panes {
        Panes {
            size,
            slide,
            width: gcd(size, slide),
        }
    }

    fn pane_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.width)
    }

    /// Starts of the windows holding the pane starting at `pane`, latest
    /// first: aligned starts at or before it whose window reaches past it.
    fn starts(&self, pane: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.size, self.slide);
        let latest = pane - pane.rem_euclid(slide);
        std::iter::successors(Some(latest), move |s| s.checked_sub(slide))
            .take_while(move |s| *s > pane.saturating_sub(size))
    }

    /// The first pane some window open under watermark `w` holds: every
    /// window holding an earlier pane ends at or before `w`.
    fn first_kept(&self, w: i64) -> i64 {
        w.saturating_sub(self.size)
            .div_euclid(self.slide)
            .saturating_mul(self.slide)
            .saturating_add(self.slide)
    }

    /// Feeds the batch's rows to their panes, stages the panes' new state
    /// and returns the windows to write.
    pub(crate) fn process(
        &self,
        store: &dyn StateStore,
        b: &PaneBatch<'_>,
        writes: &mut StagedWrites,
    ) -> Result<Vec<WindowRow>> {
        let fed = match b.prepared {
            Some(p) => self.feed(store, b, p, writes)?,
            None => Fed::default(),
        };
        let emitted = self.emit(store, b, &fed)?;
        // Last, so that it also drops what this batch wrote for them.
        if let Some(w) = b.watermarks.eviction {
            let kept = self.first_kept(w);
            let (lo, hi) = keys::older_than(keys::PANE, kept);
            writes.delete_range(lo, hi);
        }
        Ok(emitted)
    }

    /// Adds each row to its pane and stages the panes.
    fn feed<'p>(
        &self,
        store: &dyn StateStore,
        b: &PaneBatch<'_>,
        p: &'p Prepared,
        writes: &mut StagedWrites,
    ) -> Result<Fed<'p>> {
        let mut numbers: HashMap<(i64, &[u8]), u32, FastHash> = HashMap::default();
        let mut panes: Vec<(i64, &[u8])> = Vec::new();
        let mut row_panes: Vec<u32> = Vec::with_capacity(p.len());
        for i in 0..p.len() {
            let pane = (self.pane_of(p.times[i]), p.groups.get(i));
            let n = *numbers.entry(pane).or_insert_with(|| {
                panes.push(pane);
                (panes.len() - 1) as u32
            });
            row_panes.push(n);
        }
        let pane_keys: Vec<Vec<u8>> = panes
            .iter()
            .map(|(start, group)| keys::timed(keys::PANE, *start, &[group]))
            .collect();
        let mut accs = Vec::with_capacity(panes.len());
        for stored in store.multi_get(&pane_keys)? {
            accs.push(match stored {
                Some(v) => read_accs(&v, b.template)?,
                None => b.template.to_vec(),
            });
        }
        for (i, &n) in row_panes.iter().enumerate() {
            p.feed(&mut accs[n as usize], i, b.batch_id);
        }
        // In key order: RocksDB inserts sorted keys into its memtable
        // several times faster than random ones.
        let mut order: Vec<usize> = (0..panes.len()).collect();
        order.sort_unstable_by(|&x, &y| pane_keys[x].cmp(&pane_keys[y]));
        for n in order {
            let mut bytes = Vec::new();
            encode_accs(&accs[n], &mut bytes);
            writes.put(pane_keys[n].clone(), bytes);
        }
        Ok(Fed {
            numbers,
            panes,
            accs,
        })
    }

    /// The windows this batch writes, each its panes merged: in append mode
    /// those ending after the previous batch's watermark and at or before
    /// this batch's; else those the batch's rows changed.
    fn emit(
        &self,
        store: &dyn StateStore,
        b: &PaneBatch<'_>,
        fed: &Fed<'_>,
    ) -> Result<Vec<WindowRow>> {
        let late = b.watermarks.late;
        let mut windows = Windows::default();
        // The panes to read, [from, to), and which of their windows to write.
        let (from, to, closing) = if b.append {
            let Some(w) = b.watermarks.eviction else {
                return Ok(Vec::new());
            };
            // Starts of the windows ending in (late, w].
            let first = late.map_or(i64::MIN, |l| self.first_kept(l));
            let last = w
                .saturating_sub(self.size)
                .div_euclid(self.slide)
                .saturating_mul(self.slide);
            if first > last {
                return Ok(Vec::new());
            }
            (first, last.saturating_add(self.size), Some((first, last)))
        } else {
            let open = |s: i64| late.is_none_or(|l| s.saturating_add(self.size) > l);
            for &(pane, group) in &fed.panes {
                for s in self.starts(pane).filter(|s| open(*s)) {
                    windows.add(s, self.size, group, b.template);
                }
            }
            if windows.is_empty() {
                return Ok(Vec::new());
            }
            let (first, last) = windows.start_bounds();
            (first, last.saturating_add(self.size), None)
        };
        let wanted = |s: i64| closing.is_none_or(|(first, last)| (first..=last).contains(&s));

        let stored = store.scan(
            &keys::timed(keys::PANE, from, &[]),
            &keys::timed(keys::PANE, to, &[]),
        )?;
        let mut merge = |pane: i64, group: &[u8], accs: &[Acc]| {
            for s in self.starts(pane).filter(|s| wanted(*s)) {
                if closing.is_some() {
                    windows.add(s, self.size, group, b.template);
                }
                windows.merge(s, self.size, group, accs);
            }
        };
        for (k, v) in &stored {
            let (pane, group) = parse_pane_key(k)?;
            // This batch's panes are merged as fed, below.
            if !fed.numbers.contains_key(&(pane, group)) {
                merge(pane, group, &read_accs(v, b.template)?);
            }
        }
        for (&(pane, group), accs) in fed.panes.iter().zip(&fed.accs) {
            if (from..to).contains(&pane) {
                merge(pane, group, accs);
            }
        }
        windows.rows()
    }
}

/// What feeding a batch left: its panes with their new accumulators.
#[derive(Default)]
struct Fed<'p> {
    numbers: HashMap<(i64, &'p [u8]), u32, FastHash>,
    panes: Vec<(i64, &'p [u8])>,
    accs: Vec<Vec<Acc>>,
}

/// The windows being written, numbered by their state-key bytes (end,
/// start, group), which also orders the output.
#[derive(Default)]
struct Windows {
    numbers: HashMap<Vec<u8>, u32, FastHash>,
    keys: Vec<Vec<u8>>,
    accs: Vec<Vec<Acc>>,
    key: Vec<u8>,
}

impl Windows {
    fn set_key(&mut self, start: i64, size: i64, group: &[u8]) {
        self.key.clear();
        self.key
            .extend_from_slice(&encode_time(start.saturating_add(size)));
        self.key.extend_from_slice(&encode_time(start));
        self.key.extend_from_slice(group);
    }

    fn number(&mut self, start: i64, size: i64, group: &[u8]) -> Option<u32> {
        self.set_key(start, size, group);
        self.numbers.get(self.key.as_slice()).copied()
    }

    fn add(&mut self, start: i64, size: i64, group: &[u8], template: &[Acc]) {
        self.set_key(start, size, group);
        if !self.numbers.contains_key(self.key.as_slice()) {
            self.numbers
                .insert(self.key.clone(), self.keys.len() as u32);
            self.keys.push(self.key.clone());
            self.accs.push(template.to_vec());
        }
    }

    fn merge(&mut self, start: i64, size: i64, group: &[u8], accs: &[Acc]) {
        if let Some(n) = self.number(start, size, group) {
            for (acc, other) in self.accs[n as usize].iter_mut().zip(accs) {
                acc.merge(other);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The earliest and latest window starts.
    fn start_bounds(&self) -> (i64, i64) {
        let starts = self
            .keys
            .iter()
            .map(|k| tributary_core::decode_time(k[8..16].try_into().unwrap_or_default()));
        let (lo, hi) = starts.fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s), hi.max(s)));
        (lo, hi)
    }

    fn rows(self) -> Result<Vec<WindowRow>> {
        let mut rows: Vec<(Vec<u8>, Vec<Acc>)> = self.keys.into_iter().zip(self.accs).collect();
        rows.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        rows.into_iter()
            .map(|(k, accs)| {
                let time = |at: usize| {
                    k.get(at..at + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(tributary_core::decode_time)
                };
                match (time(8), time(0)) {
                    (Some(start), Some(end)) => Ok(WindowRow {
                        start,
                        end,
                        group: k[16..].to_vec(),
                        accs,
                    }),
                    _ => Err(StreamError::Corrupt("a window key is truncated".into())),
                }
            })
            .collect()
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// (pane start, group) of a pane key.
fn parse_pane_key(key: &[u8]) -> Result<(i64, &[u8])> {
    match (keys::time_of(key), key.get(9..)) {
        (Some(start), Some(group)) => Ok((start, group)),
        _ => Err(StreamError::Corrupt("a pane key is truncated".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    #[test]
    fn a_pane_lies_in_every_window_that_covers_its_rows() {
        for (size, slide) in [(10, 2), (7, 3), (5, 5), (6, 4)] {
            let panes = Panes::new(size * MINUTE, slide * MINUTE);
            for minute in -20..20 {
                let t = minute * MINUTE + 17;
                let pane = panes.pane_of(t);
                let by_pane: Vec<i64> = panes.starts(pane).collect();
                let by_row: Vec<i64> = (-40..40)
                    .map(|k| k * slide * MINUTE)
                    .filter(|s| (*s..s + size * MINUTE).contains(&t))
                    .rev()
                    .collect();
                assert_eq!(by_pane, by_row, "size {size}, slide {slide}, t {t}");
                // A pane is kept exactly while one of its windows is open.
                for w in (-30..30).map(|m| m * MINUTE + 5) {
                    let open = by_row.iter().any(|s| s + size * MINUTE > w);
                    assert_eq!(
                        pane >= panes.first_kept(w),
                        open,
                        "size {size}, slide {slide}, pane {pane}, watermark {w}"
                    );
                }
            }
        }
    }
}
