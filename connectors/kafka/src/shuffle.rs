//! The repartition stage's Kafka side: a consumer of the source topic in
//! its own consumer group, and a transactional producer that writes each
//! record, unchanged, to the partition of the repartition topic its caller
//! picked. Each transaction carries the records and the consumed source
//! offsets (`sendOffsetsToTransaction` with the consumer's group metadata),
//! so a record reaches the repartition topic exactly once: an instance that
//! dies mid-transaction leaves an aborted transaction, and whoever owns the
//! partition next starts from the offsets of the last committed one.
//!
//! Zombies are fenced by the consumer group's generation (KIP-447): a
//! member that lost its partitions in a rebalance cannot commit offsets for
//! them. Records polled across a rebalance are dropped before any of them
//! is produced, and read again from the committed offsets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::{KafkaSourceError, Result};
use crate::source::callbacks;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Repartition transactions begun by this process, for the crash point.
static TRANSACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Headers the repartition topic's records carry besides the source
/// record's own: where the record came from.
pub const SOURCE_TOPIC_HEADER: &str = "tributary.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "tributary.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "tributary.source.offset";

#[derive(Debug, Clone)]
pub struct ShuffleConfig {
    pub bootstrap_servers: String,
    pub source_topic: String,
    pub target_topic: String,
    /// Partitions of the target topic (created with them if missing).
    pub partitions: u32,
    /// The stage's consumer group (not the stateful stage's).
    pub group_id: String,
    /// Unique per process: fencing is by the group generation.
    pub transactional_id: String,
    /// Where a source partition without committed offsets starts.
    pub from_earliest: bool,
    /// Passed through to librdkafka (security, client id, tuning).
    pub properties: BTreeMap<String, String>,
}

/// Notes rebalances, so records polled across one are dropped.
#[derive(Default)]
pub struct ShuffleContext {
    rebalanced: AtomicBool,
}

impl ClientContext for ShuffleContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        callbacks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        callbacks::error(error, reason);
    }
}

impl ConsumerContext for ShuffleContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

pub struct Shuffle {
    consumer: BaseConsumer<ShuffleContext>,
    producer: ThreadedProducer<DefaultProducerContext>,
    config: ShuffleConfig,
}

impl Shuffle {
    /// Creates the target topic if missing (refusing one with another
    /// partition count), joins the stage's group and initialises the
    /// producer's transactions. Blocking.
    pub fn connect(config: ShuffleConfig) -> Result<Shuffle> {
        Self::ensure_topic(&config)?;
        let mut base = ClientConfig::new();
        for (k, v) in &config.properties {
            base.set(k, v);
        }
        base.set("bootstrap.servers", &config.bootstrap_servers);
        let producer: ThreadedProducer<DefaultProducerContext> = base
            .clone()
            .set("transactional.id", &config.transactional_id)
            .set("enable.idempotence", "true")
            // A SIGKILLed stage's open transaction holds back the stateful
            // stage's read_committed reads until it times out.
            .set("transaction.timeout.ms", "10000")
            .set("linger.ms", "5")
            .create()
            .map_err(|source| client("creating the repartition producer", source))?;
        producer
            .init_transactions(TIMEOUT)
            .map_err(|source| client("initialising the repartition transactions", source))?;
        let consumer: BaseConsumer<ShuffleContext> = base
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set(
                "auto.offset.reset",
                if config.from_earliest {
                    "earliest"
                } else {
                    "latest"
                },
            )
            .create_with_context(ShuffleContext::default())
            .map_err(|source| client("creating the repartition consumer", source))?;
        consumer
            .subscribe(&[&config.source_topic])
            .map_err(|source| client("subscribing to the source topic", source))?;
        Ok(Shuffle {
            consumer,
            producer,
            config,
        })
    }

    /// Creates the target topic with the configured partitions when
    /// missing; refuses one that has another count. Blocking.
    pub fn ensure_topic(config: &ShuffleConfig) -> Result<()> {
        let mut base = ClientConfig::new();
        for (k, v) in &config.properties {
            base.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = base
            .set("bootstrap.servers", &config.bootstrap_servers)
            .create()
            .map_err(|source| client("creating the admin client", source))?;
        ensure_target_topic(&admin, config)
    }

    /// Up to `max` records, polled for at most `wait`; `None` when a
    /// rebalance happened meanwhile (the records are dropped: the
    /// partitions restart from their committed offsets). Serves the group
    /// protocol, so call it often.
    pub fn poll(&self, max: usize, wait: Duration) -> Result<Option<Vec<BorrowedMessage<'_>>>> {
        let context = self.consumer.context();
        context.rebalanced.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .consumer
                .poll(if out.is_empty() { left } else { Duration::ZERO })
            {
                Some(Ok(m)) => out.push(m),
                Some(Err(e)) => return Err(client("reading the source topic", e)),
                None if out.is_empty() && !left.is_zero() => {}
                None => break,
            }
        }
        if context.rebalanced.load(Ordering::SeqCst) {
            self.rewind(&out)?;
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Moves each partition that `dropped` records came from back to the
    /// first of them, so they are read again. Polling them advanced the
    /// position even when a rebalance (the first assignment too) came in
    /// between; a partition no longer assigned is left to its new owner,
    /// which starts at the committed offset.
    fn rewind(&self, dropped: &[BorrowedMessage<'_>]) -> Result<()> {
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        for m in dropped {
            let o = first.entry(m.partition()).or_insert(m.offset());
            *o = (*o).min(m.offset());
        }
        let assigned = self.consumer.assignment().unwrap_or_default();
        for (partition, offset) in first {
            if assigned
                .find_partition(&self.config.source_topic, partition)
                .is_some()
            {
                // Failing, the stage reconnects: a new consumer starts at
                // the committed offsets.
                self.consumer
                    .seek(
                        &self.config.source_topic,
                        partition,
                        Offset::Offset(offset),
                        TIMEOUT,
                    )
                    .map_err(|source| client("rewinding a source partition", source))?;
            }
        }
        Ok(())
    }

    /// Whether every source partition assigned to this member has been read
    /// to its end; `None` while none is assigned.
    pub fn drained(&self) -> Result<Option<bool>> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(|source| client("reading the repartition assignment", source))?;
        if assignment.count() == 0 {
            return Ok(None);
        }
        let positions = self
            .consumer
            .position()
            .map_err(|source| client("reading the repartition positions", source))?;
        for entry in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(entry.topic(), entry.partition(), TIMEOUT)
                .map_err(|source| client("reading the source topic's end", source))?;
            let position = positions
                .find_partition(entry.topic(), entry.partition())
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1);
            if high > 0 && position < high {
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
    }

    /// Writes `records[i]` to partition `targets[i]` of the target topic,
    /// with its key, value, timestamp and headers, plus the source position
    /// headers, and commits them with the consumed offsets in one
    /// transaction. On failure the transaction is aborted: none of it is
    /// visible, and the offsets stay where the last commit left them.
    pub fn forward(&self, records: &[BorrowedMessage<'_>], targets: &[i32]) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|source| client("beginning a repartition transaction", source))?;
        let sent = self.send_all(records, targets);
        tributary_core::crash_point(
            tributary_core::CrashPoint::InRepartition,
            TRANSACTIONS.fetch_add(1, Ordering::Relaxed),
        );
        let committed = sent.and_then(|()| self.commit(records));
        if committed.is_err() {
            // Best effort: a failed abort leaves the transaction to time out.
            let _ = self.producer.abort_transaction(TIMEOUT);
        }
        committed
    }

    fn send_all(&self, records: &[BorrowedMessage<'_>], targets: &[i32]) -> Result<()> {
        for (m, &partition) in records.iter().zip(targets) {
            let mut headers = OwnedHeaders::new();
            if let Some(own) = m.headers() {
                for h in own.iter() {
                    headers = headers.insert(h);
                }
            }
            let position = [
                (SOURCE_TOPIC_HEADER, m.topic().to_string()),
                (SOURCE_PARTITION_HEADER, m.partition().to_string()),
                (SOURCE_OFFSET_HEADER, m.offset().to_string()),
            ];
            for (key, value) in &position {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.config.target_topic)
                .partition(partition)
                .headers(headers);
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            if let Some(value) = m.payload() {
                record = record.payload(value);
            }
            if let Some(ms) = m.timestamp().to_millis() {
                record = record.timestamp(ms);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((source, _)) => {
                        return Err(client("producing to the repartition topic", source));
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&self, records: &[BorrowedMessage<'_>]) -> Result<()> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for m in records {
            let n = next.entry(m.partition()).or_default();
            *n = (*n).max(m.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in next {
            offsets
                .add_partition_offset(&self.config.source_topic, p, Offset::Offset(o))
                .map_err(|source| client("recording the repartition offsets", source))?;
        }
        let group = self.consumer.group_metadata().ok_or_else(|| {
            KafkaSourceError::Config("the repartition consumer has no consumer group".into())
        })?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
            .map_err(|source| client("recording the repartition offsets", source))?;
        self.producer
            .commit_transaction(TIMEOUT)
            .map_err(|source| client("committing a repartition transaction", source))
    }
}

fn ensure_target_topic(
    admin: &AdminClient<DefaultClientContext>,
    config: &ShuffleConfig,
) -> Result<()> {
    let topic = &config.target_topic;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaSourceError::Config(format!("cannot start a runtime: {e}")))?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let new = NewTopic::new(topic, config.partitions as i32, TopicReplication::Fixed(-1));
    let created = runtime
        .block_on(admin.create_topics(&[new], &options))
        .map_err(|source| client("creating the repartition topic", source))?;
    for result in created {
        match result {
            Ok(_) => {
                tracing::info!(topic = %topic, partitions = config.partitions, "created the repartition topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(KafkaSourceError::Config(format!(
                    "cannot create the repartition topic {topic}: {code}"
                )));
            }
        }
    }
    // A topic just created shows no partitions until its metadata spreads.
    let mut found = 0;
    for _ in 0..50 {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|source| client("reading the repartition topic's metadata", source))?;
        found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if found > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if found != config.partitions as usize {
        return Err(KafkaSourceError::Config(format!(
            "the repartition topic {topic} has {found} partitions and the spec says {}: a \
             different count sends a key's records to another partition than its state. \
             Set repartition.partitions to {found}, or start over with a new topic, table \
             and checkpoint",
            config.partitions
        )));
    }
    Ok(())
}

fn client(operation: &'static str, source: KafkaError) -> KafkaSourceError {
    KafkaSourceError::Client { operation, source }
}
