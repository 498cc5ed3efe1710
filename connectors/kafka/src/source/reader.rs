use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers, Message, Timestamp};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary_core::{RawRecord, RecordHeaders};

use crate::error::{KafkaSourceError, Result};
use crate::source::callbacks;

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub group_id: String,
    /// Passed through to librdkafka (security, client id, tuning).
    pub properties: BTreeMap<String, String>,
}

/// Where a partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    /// Resume at this offset; if it no longer exists, that is data loss.
    Offset(i64),
}

/// One poll's outcome.
pub enum Polled<'a> {
    Record(BorrowedMessage<'a>),
    /// The reader reached the end of a partition (as of now).
    EndOfPartition(i32),
    Idle,
}

/// Routes librdkafka's log and error callbacks into `tracing` (the end of a
/// partition arrives as an "error" event; it is routine here), and keeps the
/// newest offset of each partition from librdkafka's statistics, for lag.
#[derive(Default)]
pub struct ReaderContext {
    latest: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for ReaderContext {
    fn stats(&self, statistics: Statistics) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                // The last stable offset is where a read_committed consumer can read to.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if *id >= 0 && end >= 0 {
                    latest.insert(*id, end);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        callbacks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        callbacks::error(error, reason);
    }
}

impl ConsumerContext for ReaderContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        callbacks::commit_result(result);
    }
}

pub struct KafkaReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
}

impl KafkaReader {
    pub fn connect(config: &ReaderConfig) -> Result<KafkaReader> {
        let mut cc = ClientConfig::new();
        // Tuned for draining backlogs of small records: a deep local queue so
        // the poll loop never waits on the network, filled by fetches of
        // 8 MiB (1 MiB a partition). Fetches of 100 MiB (16 MiB a partition)
        // came in bursts the poll loop and the encoder waited on: a drain
        // from Apache Kafka went from 0.70 - 0.91 to 0.77 - 1.17 M rows/s
        // with less CPU (docs/benchmarks.md).
        for (k, v) in [
            ("fetch.max.bytes", "8388608"),
            ("max.partition.fetch.bytes", "1048576"),
            ("queued.max.messages.kbytes", "262144"),
            ("queued.min.messages", "1000000"),
            ("fetch.wait.max.ms", "100"),
            ("isolation.level", "read_committed"),
            // Feeds `latest_offsets` (lag) without extra broker requests.
            ("statistics.interval.ms", "1000"),
        ] {
            cc.set(k, v);
        }
        for (k, v) in &config.properties {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // Explicit start offsets are always given; a resume offset that no
            // longer exists must surface as an error, never as a silent skip.
            .set("auto.offset.reset", "error");
        let consumer: BaseConsumer<ReaderContext> = cc
            .create_with_context(ReaderContext::default())
            .map_err(|e| KafkaSourceError::Config(e.to_string()))?;
        Ok(KafkaReader {
            consumer,
            topic: config.topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partitions, sorted.
    pub fn partitions(&self, timeout: Duration) -> Result<Vec<i32>> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|source| KafkaSourceError::Client {
                operation: "metadata request",
                source,
            })?;
        let mut parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        parts.sort_unstable();
        if parts.is_empty() {
            return Err(KafkaSourceError::NoSuchTopic {
                topic: self.topic.clone(),
            });
        }
        Ok(parts)
    }

    /// `(low, high)` watermarks of a partition.
    pub fn watermarks(&self, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, timeout)
            .map_err(|source| KafkaSourceError::Client {
                operation: "watermark request",
                source,
            })
    }

    /// `(low, high)` watermarks of each of `partitions`, in two requests
    /// however many there are: asked one partition at a time, each request
    /// of an assigned consumer waits behind its fetch long-poll, about
    /// 100 ms a partition. Both ask the broker's ListOffsets as `watermarks`
    /// does, with this consumer's isolation level (read_committed: the high
    /// one is the last stable offset).
    pub fn watermarks_of(
        &self,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<BTreeMap<i32, (i64, i64)>> {
        let lows = self.list_offsets(partitions, Offset::Beginning, timeout)?;
        let highs = self.high_watermarks_of(partitions, timeout)?;
        Ok(lows
            .into_iter()
            .zip(highs)
            .map(|((p, low), (_, high))| (p, (low, high)))
            .collect())
    }

    /// The high watermark of each of `partitions` (as in `watermarks_of`),
    /// in one request.
    pub fn high_watermarks_of(
        &self,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<BTreeMap<i32, i64>> {
        self.list_offsets(partitions, Offset::End, timeout)
    }

    /// The earliest (`Offset::Beginning`) or latest (`Offset::End`) offset
    /// of each of `partitions`, in one request.
    fn list_offsets(
        &self,
        partitions: &[i32],
        at: Offset,
        timeout: Duration,
    ) -> Result<BTreeMap<i32, i64>> {
        let failed = |source| KafkaSourceError::Client {
            operation: "watermark request",
            source,
        };
        let mut asked = TopicPartitionList::new();
        for p in partitions {
            asked
                .add_partition_offset(&self.topic, *p, at)
                .map_err(failed)?;
        }
        let listed = self
            .consumer
            .offsets_for_times(asked, timeout)
            .map_err(failed)?;
        let mut offsets = BTreeMap::new();
        for e in listed.elements_for_topic(&self.topic) {
            e.error().map_err(failed)?;
            if let Offset::Offset(o) = e.offset() {
                offsets.insert(e.partition(), o);
            }
        }
        match partitions.iter().find(|p| !offsets.contains_key(p)) {
            Some(p) => Err(KafkaSourceError::NoOffsetListed {
                topic: self.topic.clone(),
                partition: *p,
            }),
            None => Ok(offsets),
        }
    }

    /// Assigns the partitions, each starting where given.
    pub fn assign(&self, starts: &[(i32, StartAt)]) -> Result<()> {
        self.consumer
            .assign(&self.start_list(starts)?)
            .map_err(|source| KafkaSourceError::Client {
                operation: "assign",
                source,
            })
    }

    fn start_list(&self, starts: &[(i32, StartAt)]) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (p, start) in starts {
            let offset = match start {
                StartAt::Earliest => Offset::Beginning,
                StartAt::Latest => Offset::End,
                StartAt::Offset(o) => Offset::Offset(*o),
            };
            tpl.add_partition_offset(&self.topic, *p, offset)
                .map_err(|source| KafkaSourceError::Client {
                    operation: "assign",
                    source,
                })?;
        }
        Ok(tpl)
    }

    /// Adds partitions to the assignment (partitions added to the topic while
    /// the pipeline runs), each starting where given.
    pub fn add_partitions(&self, starts: &[(i32, StartAt)]) -> Result<()> {
        self.consumer
            .incremental_assign(&self.start_list(starts)?)
            .map_err(|source| KafkaSourceError::Client {
                operation: "assign",
                source,
            })
    }

    /// Fails when a partition's resume offset lies beyond its end: the
    /// topic's offsets went backwards (deleted and recreated, or truncated),
    /// and reading on would silently skip or repeat records. `highs`: each
    /// partition's high watermark (`watermarks_of`).
    pub fn check_resume_offsets(
        &self,
        positions: &BTreeMap<i32, i64>,
        highs: &BTreeMap<i32, i64>,
    ) -> Result<()> {
        let mut behind = Vec::new();
        for (p, pos) in positions {
            let high = *highs
                .get(p)
                .ok_or_else(|| KafkaSourceError::NoOffsetListed {
                    topic: self.topic.clone(),
                    partition: *p,
                })?;
            if high < *pos {
                behind.push(format!(
                    "partition {p}: the pipeline resumes at offset {pos}, but the topic now ends at {high}"
                ));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        Err(KafkaSourceError::OffsetsWentBack {
            topic: self.topic.clone(),
            detail: behind.join("; "),
        })
    }

    /// What an out-of-range fetch means, partition by partition: offsets
    /// deleted by retention, or offsets that went backwards.
    fn out_of_range(&self, error: &KafkaError) -> KafkaSourceError {
        let Ok(positions) = self.consumer.position() else {
            return self.data_loss(error.to_string());
        };
        let mut gone = Vec::new();
        let mut behind = Vec::new();
        for e in positions.elements_for_topic(&self.topic) {
            let Offset::Offset(pos) = e.offset() else {
                continue;
            };
            let Ok((low, high)) = self.watermarks(e.partition(), Duration::from_secs(10)) else {
                continue;
            };
            if pos > high {
                behind.push(format!(
                    "partition {}: the pipeline is at offset {pos}, but the topic now ends at {high}",
                    e.partition()
                ));
            } else if pos < low {
                gone.push(format!(
                    "partition {}: offset {pos} is gone (the partition now starts at {low})",
                    e.partition()
                ));
            }
        }
        if !behind.is_empty() {
            return KafkaSourceError::OffsetsWentBack {
                topic: self.topic.clone(),
                detail: behind.join("; "),
            };
        }
        self.data_loss(if gone.is_empty() {
            error.to_string()
        } else {
            gone.join("; ")
        })
    }

    fn data_loss(&self, detail: String) -> KafkaSourceError {
        KafkaSourceError::DataLoss {
            topic: self.topic.clone(),
            detail,
        }
    }

    /// Polls for the next record. Transient client errors are logged and
    /// reported as `Idle` (librdkafka retries by itself); data loss is an error.
    pub fn poll(&self, timeout: Duration) -> Result<Polled<'_>> {
        match self.consumer.poll(timeout) {
            None => Ok(Polled::Idle),
            Some(Ok(m)) => Ok(Polled::Record(m)),
            Some(Err(KafkaError::PartitionEOF(p))) => Ok(Polled::EndOfPartition(p)),
            Some(Err(e)) if is_data_loss(&e) => Err(self.out_of_range(&e)),
            Some(Err(e)) => {
                tracing::warn!(topic = %self.topic, error = %e, "Kafka consumer error; librdkafka keeps retrying");
                Ok(Polled::Idle)
            }
        }
    }

    /// Stops fetching `partitions` (records already fetched for them are
    /// dropped by librdkafka); `resume` fetches again from after the last
    /// record delivered.
    pub fn pause(&self, partitions: &[i32]) -> Result<()> {
        let tpl = self.partition_list(partitions)?;
        self.consumer
            .pause(&tpl)
            .map_err(|source| KafkaSourceError::Client {
                operation: "pause",
                source,
            })
    }

    pub fn resume(&self, partitions: &[i32]) -> Result<()> {
        let tpl = self.partition_list(partitions)?;
        self.consumer
            .resume(&tpl)
            .map_err(|source| KafkaSourceError::Client {
                operation: "resume",
                source,
            })
    }

    fn partition_list(&self, partitions: &[i32]) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        Ok(tpl)
    }

    /// The newest offset of each partition the consumer may read to (last
    /// stable offset), as of librdkafka's last statistics (every second).
    pub fn latest_offsets(&self) -> BTreeMap<i32, i64> {
        self.consumer
            .context()
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next offset the consumer will fetch from `partition`, once known.
    pub fn position(&self, partition: i32) -> Option<i64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// Sends `(partition, next offset)` pairs to the consumer group, so lag
    /// tools see the pipeline's progress. The Delta log stays the source of truth.
    pub fn commit(&self, next_offsets: &[(i32, i64)]) -> Result<()> {
        let tpl = callbacks::offset_list(&self.topic, next_offsets)?;
        // Asynchronous: these offsets only inform lag tools, and a coordinator
        // that does not answer must never stall a batch. Failures are
        // reported by `ReaderContext::commit_callback`.
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|source| KafkaSourceError::Client {
                operation: "offset commit",
                source,
            })
    }
}

fn is_data_loss(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange) | Some(RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// The record view the decoder needs, of a message just polled or kept
/// past its batch (`BorrowedMessage::detach`).
pub fn raw_record<M: Message>(m: &M) -> RawRecord<'_> {
    RawRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: match m.timestamp() {
            Timestamp::NotAvailable => None,
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
        },
        key: m.key(),
        value: m.payload(),
        // Attached by the caller from `headers_of`, which must outlive the record view.
        headers: None,
    }
}

/// A message's headers, for `RawRecord::headers`.
pub struct KafkaHeaders<'a, H: Headers = BorrowedHeaders>(&'a H);

impl<H: Headers> std::fmt::Debug for KafkaHeaders<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} header(s)", self.0.count())
    }
}

impl<H: Headers + Sync> RecordHeaders for KafkaHeaders<'_, H> {
    fn for_each(&self, f: &mut dyn FnMut(&str, Option<&[u8]>)) {
        for header in self.0.iter() {
            f(header.key, header.value);
        }
    }
}

/// The headers of a message just polled or kept past its batch.
pub fn headers_of<M: Message>(m: &M) -> Option<KafkaHeaders<'_, M::Headers>> {
    m.headers().map(KafkaHeaders)
}
