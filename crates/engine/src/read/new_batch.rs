//! New batches: each partition's end is planned before it is read
//! (`carry::planned_ends`), then read to it, records kept from earlier
//! batches first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use deltalake::arrow::array::RecordBatch;
use rdkafka::message::{BorrowedMessage, Message as _};
use tributary_avro::RecordDecoder;
use tributary_core::{OffsetRanges, RawRecord};
use tributary_kafka::{KafkaReader, Polled, headers_of, raw_record};

use super::{Counts, POLL, STALL, decode, with_headers};
use crate::carry::{Carry, advance, newest_offsets, planned_ends};
use crate::contracts::ReadBatch;
use crate::error::Result;
use crate::plan::PlanLimits;

/// Reads a new batch starting at `positions` (updated in place): its end
/// offset per partition is planned first (`carry::planned_ends`), then each
/// partition is read to it, records kept from earlier batches first.
/// Without `available_now`, a batch is planned a trigger interval after the
/// last one was. Returns a batch with no records when draining is complete,
/// a stop was requested, or nothing was there to read.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_new_batch(
    reader: &KafkaReader,
    decoder: &mut RecordDecoder,
    positions: &mut BTreeMap<i32, i64>,
    limits: &PlanLimits,
    undrained: &mut BTreeSet<i32>,
    carry: &mut Carry,
    stop: &dyn Fn() -> bool,
    rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<ReadBatch> {
    // A backlog drained with `available_now` runs batch after batch.
    if limits.drain_targets.is_none() {
        carry.wait_for_trigger(reader, limits.interval, stop)?;
    }
    let started = Instant::now();
    let mut batch = Reading::plan(reader, positions, limits)?;
    batch.take_kept(carry, decoder, positions, rows)?;
    carry.resume_used(reader)?;
    let deadline = started + limits.interval;
    while !stop() && !batch.pending.is_empty() && batch.counts.bytes < limits.max_bytes {
        match reader.poll(POLL)? {
            Polled::Record(m) => batch.record(&m, reader, carry, decoder, positions, rows)?,
            Polled::EndOfPartition(p) => batch.end_of_partition(p, reader, positions),
            Polled::Idle => {
                if limits.drain_targets.is_none() && Instant::now() >= deadline + STALL {
                    tracing::warn!(topic = reader.topic(), partitions = ?batch.pending,
                        "records planned for this batch did not come within {STALL:?}; it ends with what it has");
                    break;
                }
            }
        }
    }
    let decoded = decoder.finish()?;
    decoded.batches.into_iter().try_for_each(&mut *rows)?;
    if let Some(targets) = &limits.drain_targets {
        undrained.retain(|p| {
            positions
                .get(p)
                .is_none_or(|pos| targets.get(p).is_some_and(|t| pos < t))
        });
    }
    let drained = limits.drain_targets.is_some() && undrained.is_empty();
    let Reading {
        ranges,
        mut counts,
        ends,
        ..
    } = batch;
    tracing::debug!(
        records = counts.records, bytes = counts.bytes, drained, stopped = stop(),
        ranges = ?ranges.ranges, planned = ?ends, "batch read"
    );
    Ok(ReadBatch {
        ranges,
        end_offsets: positions.clone(),
        dead_letters: decoded.dead_letters,
        records: counts.records,
        bytes: counts.bytes,
        decode_time: counts.decode_time,
        read_time: started.elapsed(),
        drained,
        kafka_times: counts.sorted_kafka_times(),
    })
}

/// A new batch being read: its planned ends and what it has read so far.
struct Reading {
    ranges: OffsetRanges,
    counts: Counts,
    /// The planned end offset (exclusive) of each partition.
    ends: BTreeMap<i32, i64>,
    /// Partitions not yet read to their end.
    pending: BTreeSet<i32>,
}

impl Reading {
    fn plan(
        reader: &KafkaReader,
        positions: &BTreeMap<i32, i64>,
        limits: &PlanLimits,
    ) -> Result<Reading> {
        let newest = match &limits.drain_targets {
            Some(targets) => targets.clone(),
            None => newest_offsets(reader, positions)?,
        };
        let ends = planned_ends(positions, &newest, limits.max_offsets);
        let pending = ends
            .iter()
            .filter(|(p, end)| positions.get(p).is_some_and(|pos| pos < end))
            .map(|(p, _)| *p)
            .collect();
        Ok(Reading {
            ranges: OffsetRanges::new(reader.topic()),
            counts: Counts::default(),
            ends,
            pending,
        })
    }

    /// Reads first the records earlier batches kept that this one plans.
    fn take_kept(
        &mut self,
        carry: &mut Carry,
        decoder: &mut RecordDecoder,
        positions: &mut BTreeMap<i32, i64>,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        for p in self.pending.clone() {
            let end = self.ends[&p];
            for m in carry.take(p, end) {
                let headers = decoder.wants_headers().then(|| headers_of(&m)).flatten();
                let raw = with_headers(raw_record(&m), headers.as_ref());
                self.take(decoder, &raw, positions, rows)?;
            }
            if positions[&p] >= end {
                self.pending.remove(&p);
            }
        }
        Ok(())
    }

    /// A polled record: read when its partition's plan wants it, else kept.
    fn record(
        &mut self,
        m: &BorrowedMessage<'_>,
        reader: &KafkaReader,
        carry: &mut Carry,
        decoder: &mut RecordDecoder,
        positions: &mut BTreeMap<i32, i64>,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let p = m.partition();
        if positions.get(&p).is_some_and(|pos| m.offset() < *pos) {
            return Ok(());
        }
        let end = self.ends.get(&p).copied();
        if self.pending.contains(&p) && end.is_some_and(|e| m.offset() < e) {
            let headers = decoder.wants_headers().then(|| headers_of(m)).flatten();
            let raw = with_headers(raw_record(m), headers.as_ref());
            self.take(decoder, &raw, positions, rows)?;
            if end.is_some_and(|e| positions[&p] >= e) {
                self.pending.remove(&p);
            }
            return Ok(());
        }
        // Past the planned end (a transaction marker may sit just before
        // it): the partition is done.
        if let Some(e) = end.filter(|_| self.pending.remove(&p)) {
            advance(positions, p, e);
        }
        carry.keep(reader, m)
    }

    /// Caught up past the planned end (past transaction markers too): the
    /// partition is done. An end reached before this batch's records were
    /// fetched says nothing.
    fn end_of_partition(
        &mut self,
        p: i32,
        reader: &KafkaReader,
        positions: &mut BTreeMap<i32, i64>,
    ) {
        if let Some(e) = self.ends.get(&p).copied()
            && reader.position(p).is_some_and(|at| at >= e)
            && self.pending.remove(&p)
        {
            advance(positions, p, e);
        }
    }

    /// Decodes `raw` into the batch and moves its partition's position past it.
    fn take(
        &mut self,
        decoder: &mut RecordDecoder,
        raw: &RawRecord<'_>,
        positions: &mut BTreeMap<i32, i64>,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.ranges.record(raw.partition, raw.offset);
        advance(positions, raw.partition, raw.offset + 1);
        decode(decoder, raw, rows, &mut self.counts)
    }
}
