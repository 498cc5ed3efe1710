//! librdkafka's mock cluster as the development broker, topic creation on
//! any broker, and the demos' patient send.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::ToBytes;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use crate::{DevError, Result};

pub type DevKafka = MockCluster<'static, DefaultProducerContext>;

/// Starts a mock cluster with `topics` (name, partitions).
pub fn start(brokers: i32, topics: &[(&str, i32)]) -> Result<DevKafka> {
    let cluster = MockCluster::new(brokers)?;
    for (name, partitions) in topics {
        cluster.create_topic(name, *partitions, 1)?;
    }
    Ok(cluster)
}

/// Creates the topic unless it exists, so a stream is spread over
/// `partitions` partitions rather than the broker's auto-create default.
pub async fn ensure_topic(bootstrap_servers: &str, name: &str, partitions: i32) -> Result<()> {
    let broker = |source| DevError::Broker {
        bootstrap_servers: bootstrap_servers.to_string(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .map_err(broker)?;
    // All topics: a metadata request naming a missing topic makes a broker
    // with auto-creation on create it, with its default partition count.
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(broker)?;
    if metadata
        .topics()
        .iter()
        .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
    {
        return Ok(());
    }
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(broker)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(DevError::CreateTopic {
                    topic,
                    bootstrap_servers: bootstrap_servers.to_string(),
                    code,
                });
            }
        }
    }
    Ok(())
}

/// Sends `record`, retrying every 5 ms while the producer refuses it (its
/// queue is full).
pub fn send_retrying<K: ToBytes + ?Sized>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, K, Vec<u8>>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
