//! The republish sink's producer. Each table version is published in one
//! Kafka transaction, together with the sink's progress: a record on the
//! progress topic (key: the transactional id; value: the next table version
//! to publish). A `read_committed` reader sees the whole transaction or none
//! of it, so a restarted sink reads back exactly where the last committed
//! transaction left off.
//!
//! Why a progress record and not the consumer-group offset that Kafka's
//! consume-transform-produce loops commit with `sendOffsetsToTransaction`:
//! both are atomic with the transaction on a real broker, but the record can
//! also be read back on brokers and test clusters that accept transactional
//! offset commits without storing them (librdkafka's mock cluster).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::{KafkaSourceError, Result};

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Fixed per pipeline: a new publisher fences every older one.
    pub transactional_id: String,
    /// Where the progress records go (partition 0).
    pub progress_topic: String,
    /// Passed through to librdkafka (security, compression, timeouts).
    pub properties: BTreeMap<String, String>,
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

pub struct TransactionalPublisher {
    producer: ThreadedProducer<DefaultProducerContext>,
    progress: BaseConsumer,
    config: PublisherConfig,
}

impl TransactionalPublisher {
    /// Connects, and fences every earlier publisher with the same
    /// transactional id (their open transactions are aborted). Blocking.
    pub fn connect(config: PublisherConfig) -> Result<TransactionalPublisher> {
        let mut producer = ClientConfig::new();
        let mut consumer = ClientConfig::new();
        for (k, v) in &config.properties {
            producer.set(k, v);
            consumer.set(k, v);
        }
        let producer: ThreadedProducer<DefaultProducerContext> = producer
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("transactional.id", &config.transactional_id)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|source| client("creating the transactional producer", source))?;
        let progress: BaseConsumer = consumer
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &config.transactional_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|source| client("creating the progress reader", source))?;
        // Fences older publishers and aborts their open transaction, so the
        // progress read next sees only committed transactions.
        producer.init_transactions(TIMEOUT).map_err(|e| {
            transaction_error(&config.transactional_id, "initialising transactions", e)
        })?;
        Ok(TransactionalPublisher {
            producer,
            progress,
            config,
        })
    }

    /// The next table version to publish, as the last committed transaction
    /// recorded it; `None` before the first. Reads the progress topic
    /// backwards in growing windows until it finds this publisher's newest
    /// record. Blocking.
    pub fn next_version(&self) -> Result<Option<u64>> {
        let topic = &self.config.progress_topic;
        let (low, high) = self
            .progress
            .fetch_watermarks(topic, 0, TIMEOUT)
            .map_err(|source| client("reading the republish progress", source))?;
        let mut end = high;
        let mut window = 1024;
        while end > low {
            let start = (end - window).max(low);
            if let Some(version) = self.last_progress_in(start, end)? {
                return Ok(Some(version));
            }
            end = start;
            window *= 4;
        }
        Ok(None)
    }

    /// This publisher's newest progress record in `[start, end)`.
    fn last_progress_in(&self, start: i64, end: i64) -> Result<Option<u64>> {
        let topic = &self.config.progress_topic;
        let mut from = TopicPartitionList::new();
        from.add_partition_offset(topic, 0, Offset::Offset(start))
            .map_err(|source| client("reading the republish progress", source))?;
        self.progress
            .assign(&from)
            .map_err(|source| client("reading the republish progress", source))?;
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut found = None;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(KafkaSourceError::Config(format!(
                    "timed out reading the republish progress from {topic}"
                )));
            }
            match self.progress.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    if m.key() == Some(self.config.transactional_id.as_bytes()) {
                        found = m.payload().and_then(parse_progress);
                    }
                    if m.offset() + 1 >= end {
                        break;
                    }
                }
                // The end of what read_committed may read (past transaction markers).
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(source)) => return Err(client("reading the republish progress", source)),
                None => {}
            }
        }
        Ok(found)
    }

    /// Publishes `records` and records `next_version` as progress, in one
    /// transaction. On failure the transaction is aborted (nothing of it is
    /// visible to `read_committed` consumers) and the error returned; a
    /// fenced publisher gets `Fenced` and must stop. Blocking.
    pub fn publish(&self, records: &[OutRecord], next_version: u64) -> Result<()> {
        let id = &self.config.transactional_id;
        self.producer
            .begin_transaction()
            .map_err(|e| transaction_error(id, "beginning a transaction", e))?;
        match self.fill_and_commit(records, next_version) {
            Ok(()) => Ok(()),
            Err(e) => {
                if !matches!(e, KafkaSourceError::Fenced { .. }) {
                    // Best effort: an abort that fails leaves the transaction to
                    // time out, and the next publisher's init aborts it anyway.
                    let _ = self.producer.abort_transaction(TIMEOUT);
                }
                Err(e)
            }
        }
    }

    fn fill_and_commit(&self, records: &[OutRecord], next_version: u64) -> Result<()> {
        let id = &self.config.transactional_id;
        for r in records {
            let mut record = BaseRecord::to(&self.config.topic).payload(&r.value);
            if let Some(key) = &r.key {
                record = record.key(key);
            }
            self.send(record)
                .map_err(|e| transaction_error(id, "producing", e))?;
        }
        let progress = format!("{{\"nextVersion\":{next_version}}}");
        let record = BaseRecord::to(&self.config.progress_topic)
            .partition(0)
            .key(id.as_bytes())
            .payload(progress.as_bytes());
        self.send(record)
            .map_err(|e| transaction_error(id, "recording the republish progress", e))?;
        self.producer
            .commit_transaction(TIMEOUT)
            .map_err(|e| transaction_error(id, "committing the transaction", e))
    }
}

impl TransactionalPublisher {
    /// Sends one record, waiting while librdkafka's queue is full.
    fn send<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

fn parse_progress(payload: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("nextVersion")?.as_u64()
}

fn client(operation: &'static str, source: KafkaError) -> KafkaSourceError {
    KafkaSourceError::Client { operation, source }
}

/// A fatal producer error means another publisher with the same
/// transactional id took over: this one is a zombie.
fn transaction_error(
    transactional_id: &str,
    operation: &'static str,
    e: KafkaError,
) -> KafkaSourceError {
    let fatal = match &e {
        KafkaError::Transaction(t) => t.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
    };
    if fatal {
        KafkaSourceError::Fenced {
            transactional_id: transactional_id.to_string(),
            detail: e.to_string(),
        }
    } else {
        client(operation, e)
    }
}
