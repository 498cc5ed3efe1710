//! Planned reads: each new batch's end offset per partition is fixed before
//! it is read, by Spark's rule for its Kafka source (`maxOffsetsPerTrigger`
//! split over the partitions in proportion to their lag), so one backlog is
//! cut into the same batches every time, whatever order the broker's
//! fetches bring the partitions in. Records fetched past a partition's
//! planned end are kept, owned, for the next batch; a partition with too
//! many kept records is paused until the next batches use them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Message as _, OwnedMessage};
use tributary_kafka::{KafkaReader, Polled};

use crate::error::Result;

/// Bounds a watermark request.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Kept records of one partition past which it is paused.
const KEEP_MAX: usize = 50_000;

/// Where each partition's new batch ends: `from` (the next offset to read)
/// advanced by its share of `limit`, in proportion to its lag to `until`
/// (the newest offset), never past `until`. Spark's rule: a share under one
/// record is rounded up so no partition starves, others are rounded down.
pub(crate) fn planned_ends(
    from: &BTreeMap<i32, i64>,
    until: &BTreeMap<i32, i64>,
    limit: u64,
) -> BTreeMap<i32, i64> {
    let lag = |p: &i32, end: &i64| from.get(p).map_or(0, |begin| (end - begin).max(0));
    let total: i64 = until.iter().map(|(p, end)| lag(p, end)).sum();
    until
        .iter()
        .filter_map(|(p, end)| {
            let begin = *from.get(p)?;
            if limit == u64::MAX || total < 1 {
                return Some((*p, (*end).max(begin)));
            }
            let share = limit as f64 * (lag(p, end) as f64 / total as f64);
            let share = if share < 1.0 {
                share.ceil()
            } else {
                share.floor()
            } as i64;
            Some((*p, begin.saturating_add(share).min(*end).max(begin)))
        })
        .collect()
}

pub(crate) fn advance(positions: &mut BTreeMap<i32, i64>, partition: i32, to: i64) {
    let e = positions.entry(partition).or_insert(to);
    *e = (*e).max(to);
}

/// The newest offset a read_committed reader can read to (the last stable
/// offset), of every partition in `positions`.
pub(crate) fn newest_offsets(
    reader: &KafkaReader,
    positions: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>> {
    let partitions: Vec<i32> = positions.keys().copied().collect();
    Ok(reader.high_watermarks_of(&partitions, TIMEOUT)?)
}

/// What the reader carries from a new batch to the next: records read past
/// their partition's planned end, and when the last batch was planned.
#[derive(Default)]
pub(crate) struct Carry {
    kept: BTreeMap<i32, VecDeque<OwnedMessage>>,
    paused: BTreeSet<i32>,
    last_planned: Option<Instant>,
}

impl Carry {
    /// Waits until a trigger interval has passed since the last batch was
    /// planned, as Spark's processing-time trigger does (a batch that
    /// finished early waits for the next interval), keeping what arrives
    /// meanwhile. Then the next batch may be planned.
    pub(crate) fn wait_for_trigger(
        &mut self,
        reader: &KafkaReader,
        interval: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        if let Some(last) = self.last_planned {
            let due = last + interval;
            while !stop() {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if let Polled::Record(m) = reader.poll(left.min(Duration::from_millis(100)))? {
                    self.keep(reader, &m)?;
                }
            }
        }
        self.last_planned = Some(Instant::now());
        Ok(())
    }

    /// Keeps `m` for a later batch; pauses its partition when it has kept
    /// too many.
    pub(crate) fn keep(&mut self, reader: &KafkaReader, m: &BorrowedMessage<'_>) -> Result<()> {
        let p = m.partition();
        let kept = self.kept.entry(p).or_default();
        kept.push_back(m.detach());
        if kept.len() >= KEEP_MAX && self.paused.insert(p) {
            reader.pause(&[p])?;
        }
        Ok(())
    }

    /// The kept records of `partition` before `end`, in offset order.
    pub(crate) fn take(&mut self, partition: i32, end: i64) -> Vec<OwnedMessage> {
        let Some(kept) = self.kept.get_mut(&partition) else {
            return Vec::new();
        };
        let n = kept.iter().take_while(|m| m.offset() < end).count();
        kept.drain(..n).collect()
    }

    /// Fetches again the paused partitions whose kept records are mostly used.
    pub(crate) fn resume_used(&mut self, reader: &KafkaReader) -> Result<()> {
        let used: Vec<i32> = self
            .paused
            .iter()
            .filter(|p| self.kept.get(p).is_none_or(|k| k.len() < KEEP_MAX / 2))
            .copied()
            .collect();
        if !used.is_empty() {
            reader.resume(&used)?;
            for p in &used {
                self.paused.remove(p);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::planned_ends;
    use std::collections::BTreeMap;

    fn map(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_limit_is_split_in_proportion_to_the_lag_as_spark_does() {
        // Lags 900 and 100 of a limit of 100: 90 and 10.
        let from = map(&[(0, 0), (1, 50)]);
        let until = map(&[(0, 900), (1, 150)]);
        assert_eq!(planned_ends(&from, &until, 100), map(&[(0, 90), (1, 60)]));
        // A share under one record is rounded up, others down.
        let until = map(&[(0, 10_000), (1, 51)]);
        assert_eq!(planned_ends(&from, &until, 100), map(&[(0, 99), (1, 51)]));
        // No limit, or nothing to read: to the newest offset.
        assert_eq!(planned_ends(&from, &until, u64::MAX), until);
        assert_eq!(planned_ends(&from, &from, 100), from);
        // Never past the end, never back.
        let until = map(&[(0, 3), (1, 40)]);
        assert_eq!(planned_ends(&from, &until, 100), map(&[(0, 3), (1, 50)]));
    }
}
