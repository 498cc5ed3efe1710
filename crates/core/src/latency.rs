//! Latency summaries: from each record's Kafka timestamp to the moment its
//! batch was committed to the table, or its row was republished.

use schemars::JsonSchema;
use serde::Serialize;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// How long records took from their timestamp (the producer's or the
/// broker's clock) to being committed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyProgress {
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
    /// Records at or under each of `LATENCY_BUCKETS` (cumulative), for the
    /// metrics' histogram.
    #[serde(skip)]
    #[schemars(skip)]
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    /// Records measured, and the sum of their latencies (seconds).
    #[serde(skip)]
    #[schemars(skip)]
    pub count: u64,
    #[serde(skip)]
    #[schemars(skip)]
    pub sum_seconds: f64,
}

impl LatencyProgress {
    /// The latencies of records with timestamps `sorted_times` (ms,
    /// ascending) committed at `commit_ms`. Percentiles by nearest rank.
    pub fn of(sorted_times: &[i64], commit_ms: i64) -> Option<LatencyProgress> {
        let n = sorted_times.len();
        let oldest = *sorted_times.first()?;
        // The k-th smallest latency is the k-th newest timestamp.
        let percentile = |p: f64| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            commit_ms - sorted_times[n - rank]
        };
        let mut buckets = [0u64; LATENCY_BUCKETS.len()];
        for (bucket, bound) in buckets.iter_mut().zip(LATENCY_BUCKETS) {
            let newer_than = commit_ms - (bound * 1000.0) as i64;
            *bucket = (n - sorted_times.partition_point(|t| *t < newer_than)) as u64;
        }
        let sum_ms: i128 = sorted_times.iter().map(|t| i128::from(commit_ms - t)).sum();
        Some(LatencyProgress {
            p50_ms: percentile(0.50),
            p95_ms: percentile(0.95),
            p99_ms: percentile(0.99),
            max_ms: commit_ms - oldest,
            buckets,
            count: n as u64,
            sum_seconds: sum_ms as f64 / 1000.0,
        })
    }

    /// The summary of latencies (ms) measured against several commits.
    pub fn of_latencies(latencies_ms: &[i64]) -> Option<LatencyProgress> {
        // A latency l is a timestamp of -l committed at 0.
        let mut times: Vec<i64> = latencies_ms.iter().map(|l| -l).collect();
        times.sort_unstable();
        Self::of(&times, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::LatencyProgress;

    #[test]
    fn latencies_are_nearest_rank_percentiles_of_commit_minus_timestamp() {
        // 100 records stamped 1..=100 ms, committed at 1,000: latencies 900..=999.
        let times: Vec<i64> = (1..=100).collect();
        let l = LatencyProgress::of(&times, 1_000).unwrap();
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (949, 994, 998, 999)
        );
        assert_eq!(l.count, 100);
        assert!((l.sum_seconds - (900..=999).sum::<i64>() as f64 / 1000.0).abs() < 1e-9);
        // Cumulative buckets: none within 0.1 s .. 0.5 s, all within 1 s.
        assert_eq!(l.buckets[..4], [0, 0, 0, 100]);
        let one = LatencyProgress::of(&[0, 4_900], 5_000).unwrap();
        assert_eq!(
            (one.p50_ms, one.p99_ms, one.buckets[0], one.buckets[6]),
            (100, 5_000, 1, 2)
        );
        assert!(LatencyProgress::of(&[], 5).is_none());
    }

    #[test]
    fn latencies_from_several_commits_summarise_alike() {
        // The same 100 latencies, unordered, as two commits would give them.
        let latencies: Vec<i64> = (901..=999)
            .rev()
            .step_by(2)
            .chain((900..=998).step_by(2))
            .collect();
        let l = LatencyProgress::of_latencies(&latencies).unwrap();
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count),
            (949, 994, 998, 999, 100)
        );
        assert!((l.sum_seconds - (900..=999).sum::<i64>() as f64 / 1000.0).abs() < 1e-9);
        assert_eq!(l.buckets[..4], [0, 0, 0, 100]);
        assert!(LatencyProgress::of_latencies(&[]).is_none());
    }
}
