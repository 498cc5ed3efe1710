//! Membership in the Kafka consumer group, for `state_scope: partition`: the
//! group decides which instance owns which partition. The member subscribes
//! to the topic only to take part in the assignment; its partitions stay
//! paused (each partition's group reads with its own consumer), and offsets
//! are committed through it, since only a member may commit for a live group.

use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::error::{KafkaSourceError, Result};
use crate::source::callbacks;
use crate::source::reader::ReaderConfig;

/// A change of the partitions this instance owns.
pub enum Membership {
    Assigned(Vec<i32>),
    /// The partitions are taken away; send on the channel once their groups
    /// have stopped (the batch in flight committed).
    Revoked(Vec<i32>, Sender<()>),
}

/// How long a revocation waits for the groups to stop before giving way.
const REVOKE_WAIT: Duration = Duration::from_secs(60);

/// `REVOKE_WAIT`, or `TRIBUTARY_REVOKE_WAIT_MS` for tests that need a
/// rebalance to outlast it (docs/operations.md, fault injection).
fn revoke_wait() -> Duration {
    std::env::var("TRIBUTARY_REVOKE_WAIT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(REVOKE_WAIT, Duration::from_millis)
}

pub struct MemberContext {
    topic: String,
    events: tokio::sync::mpsc::UnboundedSender<Membership>,
}

impl MemberContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        let mut parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        parts.sort_unstable();
        parts
    }
}

impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        callbacks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        callbacks::error(error, reason);
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = self.partitions(tpl);
            if parts.is_empty() {
                return;
            }
            let (ack, done): (Sender<()>, Receiver<()>) = std::sync::mpsc::channel();
            if self
                .events
                .send(Membership::Revoked(parts.clone(), ack))
                .is_ok()
                && done.recv_timeout(revoke_wait()).is_err()
            {
                tracing::warn!(partitions = ?parts, "groups did not stop in time; giving the partitions up anyway (the new owner re-syncs from the table)");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // This consumer never reads records: the groups have their own.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "cannot pause the member's partitions");
            }
            let parts = self.partitions(tpl);
            if !parts.is_empty() {
                let _ = self.events.send(Membership::Assigned(parts));
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        callbacks::commit_result(result);
    }
}

pub struct GroupMember {
    consumer: BaseConsumer<MemberContext>,
    topic: String,
}

impl GroupMember {
    /// Joins the consumer group; assignments arrive on `events` while `poll` is called.
    pub fn join(
        config: &ReaderConfig,
        events: tokio::sync::mpsc::UnboundedSender<Membership>,
    ) -> Result<GroupMember> {
        let mut cc = ClientConfig::new();
        for (k, v) in &config.properties {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let context = MemberContext {
            topic: config.topic.clone(),
            events,
        };
        let consumer: BaseConsumer<MemberContext> = cc
            .create_with_context(context)
            .map_err(|e| KafkaSourceError::Config(e.to_string()))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|source| KafkaSourceError::Client {
                operation: "subscribe",
                source,
            })?;
        Ok(GroupMember {
            consumer,
            topic: config.topic.clone(),
        })
    }

    /// Serves the group protocol (heartbeats, rebalances). Records that slip
    /// through before a partition is paused are ignored: the groups read them.
    pub fn poll(&self, timeout: Duration) {
        if let Some(Err(e)) = self.consumer.poll(timeout)
            && e.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::warn!(error = %e, "consumer group member error");
        }
    }

    /// Commits `(partition, next offset)` pairs for the group, asynchronously.
    pub fn commit(&self, next_offsets: &[(i32, i64)]) -> Result<()> {
        let tpl = callbacks::offset_list(&self.topic, next_offsets)?;
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|source| KafkaSourceError::Client {
                operation: "offset commit",
                source,
            })
    }

    /// Leaves the group: the partitions are revoked (through the callback)
    /// and reassigned to the other members.
    pub fn leave(&self) {
        self.consumer.unsubscribe();
    }
}
