//! Reading one batch from Kafka and decoding it on the reader thread: either a
//! new batch within the trigger's limits, or the exact replay of a recorded plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use rdkafka::message::Headers;
use tributary_avro::RecordDecoder;
use tributary_core::{DeadLetter, DeadLetterReason, OffsetRanges, RawRecord, RecordHeaders};
use tributary_kafka::{KafkaHeaders, KafkaReader, Polled, StartAt, headers_of, raw_record};

use crate::carry::Carry;
use crate::contracts::{ReadBatch, Source};

mod new_batch;
use crate::error::{EngineError, Result};
use crate::plan::{BatchPlan, PlanLimits};

/// Bounds a call to the broker's metadata.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(100);

/// How long past its trigger interval a batch waits for records its plan
/// expects (a transaction still open before its planned end) before it ends
/// with what it has.
const STALL: Duration = Duration::from_secs(30);

/// What a batch read so far.
#[derive(Default)]
struct Counts {
    records: u64,
    bytes: u64,
    /// Estimated from every `DECODE_SAMPLE`th record: the clock costs too much to read per record.
    decode_time: Duration,
    /// The Kafka timestamps of the records that have one (milliseconds).
    kafka_times: Vec<i64>,
}

const DECODE_SAMPLE: u64 = 64;

impl Counts {
    fn count(&mut self, raw: &RawRecord<'_>) {
        self.records += 1;
        self.bytes += raw.value.map_or(0, <[u8]>::len) as u64;
        if let Some(t) = raw.timestamp_ms {
            self.kafka_times.push(t);
        }
    }

    /// The Kafka timestamps, sorted (on the reader thread, so the commit
    /// finds its latencies by binary search).
    fn sorted_kafka_times(&mut self) -> Vec<i64> {
        let mut times = std::mem::take(&mut self.kafka_times);
        times.sort_unstable();
        times
    }
}

/// `raw` with `headers` attached. They are read only for tables that store
/// them: librdkafka parses a message's headers on first access.
fn with_headers<'a, H: Headers + Sync>(
    mut raw: RawRecord<'a>,
    headers: Option<&'a KafkaHeaders<'a, H>>,
) -> RawRecord<'a> {
    raw.headers = headers.map(|h| h as &dyn RecordHeaders);
    raw
}

/// Decodes one record, counts it, and hands on the rows the decoder completed.
fn decode(
    decoder: &mut RecordDecoder,
    raw: &RawRecord<'_>,
    rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    counts: &mut Counts,
) -> Result<()> {
    counts.count(raw);
    if counts.records.is_multiple_of(DECODE_SAMPLE) {
        let started = Instant::now();
        decoder.push(raw)?;
        counts.decode_time += started.elapsed() * DECODE_SAMPLE as u32;
    } else {
        decoder.push(raw)?;
    }
    if decoder.has_batches() {
        decoder.take_batches()?.into_iter().try_for_each(rows)?;
    }
    Ok(())
}

/// The reason of each record the plan sent to the dead letters, by
/// (partition, offset), when the plan recorded them.
fn recorded_dead_letters(plan: &BatchPlan) -> Option<HashMap<(i32, i64), &str>> {
    let records = plan.dead_letter_records.as_ref()?;
    Some(
        records
            .iter()
            .map(|d| ((d.partition, d.offset), d.reason.as_str()))
            .collect(),
    )
}

/// Re-reads exactly the records of a recorded plan: `[start, end)` of each
/// partition, nothing more, however the topic has grown since. The records
/// the plan sent to the dead-letter table go there again without decoding;
/// any other record must decode as it did, or the replay fails (a registry
/// answering differently now must not move a record between the tables).
fn replay_batch(
    reader: &KafkaReader,
    decoder: &mut RecordDecoder,
    plan: &BatchPlan,
    stop: &dyn Fn() -> bool,
    rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<Option<ReadBatch>> {
    let ranges = &plan.ranges;
    let recorded = recorded_dead_letters(plan);
    let mut kept_dead_letters = Vec::new();
    let started = Instant::now();
    let mut pending: BTreeMap<i32, (i64, i64)> = ranges
        .ranges
        .iter()
        .map(|r| (r.partition, (r.start, r.end)))
        .collect();
    let mut replayed = OffsetRanges::new(reader.topic());
    let mut counts = Counts::default();
    pending.retain(|_, (start, end)| start < end);
    while !pending.is_empty() {
        if stop() {
            return Ok(None);
        }
        match reader.poll(POLL)? {
            Polled::Record(m) => {
                let headers = decoder.wants_headers().then(|| headers_of(&m)).flatten();
                let raw = with_headers(raw_record(&m), headers.as_ref());
                let Some((_, end)) = pending.get(&raw.partition).copied() else {
                    continue;
                };
                if raw.offset >= end {
                    pending.remove(&raw.partition);
                    continue;
                }
                replayed.record(raw.partition, raw.offset);
                match recorded
                    .as_ref()
                    .and_then(|r| r.get(&(raw.partition, raw.offset)))
                {
                    Some(reason) => {
                        counts.count(&raw);
                        let reason = DeadLetterReason::Recorded((*reason).to_string());
                        kept_dead_letters.push(DeadLetter::new(&raw, reason));
                    }
                    None => decode(decoder, &raw, rows, &mut counts)?,
                }
                if raw.offset + 1 >= end {
                    pending.remove(&raw.partition);
                }
            }
            Polled::EndOfPartition(p) => {
                if let (Some((_, end)), Some(pos)) = (pending.get(&p).copied(), reader.position(p))
                    && pos >= end
                {
                    pending.remove(&p);
                }
            }
            Polled::Idle => {}
        }
    }
    let decoded = decoder.finish()?;
    if recorded.is_some()
        && let Some(d) = decoded.dead_letters.first()
    {
        return Err(EngineError::ReplayDiffers(format!(
            "record {}/{} of batch {} was decoded when the batch was planned but is a dead \
             letter now ({}); the schema registry may be answering differently",
            d.partition, d.offset, plan.batch_id, d.reason
        )));
    }
    decoded.batches.into_iter().try_for_each(&mut *rows)?;
    let mut dead_letters = decoded.dead_letters;
    dead_letters.extend(kept_dead_letters);
    Ok(Some(ReadBatch {
        ranges: ranges.clone(),
        end_offsets: BTreeMap::new(),
        dead_letters,
        records: counts.records,
        bytes: counts.bytes,
        decode_time: counts.decode_time,
        read_time: started.elapsed(),
        drained: false,
        kafka_times: counts.sorted_kafka_times(),
    }))
}

fn starts(positions: &BTreeMap<i32, i64>) -> Vec<(i32, StartAt)> {
    positions
        .iter()
        .map(|(p, o)| (*p, StartAt::Offset(*o)))
        .collect()
}

impl Source for KafkaReader {
    fn partitions(&self) -> Result<Vec<i32>> {
        Ok(KafkaReader::partitions(self, KAFKA_TIMEOUT)?)
    }

    fn watermarks(&self, partitions: &[i32]) -> Result<BTreeMap<i32, (i64, i64)>> {
        Ok(self.watermarks_of(partitions, KAFKA_TIMEOUT)?)
    }

    fn check_positions(
        &self,
        positions: &BTreeMap<i32, i64>,
        highs: &BTreeMap<i32, i64>,
    ) -> Result<()> {
        Ok(self.check_resume_offsets(positions, highs)?)
    }

    fn seek(&self, positions: &BTreeMap<i32, i64>) -> Result<()> {
        Ok(self.assign(&starts(positions))?)
    }

    fn add(&self, positions: &BTreeMap<i32, i64>) -> Result<()> {
        Ok(self.add_partitions(&starts(positions))?)
    }

    fn read_new(
        &self,
        decoder: &mut RecordDecoder,
        positions: &mut BTreeMap<i32, i64>,
        limits: &PlanLimits,
        undrained: &mut BTreeSet<i32>,
        carry: &mut Carry,
        stop: &dyn Fn() -> bool,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<ReadBatch> {
        new_batch::read_new_batch(
            self, decoder, positions, limits, undrained, carry, stop, rows,
        )
    }

    fn replay(
        &self,
        decoder: &mut RecordDecoder,
        plan: &BatchPlan,
        stop: &dyn Fn() -> bool,
        rows: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<Option<ReadBatch>> {
        let starts: BTreeMap<i32, i64> = plan
            .ranges
            .ranges
            .iter()
            .map(|r| (r.partition, r.start))
            .collect();
        self.seek(&starts)?;
        replay_batch(self, decoder, plan, stop, rows)
    }

    fn latest_offsets(&self) -> BTreeMap<i32, i64> {
        KafkaReader::latest_offsets(self)
    }

    fn commit_positions(&self, next_offsets: &[(i32, i64)]) -> Result<()> {
        Ok(self.commit(next_offsets)?)
    }
}
