//! `tributary bench`: throughput measurements reported in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tributary_core::RawRecord;
use tributary_engine::{PipelineOptions, run_pipeline};

use crate::dev;
use crate::dev::generator::{BENCH_SCHEMA, Rng, bench_event, frame};

/// Upper bound of a framed benchmark record's size.
const BENCH_RECORD_BYTES: u64 = 110;

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
    /// Deduplicate distinct keys with RocksDB state on disk: micro-batches
    /// of Arrow rows through the dedup operator, each batch's state
    /// committed; reports rows/s on one thread and peak RSS.
    Dedup {
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 100_000)]
        batch_rows: usize,
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
    },
}

pub async fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Decode { rows } => decode(rows).await,
        Bench::Dedup { keys, batch_rows } => {
            tokio::task::spawn_blocking(move || crate::bench_state::dedup(keys, batch_rows)).await?
        }
        Bench::Windows {
            rows,
            batch_rows,
            cards,
        } => {
            tokio::task::spawn_blocking(move || {
                crate::bench_state::windows(rows, batch_rows, cards)
            })
            .await?
        }
        Bench::Ingest {
            rows,
            partitions,
            bootstrap_servers: Some(bootstrap_servers),
            broker_pid,
        } => {
            let topic = format!("tributary-bench-{}", chrono::Utc::now().timestamp_millis());
            let partitions = partitions.unwrap_or(8);
            crate::demo::ensure_topic(&bootstrap_servers, &topic, partitions).await?;
            let broker = Broker {
                bootstrap_servers,
                topic,
                pid: broker_pid,
                in_process: false,
            };
            ingest(rows, partitions, broker).await
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
            ingest(rows, partitions, broker).await
        }
    }
}

async fn registry_with_schema(
    subject: &str,
) -> anyhow::Result<(
    dev::registry::DevRegistry,
    Arc<tributary_avro::RegistryClient>,
    u32,
)> {
    let registry = dev::registry::start(([127, 0, 0, 1], 0).into(), None, None).await?;
    let client = Arc::new(tributary_avro::RegistryClient::new(
        tributary_avro::RegistryConfig {
            url: registry.url.clone(),
            auth: tributary_avro::RegistryAuth::None,
            timeout: Duration::from_secs(5),
            max_retries: 3,
            ..Default::default()
        },
    )?);
    let id = client.register(subject, BENCH_SCHEMA).await?;
    Ok((registry, client, id))
}

async fn decode(rows: u64) -> anyhow::Result<()> {
    let (_registry, client, id) = registry_with_schema("bench-value").await?;
    let mut rng = Rng::new(7);
    let mut body = Vec::new();
    let mut buffer = Vec::new();
    let mut bounds = Vec::with_capacity(rows as usize);
    for seq in 0..rows {
        bench_event(&mut rng, seq, &mut body);
        let start = buffer.len();
        buffer.extend_from_slice(&frame(id, &body));
        bounds.push((start, buffer.len()));
    }
    let bytes = buffer.len();
    let handle = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut decoder = tributary_avro::RecordDecoder::new(client, handle);
        // Warm the schema cache so the timing holds decoding only.
        let first = bounds[0];
        decoder.push(&record(&buffer[first.0..first.1], 0))?;
        decoder.finish()?;
        let started = Instant::now();
        for (i, (s, e)) in bounds.iter().enumerate() {
            decoder.push(&record(&buffer[*s..*e], i as i64))?;
        }
        let decoded = decoder.finish()?;
        let decode_time = started.elapsed();
        anyhow::ensure!(
            decoded.dead_letters.is_empty(),
            "unexpected dead letters: {:?}",
            decoded.dead_letters.first()
        );
        let decoded_rows: usize = decoded.batches.iter().map(|b| b.num_rows()).sum();
        anyhow::ensure!(
            decoded_rows as u64 == rows,
            "decoded {decoded_rows} of {rows} rows"
        );

        let started = Instant::now();
        let target = tributary_avro::delta_schema(&decoded.batches[0].schema())?;
        let converted = decoded
            .batches
            .iter()
            .map(|b| tributary_avro::to_delta_batch(b, &target))
            .collect::<Result<Vec<_>, _>>()?;
        let convert_time = started.elapsed();
        let started = Instant::now();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), target.clone(), Some(props))?;
        for b in &converted {
            writer.write(b)?;
        }
        let parquet = writer.into_inner()?;
        let encode_time = started.elapsed() + convert_time;
        let per_sec = |d: Duration| rows as f64 / d.as_secs_f64();
        Ok(format!(
            "bench decode: {rows} rows, {:.1} MB of Confluent-framed Avro (10 fields)\n  \
             decode to Arrow:              {:>10.0} rows/s  {:>7.1} MB/s\n  \
             Delta type conversion:        {:>10.0} rows/s\n  \
             Delta types + Parquet encode: {:>10.0} rows/s  ({:.1} MB of Parquet)\n  \
             decode + encode on one core:  {:>10.0} rows/s\n  \
             ratio decode : (decode+encode) = {:.2}",
            bytes as f64 / 1e6,
            per_sec(decode_time),
            bytes as f64 / 1e6 / decode_time.as_secs_f64(),
            per_sec(convert_time),
            per_sec(encode_time),
            parquet.len() as f64 / 1e6,
            per_sec(decode_time + encode_time),
            per_sec(decode_time) / per_sec(decode_time + encode_time),
        ))
    })
    .await??;
    println!("{report}");
    Ok(())
}

fn record(value: &[u8], offset: i64) -> RawRecord<'_> {
    RawRecord {
        partition: 0,
        offset,
        timestamp_ms: None,
        key: None,
        value: Some(value),
        headers: None,
    }
}

/// Where the backlog is.
struct Broker {
    bootstrap_servers: String,
    topic: String,
    /// A broker in another process, whose CPU is reported.
    pid: Option<u32>,
    /// The mock cluster, whose CPU counts as this process's.
    in_process: bool,
}

async fn ingest(rows: u64, partitions: i32, broker: Broker) -> anyhow::Result<()> {
    let Broker {
        bootstrap_servers: bootstrap,
        topic,
        pid: broker_pid,
        in_process,
    } = broker;
    let (registry, _client, id) = registry_with_schema(&format!("{topic}-value")).await?;
    let produce_started = Instant::now();
    let (boot, produce_topic) = (bootstrap.clone(), topic.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &boot)
            .set("linger.ms", "50")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        // A topic just created may not be in every broker's metadata yet.
        let deadline = Instant::now() + Duration::from_secs(60);
        while partitions_of(&producer, &produce_topic) < partitions {
            anyhow::ensure!(
                Instant::now() < deadline,
                "topic {produce_topic} did not get {partitions} partitions"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut rng = Rng::new(11);
        let mut body = Vec::new();
        for seq in 0..rows {
            bench_event(&mut rng, seq, &mut body);
            let payload = frame(id, &body);
            let mut record = BaseRecord::<(), _>::to(&produce_topic)
                .payload(&payload)
                .partition((seq % partitions as u64) as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => anyhow::bail!("producing the backlog: {e}"),
                }
            }
        }
        producer.flush(Duration::from_secs(120))?;
        // Delivery failures are not reported per record here: count what
        // the broker holds, so that a loss is not blamed on the drain.
        let mut held = 0;
        for p in 0..partitions {
            let (low, high) =
                producer
                    .client()
                    .fetch_watermarks(&produce_topic, p, Duration::from_secs(30))?;
            held += high - low;
        }
        anyhow::ensure!(
            held as u64 == rows,
            "the broker holds {held} of the {rows} records produced"
        );
        Ok(())
    })
    .await??;
    let produce_time = produce_started.elapsed();

    let dir = tempfile::tempdir()?;
    let spec_text = format!(
        "pipeline: bench
source:
  kafka: {{bootstrap_servers: '{bootstrap}', topic: {topic}}}
  schema_registry: {{url: '{}'}}
table: {{uri: 'file://{d}/lake/bench', target_file_size: 128MiB}}
trigger: {{available_now: true}}
checkpoint: {{location: 'file://{d}/checkpoint'}}
",
        registry.url,
        d = dir.path().display()
    );
    let spec = tributary_spec::parse_spec("bench.yaml", &spec_text)
        .map_err(|e| anyhow::anyhow!(e.report().join("\n")))?;
    let started = Instant::now();
    let cpu_before = process_cpu_seconds("self");
    let broker_before = broker_pid.and_then(|p| process_cpu_seconds(&p.to_string()));
    let summary = run_pipeline(spec, PipelineOptions::default())
        .await
        .context("ingest failed")?;
    let elapsed = started.elapsed();
    let cpu = process_cpu_seconds("self")
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let broker_cpu = broker_pid
        .and_then(|p| process_cpu_seconds(&p.to_string()))
        .zip(broker_before)
        .map(|(after, before)| after - before);
    let share = |c: f64| {
        format!(
            "{c:.2} core-seconds, {:.0} % of one core",
            100.0 * c / elapsed.as_secs_f64()
        )
    };
    let whose = if in_process {
        "the in-process mock broker included"
    } else {
        "Tributary alone"
    };
    anyhow::ensure!(
        summary.rows == rows && summary.dead_letters == 0,
        "lost records: {summary:?} for {rows} produced"
    );
    println!(
        "bench ingest: {rows} rows over {partitions} partitions (produced in {:.1}s, not timed)\n  \
         drained into Delta in {:.2}s: {:.0} rows/s end to end, {} batches, {} files, {:.1} MB of Parquet, zero loss\n  \
         CPU during the drain: {} ({whose}){}",
        produce_time.as_secs_f64(),
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        summary.batches,
        summary.files,
        summary.bytes as f64 / 1e6,
        cpu.map_or("unknown".to_string(), share),
        broker_cpu.map_or(String::new(), |c| format!(
            "\n  broker CPU during the drain: {}",
            share(c)
        )),
    );
    Ok(())
}

fn partitions_of(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str) -> i32 {
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()
        .and_then(|md| {
            md.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().filter(|p| p.leader() >= 0).count() as i32)
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process (`self` or a pid), from /proc (Linux).
fn process_cpu_seconds(process: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}
