//! `tributary demo --scenario fraud`: the fraud-scoring example
//! (table-specs/fraud/fraud-scoring.yaml) on the embedded stack, fed with
//! transactions that hide known fraud patterns; the run ends by checking
//! that the table flagged them, and only them, and that the alerts topic got
//! one alert per flagged transaction.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tributary_bench::fraud::{FRAUD_SPEC, fraud_spec_text, write_risk_tiers};
use tributary_devstack as dev;
use tributary_devstack::fraud::{Planted, TRANSACTION_SCHEMA, TransactionStream};
use tributary_devstack::generator::frame;
use tributary_engine::{BatchProgress, PipelineOptions, run_pipeline};

const TOPIC: &str = "transactions";
const ALERTS: &str = "fraud-alerts";

pub async fn run(dir: &Path, duration: Duration, rate: u64) -> anyhow::Result<()> {
    // The mock cluster cannot describe topic configs: the sink's progress
    // topic is created here and trusted (it keeps every record anyway).
    let progress_topic = tributary_spec::parse_spec("fraud-scoring.yaml", FRAUD_SPEC)
        .map_err(|e| anyhow::anyhow!(e.report().join("\n")))?
        .republish
        .map(|r| r.progress_topic)
        .context("the example has a republish section")?;
    let kafka = dev::kafka::start(1, &[(TOPIC, 4), (ALERTS, 1), (&progress_topic, 1)])?;
    let registry = dev::registry::start(([127, 0, 0, 1], 0).into(), None, None).await?;
    let bootstrap = kafka.bootstrap_servers();
    println!(
        "Kafka (in-process mock cluster)   {bootstrap}   topics {TOPIC} (4 partitions), {ALERTS}"
    );
    println!("Schema registry (development)     {}", registry.url);

    let client = tributary_avro::RegistryClient::new(tributary_avro::RegistryConfig {
        url: registry.url.clone(),
        auth: tributary_avro::RegistryAuth::None,
        timeout: Duration::from_secs(5),
        max_retries: 3,
        ..Default::default()
    })?;
    let schema_id = client
        .register(&format!("{TOPIC}-value"), TRANSACTION_SCHEMA)
        .await?;

    // Enough cards that a normal one pays at most twice in the run: only
    // the planted patterns reach the rules' thresholds.
    let cards = (rate * duration.as_secs().max(1) / 2).max(10_000);
    let lake = dir.join("lake");
    write_risk_tiers(&lake.join("card_risk_tiers"), cards).await?;
    println!(
        "Risk-tier dimension               {cards} cards, in {}/card_risk_tiers",
        lake.display()
    );

    let spec_text = fraud_spec_text(dir, &bootstrap, &registry.url);
    let spec_path = dir.join("fraud-scoring.yaml");
    std::fs::write(&spec_path, spec_text)?;
    println!("Table spec                        {}", spec_path.display());
    let spec = tributary_spec::parse_spec_file(&spec_path)
        .map_err(|e| anyhow::anyhow!(e.report().join("\n")))?;
    let table_uri = spec.table.uri.clone();

    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = consumed.clone();
    let committed = Arc::new(tokio::sync::Notify::new());
    let wake_sink = committed.clone();
    let options = PipelineOptions {
        stop: stop.clone(),
        progress_json: Some(dir.join("progress.jsonl")),
        progress_json_max_bytes: tributary_engine::DEFAULT_PROGRESS_JSON_MAX_BYTES,
        on_progress: Some(Arc::new(move |p: &BatchProgress| {
            wake_sink.notify_one();
            seen.fetch_add(p.num_input_rows, Ordering::Relaxed);
            let p95 = p
                .event_to_commit
                .as_ref()
                .map_or("-".to_string(), |l| format!("{} ms", l.p95_ms));
            println!(
                "  batch {:>3}  {:>6} transactions scored  table v{:<4} event->commit p95 {p95}",
                p.batch_id,
                p.num_output_rows,
                p.sink
                    .table_version
                    .map_or("-".to_string(), |v| v.to_string()),
            );
        })),
        on_failure: None,
        on_group: None,
    };
    let components =
        crate::components::components(&spec, &tributary_state::RocksOptions::default())?;
    let registry_client = components.registry.clone();
    let published = Arc::new(AtomicU64::new(0));
    let published_version = Arc::new(AtomicU64::new(0));
    let (count, version) = (published.clone(), published_version.clone());
    let sink = tokio::spawn(tributary_republish::run_republisher_checking(
        spec.clone(),
        stop.clone(),
        Some(Arc::new(
            move |p: &tributary_republish::RepublishProgress| {
                count.fetch_add(p.rows_published, Ordering::Relaxed);
                version.fetch_max(p.version, Ordering::Relaxed);
                if let Some(l) = &p.event_to_publish {
                    println!(
                        "  alerts    {:>6} published from table v{:<4} event->publish p95 {} ms",
                        p.rows_published, p.version, l.p95_ms
                    );
                }
            },
        )),
        registry_client,
        Some(committed),
        tributary_republish::ProgressTopicCheck::TrustDevStack,
    ));
    let pipeline = tokio::spawn(run_pipeline(spec, options, components));

    println!(
        "Producing about {rate} transactions/s for {duration:?}, with bursts and merchant sprees planted..."
    );
    let (produced, planted) = produce(&bootstrap, schema_id, cards, duration, rate).await?;
    println!(
        "Produced {produced} transactions: {} bursts and {} sprees planted ({} transactions)",
        planted.bursts,
        planted.sprees,
        planted.ids.len()
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    while consumed.load(Ordering::Relaxed) < produced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = deltalake::open_table(deltalake::ensure_table_uri(&table_uri)?).await?;
    let last_version = table.version().unwrap_or(0) as u64;
    while published_version.load(Ordering::Relaxed) < last_version && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    pipeline.await.context("pipeline task panicked")??;
    sink.await.context("republish task panicked")??;

    let scored = read_scored(&table_uri).await?;
    let alerts = published.load(Ordering::Relaxed);
    report(produced, &planted, &scored, alerts)?;
    println!();
    println!("Query it with any Delta reader, e.g. DuckDB:");
    println!(
        "  SELECT card_id, tx_id, tx_count_10m, merchants_10m, risk_tier, risk_score FROM delta_scan('{}') WHERE is_suspicious ORDER BY ts;",
        table_uri.trim_start_matches("file://")
    );
    drop(registry);
    drop(kafka);
    Ok(())
}

/// The flagged transactions, and how many rows the table holds.
struct Scored {
    rows: u64,
    flagged: Vec<(i64, String)>,
}

/// Checks the run's outcome against what was planted, and prints it.
fn report(produced: u64, planted: &Planted, scored: &Scored, alerts: u64) -> anyhow::Result<()> {
    let planted_cards: HashSet<&str> = scored
        .flagged
        .iter()
        .filter(|(id, _)| planted.ids.contains(id))
        .map(|(_, card)| card.as_str())
        .collect();
    let flagged_ids: HashSet<i64> = scored.flagged.iter().map(|(id, _)| *id).collect();
    let caught = planted
        .patterns
        .iter()
        .filter(|p| p.iter().any(|id| flagged_ids.contains(id)))
        .count();
    let after_pattern = scored
        .flagged
        .iter()
        .filter(|(id, card)| !planted.ids.contains(id) && planted_cards.contains(card.as_str()))
        .count();
    let unexplained =
        scored.flagged.len() - flagged_ids.intersection(&planted.ids).count() - after_pattern;
    println!();
    println!("Summary");
    println!("  transactions produced   {produced}");
    println!("  rows in the table       {}", scored.rows);
    println!(
        "  patterns caught         {caught} of {} planted",
        planted.patterns.len()
    );
    println!(
        "  flagged                 {} ({} planted, {after_pattern} later payments of a card caught mid-pattern, {unexplained} others)",
        scored.flagged.len(),
        flagged_ids.intersection(&planted.ids).count()
    );
    println!("  alerts republished      {alerts} to {ALERTS}");
    if scored.rows != produced {
        anyhow::bail!(
            "the table holds {} rows for {produced} transactions produced",
            scored.rows
        );
    }
    // A pattern still being planted when the generator stopped may be short.
    if caught + 1 < planted.patterns.len()
        || unexplained > 0
        || alerts != scored.flagged.len() as u64
    {
        anyhow::bail!(
            "the scores do not match the planted fraud: {caught} of {} patterns caught, {unexplained} normal transactions flagged, {alerts} alerts for {} flagged rows",
            planted.patterns.len(),
            scored.flagged.len()
        );
    }
    Ok(())
}

/// The table's row count and flagged transactions (id, card).
async fn read_scored(uri: &str) -> anyhow::Result<Scored> {
    let table = deltalake::open_table(deltalake::ensure_table_uri(uri)?).await?;
    let mut scored = Scored {
        rows: 0,
        flagged: Vec::new(),
    };
    for file in table.get_file_uris()? {
        let path = file.strip_prefix("file://").unwrap_or(&file).to_string();
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            scored.rows += batch.num_rows() as u64;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .with_context(|| format!("{path} has no column {name}"))
            };
            let (flag, id, card) = (
                column("is_suspicious")?,
                column("tx_id")?,
                column("card_id")?,
            );
            let (flag, id, card) = (
                flag.as_boolean(),
                id.as_primitive::<Int64Type>(),
                card.as_string::<i32>(),
            );
            for i in 0..batch.num_rows() {
                if flag.is_valid(i) && flag.value(i) {
                    scored
                        .flagged
                        .push((id.value(i), card.value(i).to_string()));
                }
            }
        }
    }
    Ok(scored)
}

/// Produces transactions at `rate` for `duration`, keyed by card.
async fn produce(
    bootstrap: &str,
    schema_id: u32,
    cards: u64,
    duration: Duration,
    rate: u64,
) -> anyhow::Result<(u64, Planted)> {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .create()?;
        let mut stream = TransactionStream::new(7, cards, (rate / 4).max(200));
        let started = Instant::now();
        let mut sent = 0u64;
        let mut body = Vec::with_capacity(64);
        while started.elapsed() < duration {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let tx = stream.next(chrono::Utc::now().timestamp_millis());
                body.clear();
                tx.encode(&mut body);
                let payload = frame(schema_id, &body);
                dev::kafka::send_retrying(
                    &producer,
                    BaseRecord::to(TOPIC).key(&tx.card_id).payload(&payload),
                );
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        producer.flush(Duration::from_secs(30))?;
        Ok((sent, stream.planted))
    })
    .await?
}
