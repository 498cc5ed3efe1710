//! `tributary bench`: the command line of the benchmarks in
//! `tributary-bench` (docs/benchmarks.md).

use clap::Subcommand;
use tributary_bench::{BENCH_RECORD_BYTES, Broker, Stream};
use tributary_devstack as dev;
use tributary_spec::ByteSize;

#[derive(Subcommand)]
pub enum Bench {
    /// Decode Confluent-framed 10-field Avro records into Arrow on one thread,
    /// then convert to Delta types and encode Parquet, timing each.
    Decode {
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
    },
    /// Drain a backlog from Kafka into a Delta table with `available_now`,
    /// end to end, and check that no record is lost. The broker is the
    /// in-process mock cluster, or a real one given by --bootstrap-servers.
    Ingest {
        #[arg(long, default_value_t = 5_000_000)]
        rows: u64,
        /// Default: 8 on a real broker; on the mock cluster, enough
        /// partitions that none holds more than 4 MiB, since the mock broker
        /// deletes a partition's oldest records beyond 5 MiB.
        #[arg(long)]
        partitions: Option<i32>,
        /// A Kafka cluster running as other processes: the backlog goes to a
        /// new topic `tributary-bench-<time>` on it.
        #[arg(long)]
        bootstrap_servers: Option<String>,
        /// Process id of the broker, whose CPU during the drain is then
        /// reported apart from Tributary's.
        #[arg(long, requires = "bootstrap_servers")]
        broker_pid: Option<u32>,
    },
    /// Produce the benchmark record at a steady rate into an existing
    /// topic, for measuring latency under load (tests/bench/latency.py);
    /// its schema is registered as `<topic>-value` in the given registry.
    Produce {
        #[arg(long)]
        bootstrap_servers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        registry_url: String,
        /// Records a second.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// For how long.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Deduplicate distinct keys with RocksDB state on disk: micro-batches
    /// of Arrow rows through the dedup operator, each batch's state
    /// committed; reports rows/s on one thread and peak RSS.
    Dedup {
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 100_000)]
        batch_rows: usize,
        /// The state's memory budget, as `tributary run --state-memory`.
        #[arg(long, default_value = "512MiB")]
        state_memory: ByteSize,
    },
    /// The fraud-scoring example (table-specs/fraud/fraud-scoring.yaml):
    /// enrich, dedup, 10-minute rolling features per card, the score and
    /// the commit. Without --rate: a backlog of --transactions drained
    /// (transactions/s). With --rate: a steady stream for --seconds at the
    /// example's 1 s trigger (event -> commit latency).
    Fraud {
        #[arg(long, default_value_t = 2_000_000)]
        transactions: u64,
        /// Transactions a second, for the latency measure.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Default: 8 on a real broker; on the mock cluster, enough that
        /// none holds more than 4 MiB.
        #[arg(long)]
        partitions: Option<i32>,
        /// A Kafka cluster running as other processes: the transactions go
        /// to a new topic `tributary-fraud-<time>` on it.
        #[arg(long)]
        bootstrap_servers: Option<String>,
    },
    /// Sliding-window aggregation (10-minute windows every 2 minutes, per
    /// card: count, sum, distinct merchants) with RocksDB state on disk.
    Windows {
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 100_000)]
        batch_rows: usize,
        #[arg(long, default_value_t = 10_000)]
        cards: u64,
        /// The state's memory budget, as `tributary run --state-memory`.
        #[arg(long, default_value = "512MiB")]
        state_memory: ByteSize,
    },
}

pub async fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Decode { rows } => tributary_bench::decode(rows).await?,
        Bench::Produce {
            bootstrap_servers,
            topic,
            registry_url,
            rate,
            seconds,
        } => {
            tributary_bench::produce(Stream {
                bootstrap_servers,
                topic,
                registry_url,
                rate,
                duration: std::time::Duration::from_secs(seconds),
            })
            .await?
        }
        Bench::Dedup {
            keys,
            batch_rows,
            state_memory,
        } => {
            let memory = usize::try_from(state_memory.0)?;
            tokio::task::spawn_blocking(move || tributary_bench::dedup(keys, batch_rows, memory))
                .await??
        }
        Bench::Windows {
            rows,
            batch_rows,
            cards,
            state_memory,
        } => {
            let memory = usize::try_from(state_memory.0)?;
            tokio::task::spawn_blocking(move || {
                tributary_bench::windows(rows, batch_rows, cards, memory)
            })
            .await??
        }
        Bench::Fraud {
            transactions,
            rate,
            seconds,
            partitions,
            bootstrap_servers,
        } => {
            use tributary_bench::fraud::{FraudLoad, TRANSACTION_BYTES, fraud};
            let load = match rate {
                Some(rate) => FraudLoad::Steady {
                    rate,
                    duration: std::time::Duration::from_secs(seconds),
                },
                None => FraudLoad::Backlog(transactions),
            };
            let total = rate.map_or(transactions, |r| r * seconds);
            match bootstrap_servers {
                Some(bootstrap) => {
                    let topic =
                        format!("tributary-fraud-{}", chrono::Utc::now().timestamp_millis());
                    let partitions = partitions.unwrap_or(8);
                    dev::kafka::ensure_topic(&bootstrap, &topic, partitions).await?;
                    fraud(bootstrap, topic, partitions, load).await?
                }
                None => {
                    let partitions = partitions.unwrap_or_else(|| {
                        (total * TRANSACTION_BYTES).div_ceil(4 << 20).max(1) as i32
                    });
                    let kafka = dev::kafka::start(1, &[("transactions", partitions)])?;
                    fraud(
                        kafka.bootstrap_servers(),
                        "transactions".into(),
                        partitions,
                        load,
                    )
                    .await?
                }
            }
        }
        Bench::Ingest {
            rows,
            partitions,
            bootstrap_servers: Some(bootstrap_servers),
            broker_pid,
        } => {
            let topic = format!("tributary-bench-{}", chrono::Utc::now().timestamp_millis());
            let partitions = partitions.unwrap_or(8);
            dev::kafka::ensure_topic(&bootstrap_servers, &topic, partitions).await?;
            let broker = Broker {
                bootstrap_servers,
                topic,
                pid: broker_pid,
                in_process: false,
            };
            tributary_bench::ingest(rows, partitions, broker).await?
        }
        Bench::Ingest {
            rows, partitions, ..
        } => {
            let partitions = partitions
                .unwrap_or_else(|| (rows * BENCH_RECORD_BYTES).div_ceil(4 << 20).max(1) as i32);
            let topic = "bench";
            let kafka = dev::kafka::start(1, &[(topic, partitions)])?;
            let broker = Broker {
                bootstrap_servers: kafka.bootstrap_servers(),
                topic: topic.into(),
                pid: None,
                in_process: true,
            };
            tributary_bench::ingest(rows, partitions, broker).await?
        }
    }
    Ok(())
}
