//! The republish sink's producer. Rows are published in Kafka transactions
//! that also carry the sink's position (the next table version and row to
//! publish), stored twice, atomically with the rows:
//!
//! - as the committed offset of the consumer group named by the
//!   transactional id (`sendOffsetsToTransaction`, the position in the
//!   offset's metadata). Reading it back waits only for this sink's own
//!   pending transaction, which `init_transactions` has just aborted, so
//!   another producer's open transaction never delays or misleads it;
//! - as a record on the compacted progress topic (key: the transactional id),
//!   the durable copy: group offsets expire when a sink stays down longer
//!   than the broker's `offsets.retention.minutes`, and brokers that accept
//!   transactional offset commits without storing them (librdkafka's mock
//!   cluster) have only this one.
//!
//! A restarted sink resumes from the group offset when there is one, else
//! from its newest progress record, read only once every transaction before
//! it has ended (the last stable offset reached the end of the partition).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
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
    pub progress_topic_check: ProgressTopicCheck,
}

/// Whether the progress topic's cleanup policy is checked at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressTopicCheck {
    /// Described, created compacted when missing, refused unless compacted.
    Describe,
    /// Taken as it is: for the development stack's mock cluster, which
    /// cannot describe configs and keeps everything anyway; the caller
    /// created the topic.
    TrustDevStack,
}

/// Where the sink stands: the next table version to publish, and within it
/// the next row (rows in the order of the version's added files, after the
/// filter). A version larger than one transaction is published in several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub version: u64,
    pub row: u64,
}

impl Position {
    fn to_json(self) -> String {
        format!(
            "{{\"nextVersion\":{},\"nextRow\":{}}}",
            self.version, self.row
        )
    }

    /// Records written before versions were split carry no `nextRow`.
    fn parse(payload: &[u8]) -> Option<Position> {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        Some(Position {
            version: value.get("nextVersion")?.as_u64()?,
            row: value.get("nextRow").and_then(|r| r.as_u64()).unwrap_or(0),
        })
    }
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

pub struct TransactionalPublisher {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// Reads the progress topic as `read_committed`: its watermarks end at
    /// the last stable offset.
    progress: BaseConsumer,
    /// `read_uncommitted`, for the progress partition's real end.
    uncommitted: BaseConsumer,
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
        let admin: AdminClient<DefaultClientContext> = consumer
            .clone()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .create()
            .map_err(|source| client("creating the admin client", source))?;
        if config.progress_topic_check == ProgressTopicCheck::Describe {
            check_progress_topic(&admin, &config.progress_topic)?;
        }
        consumer
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &config.transactional_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let uncommitted: BaseConsumer = consumer
            .clone()
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(|source| client("creating the progress reader", source))?;
        let progress: BaseConsumer = consumer
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
            uncommitted,
            config,
        })
    }

    /// Where the last committed transaction left off; `None` before the
    /// first. Blocking.
    pub fn position(&self) -> Result<Option<Position>> {
        if let Some(position) = self.committed_position()? {
            return Ok(Some(position));
        }
        let topic = &self.config.progress_topic;
        let (low, high) = self.wait_for_stable_end()?;
        let found = self.newest_progress_record(low, high)?;
        if found.is_none() && low > 0 {
            return Err(KafkaSourceError::Config(format!(
                "no republish progress for {} was found, but the progress topic {topic} has lost \
                 records (its partition 0 now starts at offset {low}): starting over from table \
                 version 0 could publish every row again. Keep the progress topic with \
                 cleanup.policy=compact and no retention.ms; to start over on purpose, publish \
                 to a new progress topic",
                self.config.transactional_id
            )));
        }
        Ok(found)
    }

    /// The position kept as the group's committed offset, if the broker stored one.
    fn committed_position(&self) -> Result<Option<Position>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.progress_topic, 0);
        let committed = self
            .progress
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|source| client("reading the republish position", source))?;
        Ok(committed
            .find_partition(&self.config.progress_topic, 0)
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .and_then(|e| Position::parse(e.metadata().as_bytes())))
    }

    /// The progress partition's `(low, high)` watermarks, once no transaction
    /// older than now is open on it: until then a `read_committed` reader
    /// stops before the open transaction, and this sink's newest record may
    /// lie beyond it. Another producer's hung transaction ends at the latest
    /// when its `transaction.timeout.ms` runs out.
    fn wait_for_stable_end(&self) -> Result<(i64, i64)> {
        let topic = &self.config.progress_topic;
        let watermarks = |consumer: &BaseConsumer| {
            consumer
                .fetch_watermarks(topic, 0, TIMEOUT)
                .map_err(|source| client("reading the republish progress", source))
        };
        let (low, high) = watermarks(&self.uncommitted)?;
        let mut warned = false;
        loop {
            // A read_committed client's high watermark is the last stable offset.
            let (_, stable) = watermarks(&self.progress)?;
            if stable >= high {
                return Ok((low, high));
            }
            if !warned {
                tracing::warn!(topic = %topic, stable, high,
                    "a transaction of another producer is open on the republish progress topic; \
                     waiting for it to end before reading this sink's position");
                warned = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// This publisher's newest progress record in `[low, high)`, read
    /// backwards in growing windows.
    fn newest_progress_record(&self, low: i64, high: i64) -> Result<Option<Position>> {
        let mut end = high;
        let mut window = 1024;
        while end > low {
            let start = (end - window).max(low);
            if let Some(position) = self.last_progress_in(start, end)? {
                return Ok(Some(position));
            }
            end = start;
            window *= 4;
        }
        Ok(None)
    }

    /// This publisher's newest progress record in `[start, end)`.
    fn last_progress_in(&self, start: i64, end: i64) -> Result<Option<Position>> {
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
                        found = m.payload().and_then(Position::parse);
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

    /// Publishes `records` and records `next` as the position, in one
    /// transaction. On failure the transaction is aborted (nothing of it is
    /// visible to `read_committed` consumers) and the error returned; a
    /// fenced publisher gets `Fenced` and must stop. Blocking.
    pub fn publish(&self, records: &[OutRecord], next: Position) -> Result<()> {
        let id = &self.config.transactional_id;
        self.producer
            .begin_transaction()
            .map_err(|e| transaction_error(id, "beginning a transaction", e))?;
        match self.fill_and_commit(records, next) {
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

    fn fill_and_commit(&self, records: &[OutRecord], next: Position) -> Result<()> {
        let id = &self.config.transactional_id;
        for r in records {
            let mut record = BaseRecord::to(&self.config.topic).payload(&r.value);
            if let Some(key) = &r.key {
                record = record.key(key);
            }
            self.send(record)
                .map_err(|e| transaction_error(id, "producing", e))?;
        }
        let progress = next.to_json();
        let record = BaseRecord::to(&self.config.progress_topic)
            .partition(0)
            .key(id.as_bytes())
            .payload(progress.as_bytes());
        self.send(record)
            .map_err(|e| transaction_error(id, "recording the republish progress", e))?;
        // The same position as the group's offset: the version as the offset
        // (for lag tools), the whole position in its metadata.
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &self.config.progress_topic,
                0,
                Offset::Offset(next.version as i64),
            )
            .map_err(|e| transaction_error(id, "recording the republish progress", e))?;
        if let Some(mut entry) = offsets.find_partition(&self.config.progress_topic, 0) {
            entry.set_metadata(progress);
        }
        let group = self.progress.group_metadata().ok_or_else(|| {
            KafkaSourceError::Config("the progress reader has no consumer group".into())
        })?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
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

/// Creates the progress topic (one partition, compacted) when it is missing,
/// and refuses one whose cleanup policy would delete progress records: a
/// sink that lost its position would publish everything again.
fn check_progress_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaSourceError::Config(format!("cannot start a runtime: {e}")))?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let policy = |runtime: &tokio::runtime::Runtime| -> Result<Option<String>> {
        let described = runtime
            .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options))
            .map_err(|source| client("describing the republish progress topic", source))?;
        match described.into_iter().next() {
            // A missing topic comes back as a resource without entries.
            Some(Ok(resource))
                if resource.specifier == OwnedResourceSpecifier::Topic(topic.into())
                    && !resource.entries.is_empty() =>
            {
                Ok(Some(
                    resource
                        .get("cleanup.policy")
                        .and_then(|e| e.value.clone())
                        .unwrap_or_default(),
                ))
            }
            Some(Err(RDKafkaErrorCode::UnknownTopicOrPartition)) | None => Ok(None),
            Some(Ok(_)) => Ok(None),
            Some(Err(code)) => Err(KafkaSourceError::Config(format!(
                "cannot check the cleanup.policy of the republish progress topic {topic}: {code} \
                 (the sink needs DescribeConfigs on it)"
            ))),
        }
    };
    let found = match policy(&runtime)? {
        Some(found) => found,
        None => {
            let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "compact");
            let created = runtime
                .block_on(admin.create_topics(&[new], &options))
                .map_err(|source| client("creating the republish progress topic", source))?;
            for result in created {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        return Err(KafkaSourceError::Config(format!(
                            "cannot create the republish progress topic {topic}: {code}"
                        )));
                    }
                }
            }
            tracing::info!(topic, "created the republish progress topic (compacted)");
            policy(&runtime)?.unwrap_or_else(|| "compact".into())
        }
    };
    if found != "compact" {
        return Err(KafkaSourceError::Config(format!(
            "the republish progress topic {topic} has cleanup.policy={found}: retention would \
             delete the sink's position, and a sink without one publishes every row again. \
             Set cleanup.policy=compact on it (kafka-configs --alter --entity-type topics \
             --entity-name {topic} --add-config cleanup.policy=compact)"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn a_position_reads_back_and_older_records_start_at_row_zero() {
        let position = Position {
            version: 42,
            row: 7,
        };
        assert_eq!(
            Position::parse(position.to_json().as_bytes()),
            Some(position)
        );
        assert_eq!(
            Position::parse(br#"{"nextVersion":3}"#),
            Some(Position { version: 3, row: 0 })
        );
        assert_eq!(Position::parse(b"not json"), None);
        assert_eq!(Position::parse(br#"{"nextRow":3}"#), None);
    }
}
