use serde::{Deserialize, Serialize};

/// Offsets `[start, end)` of one Kafka partition read by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub partition: i32,
    /// First offset of the batch (inclusive).
    pub start: i64,
    /// One past the last offset of the batch (exclusive): where the next batch starts.
    pub end: i64,
}

/// The offset ranges of one batch, one entry per partition it read, sorted by
/// partition. Recorded in every Delta commit so recovery and `status` can tell
/// exactly which records a committed batch holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRanges {
    pub topic: String,
    pub ranges: Vec<PartitionRange>,
}

impl OffsetRanges {
    pub fn new(topic: impl Into<String>) -> Self {
        OffsetRanges {
            topic: topic.into(),
            ranges: Vec::new(),
        }
    }

    /// Extends the range of `partition` to cover `offset`.
    pub fn record(&mut self, partition: i32, offset: i64) {
        match self
            .ranges
            .binary_search_by_key(&partition, |r| r.partition)
        {
            Ok(i) => {
                let r = &mut self.ranges[i];
                r.start = r.start.min(offset);
                r.end = r.end.max(offset + 1);
            }
            Err(i) => self.ranges.insert(
                i,
                PartitionRange {
                    partition,
                    start: offset,
                    end: offset + 1,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_partitions_sorted_and_ranges_tight() {
        let mut o = OffsetRanges::new("t");
        for (p, off) in [(2, 10), (0, 5), (2, 11), (0, 4), (1, 0)] {
            o.record(p, off);
        }
        assert_eq!(
            o.ranges,
            vec![
                PartitionRange {
                    partition: 0,
                    start: 4,
                    end: 6
                },
                PartitionRange {
                    partition: 1,
                    start: 0,
                    end: 1
                },
                PartitionRange {
                    partition: 2,
                    start: 10,
                    end: 12
                },
            ]
        );
    }
}
