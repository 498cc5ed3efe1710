//! librdkafka's mock cluster as the development broker.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub type DevKafka = MockCluster<'static, DefaultProducerContext>;

/// Starts a mock cluster with `topics` (name, partitions).
pub fn start(brokers: i32, topics: &[(&str, i32)]) -> anyhow::Result<DevKafka> {
    let cluster = MockCluster::new(brokers)?;
    for (name, partitions) in topics {
        cluster.create_topic(name, *partitions, 1)?;
    }
    Ok(cluster)
}
