//! Partitions added to a topic while a group of the whole topic reads it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::contracts::Source;
use crate::error::Result;

/// How often the topic's partitions are listed.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// Looks for partitions added to the topic, between batches, every
/// `DISCOVERY_INTERVAL`; a new partition is read from its first offset (as
/// Spark does).
pub(crate) struct PartitionDiscovery {
    pipeline: String,
    last: Instant,
}

impl PartitionDiscovery {
    pub(crate) fn new(pipeline: String) -> PartitionDiscovery {
        PartitionDiscovery {
            pipeline,
            last: Instant::now(),
        }
    }

    pub(crate) fn add_new_partitions(
        &mut self,
        source: &dyn Source,
        positions: &mut BTreeMap<i32, i64>,
    ) -> Result<()> {
        if self.last.elapsed() < DISCOVERY_INTERVAL {
            return Ok(());
        }
        self.last = Instant::now();
        let added: Vec<i32> = source
            .partitions()?
            .into_iter()
            .filter(|p| !positions.contains_key(p))
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let starts: BTreeMap<i32, i64> = source
            .watermarks(&added)?
            .into_iter()
            .map(|(p, (low, _))| (p, low))
            .collect();
        positions.extend(&starts);
        source.add(&starts)?;
        tracing::info!(pipeline = %self.pipeline, partitions = ?added, "new partitions of the topic; reading them from their first offset");
        Ok(())
    }
}
