//! The throughput benchmarks of `tributary bench` (docs/benchmarks.md):
//! decoding and encoding alone, a drain from Kafka into Delta end to end,
//! the dedup and sliding-window operators over RocksDB state, and the
//! fraud-scoring example.

pub mod fraud;
mod produce;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tributary_core::RawRecord;
use tributary_devstack as dev;
use tributary_devstack::generator::{BENCH_SCHEMA, Rng, bench_event, frame};
use tributary_engine::{CheckpointStore, Components, PipelineOptions, StateBackend, run_pipeline};

pub use produce::{Stream, produce};
pub use state::{dedup, windows};

/// Upper bound of a framed benchmark record's size.
pub const BENCH_RECORD_BYTES: u64 = 110;

/// Why a benchmark could not run, or found a wrong result.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    DevStack(#[from] tributary_devstack::DevError),
    #[error(transparent)]
    Avro(#[from] tributary_avro::AvroError),
    #[error("ingest failed: {0}")]
    Engine(#[from] tributary_engine::EngineError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("Parquet: {0}")]
    Parquet(#[from] deltalake::parquet::errors::ParquetError),
    #[error(transparent)]
    State(#[from] tributary_core::StateError),
    #[error(transparent)]
    Stream(#[from] tributary_stream::StreamError),
    #[error("Arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("Delta: {0}")]
    Delta(#[from] tributary_delta::DeltaSinkError),
    #[error("a benchmark thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The benchmark ran but its result is wrong (lost records, say).
    #[error("{0}")]
    Check(String),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// How this process runs RocksDB: compiled into the binary, as release
/// builds do, or the prebuilt shared library that dev builds link
/// (`scripts/lib.sh`), which measured 8-15 % slower on the state
/// benchmarks (docs/benchmarks.md). Printed with their figures.
pub(crate) fn rocksdb_build() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let shared = maps.lines().find_map(|line| {
        line.split_whitespace()
            .nth(5)
            .filter(|path| path.contains("librocksdb"))
    });
    match shared {
        Some(path) => format!("RocksDB: the shared library {path} (a dev build's)"),
        None => "RocksDB: compiled into the binary".into(),
    }
}

/// Fails the benchmark with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::BenchError::Check(format!($($message)+)));
        }
    };
}
pub(crate) use ensure;

async fn registry_with_schema(
    subject: &str,
) -> Result<(
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

pub async fn decode(rows: u64) -> Result<()> {
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
    let report = tokio::task::spawn_blocking(move || -> Result<String> {
        // The clean records and the spoiled copies are timed in turns, slice
        // by slice, and each slice's best of `ROUNDS` is kept: the machine is
        // shared, its bursts of load last seconds, and the ratios are what
        // the figures are for. Each input has its own decoder, as each
        // would be its own stream.
        let inputs: Vec<Input> = [0, 1, 10]
            .into_iter()
            .map(|percent| spoil(&buffer, &bounds, percent))
            .collect();
        let mut decoders = inputs
            .iter()
            .map(|_| {
                let mut decoder = tributary_avro::RecordDecoder::new(client.clone(), handle.clone());
                // Warm the schema cache so the timing holds decoding only.
                let first = bounds[0];
                decoder.push(&record(&buffer[first.0..first.1], 0))?;
                decoder.finish()?;
                Ok(decoder)
            })
            .collect::<Result<Vec<_>>>()?;
        let slices: Vec<(usize, usize)> = (0..bounds.len())
            .step_by(SLICE)
            .map(|start| (start, (start + SLICE).min(bounds.len())))
            .collect();
        let mut best = vec![vec![Duration::MAX; slices.len()]; inputs.len()];
        let mut decoded = tributary_avro::DecodedChunk::default();
        for round in 0..ROUNDS {
            for (slice, &range) in slices.iter().enumerate() {
                for (k, input) in inputs.iter().enumerate() {
                    let (time, chunk) = decode_input(&mut decoders[k], input, range)?;
                    best[k][slice] = best[k][slice].min(time);
                    if round == 0 && k == 0 {
                        decoded.batches.extend(chunk.batches);
                    }
                }
            }
        }
        let best: Vec<Duration> = best.iter().map(|slices| slices.iter().sum()).collect();
        // What the check of each body before decoding costs, alone.
        let check = tributary_avro::BodyCheck::compile(BENCH_SCHEMA)
            .ok_or_else(|| BenchError::Check("the bench schema cannot be checked".into()))?;
        let mut check_time = Duration::MAX;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for (s, e) in &bounds {
                ensure!(check.check(&buffer[s + 5..*e]).is_ok(), "a clean body failed its check");
            }
            check_time = check_time.min(started.elapsed());
        }
        let decode_time = best[0];
        let malformed: Vec<(usize, Duration)> = inputs[1..]
            .iter()
            .map(|i| i.percent)
            .zip(best[1..].iter().copied())
            .collect();

        let started = Instant::now();
        let target = tributary_avro::delta_schema(&decoded.batches[0].schema())?;
        let converted = decoded
            .batches
            .iter()
            .map(|b| tributary_avro::to_delta_batch(b, &target))
            .collect::<Result<Vec<_>, _>>()?;
        let convert_time = started.elapsed();
        let (transform_time, kept) = time_transform(&converted)?;
        ensure!(
            kept > 0 && kept < rows as usize,
            "the bench transform kept {kept} of {rows} rows; its where drops the tablets"
        );
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
             body check alone:             {:>10.0} rows/s\n  \
             Delta type conversion:        {:>10.0} rows/s\n  \
             Delta types + Parquet encode: {:>10.0} rows/s  ({:.1} MB of Parquet)\n  \
             decode + encode on one core:  {:>10.0} rows/s\n  \
             ratio decode : (decode+encode) = {:.2}\n  \
             transform (4 columns, where): {:>10.0} rows/s  ({:.0} % kept; {:.0} % of decode + encode time)",
            bytes as f64 / 1e6,
            per_sec(decode_time),
            bytes as f64 / 1e6 / decode_time.as_secs_f64(),
            per_sec(check_time),
            per_sec(convert_time),
            per_sec(encode_time),
            parquet.len() as f64 / 1e6,
            per_sec(decode_time + encode_time),
            per_sec(decode_time) / per_sec(decode_time + encode_time),
            per_sec(transform_time),
            100.0 * kept as f64 / rows as f64,
            100.0 * transform_time.as_secs_f64() / (decode_time + encode_time).as_secs_f64(),
        ) + &malformed
            .iter()
            .map(|(percent, time)| {
                format!(
                    "\n  decode with {percent:>2} % malformed:  {:>10.0} rows/s  ({:.0} % of clean)",
                    per_sec(*time),
                    100.0 * decode_time.as_secs_f64() / time.as_secs_f64()
                )
            })
            .collect::<String>())
    })
    .await??;
    println!("{report}");
    Ok(())
}

/// A scoring-like transform over the benchmark record, as a spec writes it.
const BENCH_TRANSFORM: &str = r#"
columns:
  amount_eur: "round(amount * 0.92, 2)"
  is_checkout: "url = '/checkout' OR url LIKE '/cart%'"
  day: "date(ts)"
  risk: "CASE WHEN referrer IS NULL THEN 1.5 ELSE 0.5 END * coalesce(amount, 0) / 100"
where: "duration_ms >= 0 AND device <> 'tablet'"
"#;

/// The best of `ROUNDS` passes of `BENCH_TRANSFORM` over the rows, and
/// how many rows it kept.
fn time_transform(rows: &[deltalake::arrow::array::RecordBatch]) -> Result<(Duration, usize)> {
    let spec: tributary_spec::TransformSpec = serde_yaml::from_str(BENCH_TRANSFORM)
        .map_err(|e| BenchError::Check(format!("the bench transform: {e}")))?;
    let transform = tributary_transform::Transform::new(&spec)
        .map_err(|e| BenchError::Check(format!("the bench transform: {e}")))?;
    let mut best = Duration::MAX;
    let mut kept = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        kept = 0;
        for batch in rows {
            let out = transform
                .apply(batch)
                .map_err(|e| BenchError::Check(format!("the bench transform: {e}")))?;
            kept += out.rows.num_rows();
        }
        best = best.min(started.elapsed());
    }
    Ok((best, kept))
}

/// Timed passes of `bench decode` over each input.
const ROUNDS: usize = 5;

/// Records per timed slice of `bench decode`'s inputs.
const SLICE: usize = 50_000;

/// The benchmark's records with every `100 / percent`th one spoiled.
struct Input {
    percent: usize,
    /// Every `every`th record (offset `every - 1`, `2 * every - 1`, ...) is spoiled.
    every: usize,
    buffer: Vec<u8>,
    bounds: Vec<(usize, usize)>,
}

/// Copies the records, spoiling every `100 / percent`th one in turn: cut
/// short, garbage, or followed by stray bytes.
fn spoil(buffer: &[u8], bounds: &[(usize, usize)], percent: usize) -> Input {
    let every = 100_usize.checked_div(percent).unwrap_or(usize::MAX);
    let mut spoiled = Vec::with_capacity(buffer.len());
    let mut values = Vec::with_capacity(bounds.len());
    for (i, &(s, e)) in bounds.iter().enumerate() {
        let start = spoiled.len();
        let value = &buffer[s..e];
        match (i % every == every - 1, (i / every) % 3) {
            (false, _) => spoiled.extend_from_slice(value),
            (true, 0) => spoiled.extend_from_slice(&value[..value.len() - 3]),
            (true, 1) => {
                spoiled.extend_from_slice(&value[..5]);
                spoiled.extend(std::iter::repeat_n(0xff, value.len() - 5));
            }
            (true, _) => {
                spoiled.extend_from_slice(value);
                spoiled.extend_from_slice(&[2, 4]);
            }
        }
        values.push((start, spoiled.len()));
    }
    Input {
        percent,
        every,
        buffer: spoiled,
        bounds: values,
    }
}

/// Decodes the records `from..to` of one input, timed, and checks that
/// each spoiled record, and only those, became a dead letter.
fn decode_input(
    decoder: &mut tributary_avro::RecordDecoder,
    input: &Input,
    (from, to): (usize, usize),
) -> Result<(Duration, tributary_avro::DecodedChunk)> {
    let started = Instant::now();
    for (i, (s, e)) in input.bounds.iter().enumerate().take(to).skip(from) {
        decoder.push(&record(&input.buffer[*s..*e], i as i64))?;
    }
    let decoded = decoder.finish()?;
    let time = started.elapsed();
    let (percent, every) = (input.percent, input.every);
    let total = to - from;
    // Spoiled: offsets every - 1, 2 * every - 1, ...
    let bad = to / every - from / every;
    let rows: usize = decoded.batches.iter().map(|b| b.num_rows()).sum();
    ensure!(
        decoded.dead_letters.len() == bad && rows == total - bad,
        "{percent} % malformed: {} dead letters and {rows} rows, expected {bad} and {}",
        decoded.dead_letters.len(),
        total - bad
    );
    ensure!(
        decoded
            .dead_letters
            .iter()
            .all(|d| d.offset as usize % every == every - 1),
        "{percent} % malformed: a good record became a dead letter: {:?}",
        decoded.dead_letters.first().map(|d| &d.reason)
    );
    Ok((time, decoded))
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
pub struct Broker {
    pub bootstrap_servers: String,
    pub topic: String,
    /// A broker in another process, whose CPU is reported.
    pub pid: Option<u32>,
    /// The mock cluster, whose CPU counts as this process's.
    pub in_process: bool,
}

pub async fn ingest(rows: u64, partitions: i32, broker: Broker) -> Result<()> {
    let Broker {
        bootstrap_servers: bootstrap,
        topic,
        pid: broker_pid,
        in_process,
    } = broker;
    let (registry, client, id) = registry_with_schema(&format!("{topic}-value")).await?;
    let produce_started = Instant::now();
    let (boot, produce_topic) = (bootstrap.clone(), topic.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &boot)
            .set("linger.ms", "50")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        // A topic just created may not be in every broker's metadata yet.
        let deadline = Instant::now() + Duration::from_secs(60);
        while partitions_of(&producer, &produce_topic) < partitions {
            ensure!(
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
            let record = BaseRecord::<(), _>::to(&produce_topic)
                .payload(&payload)
                .partition((seq % partitions as u64) as i32);
            produce::send_waiting(&producer, record)?;
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
        ensure!(
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
        .map_err(|e| BenchError::Check(e.report().join("\n")))?;
    // The peak resident memory is the drain's, not the producer's before it
    // (writing 5 to clear_refs resets the process's VmHWM).
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let cpu_before = process_cpu_seconds("self");
    let broker_before = broker_pid.and_then(|p| process_cpu_seconds(&p.to_string()));
    let components = Components {
        registry: client,
        checkpoint: CheckpointStore::local(&spec.checkpoint.location),
        state: StateBackend::RocksDb(Default::default()),
    };
    let summary = run_pipeline(spec, PipelineOptions::default(), components).await?;
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
    ensure!(
        summary.rows == rows && summary.dead_letters == 0,
        "lost records: {summary:?} for {rows} produced"
    );
    println!(
        "bench ingest: {rows} rows over {partitions} partitions (produced in {:.1}s, not timed)\n  \
         drained into Delta in {:.2}s: {:.0} rows/s end to end, {} batches, {} files, {:.1} MB of Parquet, zero loss\n  \
         CPU during the drain: {} ({whose}){}\n  \
         peak RSS during the drain: {}",
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
        if peak_reset {
            format!("{:.0} MiB", state::peak_rss_mib())
        } else {
            "unknown (/proc/self/clear_refs not writable)".to_string()
        },
    );
    Ok(())
}

pub(crate) fn partitions_of(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
) -> i32 {
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
