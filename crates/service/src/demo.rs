//! `tributary demo`: the whole path on one machine with nothing installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tributary_devstack as dev;
use tributary_devstack::generator::{CLICK_SCHEMA, ClickStream, frame};
use tributary_devstack::kafka::ensure_topic;
use tributary_engine::{BatchProgress, PipelineOptions, run_pipeline};

use crate::readback;

const TOPIC: &str = "clicks";

/// Where `demo --produce-only` sends its click stream.
pub struct ProduceTarget {
    pub bootstrap_servers: String,
    pub schema_registry_url: String,
    pub topic: String,
    pub partitions: i32,
}

/// Produces the demo's click stream into an existing cluster and registry
/// (a local stack, a load test) until `duration` ends or `stop` is set, then
/// prints one JSON line: what was produced.
pub async fn produce_only(
    target: ProduceTarget,
    duration: Duration,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let client = tributary_avro::RegistryClient::new(tributary_avro::RegistryConfig {
        url: target.schema_registry_url.clone(),
        auth: tributary_avro::RegistryAuth::None,
        timeout: Duration::from_secs(10),
        max_retries: 5,
        ..Default::default()
    })?;
    let subject = format!("{}-value", target.topic);
    let schema_id = client
        .register(&subject, CLICK_SCHEMA)
        .await
        .with_context(|| format!("registering {subject} at {}", target.schema_registry_url))?;
    ensure_topic(&target.bootstrap_servers, &target.topic, target.partitions).await?;
    eprintln!(
        "producing about {rate} click events/s to {} on {} (schema id {schema_id}) for {duration:?}",
        target.topic, target.bootstrap_servers
    );
    let produced = produce(
        &target.bootstrap_servers,
        &target.topic,
        schema_id,
        duration,
        rate,
        stop,
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({
            "topic": target.topic,
            "schemaId": schema_id,
            "produced": produced.total,
            "duplicates": produced.duplicates,
            "late": produced.late,
            "malformed": produced.malformed,
        })
    );
    Ok(())
}

pub async fn run(
    dir: PathBuf,
    duration: Duration,
    rate: u64,
    scenario: crate::Scenario,
) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    if scenario == crate::Scenario::Fraud {
        return crate::fraud_demo::run(&dir, duration, rate).await;
    }

    let kafka = dev::kafka::start(1, &[(TOPIC, 4)])?;
    let registry = dev::registry::start(([127, 0, 0, 1], 0).into(), None, None).await?;
    let bootstrap = kafka.bootstrap_servers();
    println!("Kafka (in-process mock cluster)   {bootstrap}   topic {TOPIC}, 4 partitions");
    println!("Schema registry (development)     {}", registry.url);

    let client = tributary_avro::RegistryClient::new(tributary_avro::RegistryConfig {
        url: registry.url.clone(),
        auth: tributary_avro::RegistryAuth::None,
        timeout: Duration::from_secs(5),
        max_retries: 3,
        ..Default::default()
    })?;
    let schema_id = client
        .register(&format!("{TOPIC}-value"), CLICK_SCHEMA)
        .await?;

    let spec_path = dir.join("clicks.yaml");
    std::fs::write(&spec_path, demo_spec(&dir, &bootstrap, &registry.url))?;
    println!("Table spec                        {}", spec_path.display());
    let spec = tributary_spec::parse_spec_file(&spec_path)
        .map_err(|e| anyhow::anyhow!(e.report().join("\n")))?;
    let table_uri = spec.table.uri.clone();
    let dead_uri = spec.dead_letter_uri();

    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = consumed.clone();
    let options = PipelineOptions {
        stop: stop.clone(),
        progress_json: Some(dir.join("progress.jsonl")),
        progress_json_max_bytes: tributary_engine::DEFAULT_PROGRESS_JSON_MAX_BYTES,
        on_progress: Some(Arc::new(move |p: &BatchProgress| {
            seen.fetch_add(p.num_input_rows, Ordering::Relaxed);
            println!(
                "  batch {:>3}  {:>6} rows  {:>3} dead letters  table v{:<4} {:>8.0} rows/s",
                p.batch_id,
                p.num_output_rows,
                p.num_dead_letters,
                p.sink
                    .table_version
                    .map_or("-".to_string(), |v| v.to_string()),
                p.processed_rows_per_second
            );
        })),
        on_failure: None,
        on_group: None,
    };
    let components =
        crate::components::components(&spec, &tributary_state::RocksOptions::default())?;
    let pipeline = tokio::spawn(run_pipeline(spec, options, components));

    println!(
        "Producing about {rate} click events/s for {duration:?} (out of order, late, duplicated, and a few malformed)..."
    );
    let produced = produce(
        &bootstrap,
        TOPIC,
        schema_id,
        duration,
        rate,
        Arc::new(AtomicBool::new(false)),
    )
    .await?;
    println!(
        "Produced {} records: {} duplicates, {} late, {} malformed",
        produced.total, produced.duplicates, produced.late, produced.malformed
    );

    // Let the pipeline catch up, then stop it after its batch in flight.
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumed.load(Ordering::Relaxed) < produced.total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let summary = pipeline.await.context("pipeline task panicked")??;

    let table = readback::summarize(&table_uri, "url", "event_id").await?;
    println!();
    println!("Summary");
    println!("  records produced      {}", produced.total);
    println!(
        "  rows in the table     {} ({} distinct event ids: duplicates are kept until dedup is configured)",
        table.rows, table.distinct_values
    );
    println!(
        "  dead letters          {} (in {dead_uri})",
        summary.dead_letters
    );
    println!(
        "  commits               {} batches, table version {}",
        summary.batches, table.version
    );
    println!("  data files            {}", table.files);
    println!();
    println!("Clicks per URL, read back from the Delta table:");
    for (url, n) in &table.top {
        println!("  {n:>8}  {url}");
    }
    println!();
    println!("Query it with any Delta reader, e.g. DuckDB:");
    println!(
        "  SELECT url, count(*) FROM delta_scan('{}') GROUP BY url ORDER BY 2 DESC;",
        local_path(&table_uri).display()
    );
    if table.rows + summary.dead_letters != produced.total {
        anyhow::bail!(
            "the table holds {} rows and {} dead letters for {} records produced",
            table.rows,
            summary.dead_letters,
            produced.total
        );
    }
    drop(registry);
    drop(kafka);
    Ok(())
}

fn local_path(uri: &str) -> &Path {
    Path::new(uri.strip_prefix("file://").unwrap_or(uri))
}

fn demo_spec(dir: &Path, bootstrap: &str, registry: &str) -> String {
    format!(
        "# Written by `tributary demo`; the same spec runs against a real cluster with other addresses.
pipeline: clicks
source:
  kafka:
    bootstrap_servers: {bootstrap}
    topic: {TOPIC}
    starting_offsets: earliest
  schema_registry:
    url: {registry}
table:
  uri: file://{dir}/lake/clicks
  partition_by: [date(ts)]
  target_file_size: 64MiB
trigger:
  interval: 2s
checkpoint:
  location: file://{dir}/checkpoints/clicks
",
        dir = dir.display()
    )
}

struct Produced {
    total: u64,
    duplicates: u64,
    late: u64,
    malformed: u64,
}

async fn produce(
    bootstrap: &str,
    topic: &str,
    schema_id: u32,
    duration: Duration,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Produced> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .create()?;
        let mut stream = ClickStream::new(42);
        let started = Instant::now();
        let mut malformed = 0u64;
        let mut sent = 0u64;
        while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let payload = if sent % 2000 == 1999 {
                    malformed += 1;
                    b"{\"not\": \"avro\"}".to_vec()
                } else {
                    frame(schema_id, &stream.next(now_ms))
                };
                let key = (sent % 997).to_string();
                dev::kafka::send_retrying(
                    &producer,
                    BaseRecord::to(&topic).key(&key).payload(&payload),
                );
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(Produced {
            total: sent,
            duplicates: stream.emitted.duplicates,
            late: stream.emitted.late,
            malformed,
        })
    })
    .await?
}
