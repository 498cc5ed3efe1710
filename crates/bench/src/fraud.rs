//! `tributary bench fraud`: the fraud-scoring example
//! (table-specs/fraud/fraud-scoring.yaml) through enrich, dedup, rolling
//! features, the score and the commit. Two measures: a backlog drained
//! with `available_now` (transactions/s), and a steady stream at a given
//! rate with the example's 1 s trigger (event -> commit latency). Also the
//! fixtures `demo --scenario fraud` shares: the spec and the risk tiers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake::arrow::array::{RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tributary_delta::{BatchCommit, BatchRows, DeltaTableSink, FileIntent, TableOptions};
use tributary_devstack::fraud::{TRANSACTION_SCHEMA, TransactionStream, card_name, tier_of};
use tributary_devstack::generator::frame;
use tributary_engine::{
    BatchProgress, CheckpointStore, Components, LATENCY_BUCKETS, LatencyProgress, PipelineOptions,
    StateBackend, run_pipeline,
};

use crate::{BenchError, Result, ensure, partitions_of};

/// The example spec, with `${...}` placeholders for its addresses.
pub const FRAUD_SPEC: &str = include_str!("../../../table-specs/fraud/fraud-scoring.yaml");

/// A framed transaction's size, at most.
pub const TRANSACTION_BYTES: u64 = 64;

/// `text` with `${NAME:-default}` replaced by `value(NAME)` where it gives
/// one (the spec parser resolves the others from the environment).
pub fn with_variables(text: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + len];
        let name = inner.split(":-").next().unwrap_or(inner);
        match value(name) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..=start + len]),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// The example spec on the given stack, its tables under `dir/lake`.
pub fn fraud_spec_text(dir: &Path, bootstrap: &str, registry: &str) -> String {
    with_variables(FRAUD_SPEC, |name| match name {
        "KAFKA_BOOTSTRAP_SERVERS" => Some(bootstrap.to_string()),
        "SCHEMA_REGISTRY_URL" => Some(registry.to_string()),
        "TRIBUTARY_LAKE" => Some(format!("file://{}/lake", dir.display())),
        "TRIBUTARY_CHECKPOINTS" => Some(format!("file://{}/checkpoints", dir.display())),
        "TRIBUTARY_STATE_DIR" => Some(format!("{}/state", dir.display())),
        _ => None,
    })
}

/// Writes the risk tiers of `cards` cards as the Delta table at `path`.
pub async fn write_risk_tiers(path: &Path, cards: u64) -> Result<()> {
    let (ids, tiers): (Vec<String>, Vec<&str>) = (0..cards)
        .filter_map(|n| tier_of(n, cards).map(|t| (card_name(n), t)))
        .unzip();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("card_id", DataType::Utf8, false),
            Field::new("risk_tier", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(tiers)),
        ],
    )?;
    std::fs::create_dir_all(path)?;
    let mut sink = DeltaTableSink::open(TableOptions {
        uri: path.display().to_string(),
        target_file_size: 64 << 20,
        ..TableOptions::default()
    })
    .await?;
    let commit = BatchCommit {
        app_id: "tributary-fixture/card_risk_tiers".into(),
        batch_id: 0,
        rows: BatchRows::Arrow(vec![batch]),
        info: serde_json::json!({"writer": "tributary fraud fixture"}),
        file_name: "card-risk-tiers".into(),
    };
    sink.commit(commit, &NothingToRecover).await?;
    Ok(())
}

/// The fixture's directory is new: no file to recover after a crash.
struct NothingToRecover;

#[async_trait::async_trait]
impl FileIntent for NothingToRecover {
    async fn announce(&self, _table_uri: &str, _path: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `bench fraud` measures.
pub enum FraudLoad {
    /// A backlog of this many transactions, drained.
    Backlog(u64),
    /// This many transactions a second, for this long.
    Steady { rate: u64, duration: Duration },
}

/// Runs the fraud pipeline on `bootstrap` (a topic of `partitions` that
/// exists) and prints what it measured.
pub async fn fraud(
    bootstrap: String,
    topic: String,
    partitions: i32,
    load: FraudLoad,
) -> Result<()> {
    let registry =
        tributary_devstack::registry::start(([127, 0, 0, 1], 0).into(), None, None).await?;
    let client = Arc::new(tributary_avro::RegistryClient::new(
        tributary_avro::RegistryConfig {
            url: registry.url.clone(),
            timeout: Duration::from_secs(5),
            max_retries: 3,
            ..Default::default()
        },
    )?);
    let id = client
        .register(&format!("{topic}-value"), TRANSACTION_SCHEMA)
        .await?;
    let total = match load {
        FraudLoad::Backlog(n) => n,
        FraudLoad::Steady { rate, duration } => rate * duration.as_secs().max(1),
    };
    // A normal card pays at most twice: only the planted patterns score high.
    let cards = (total / 2).max(10_000);
    let dir = tempfile::tempdir()?;
    write_risk_tiers(&dir.path().join("lake/card_risk_tiers"), cards).await?;
    let mut text = fraud_spec_text(dir.path(), &bootstrap, &registry.url).replace(
        "    topic: transactions\n",
        &format!("    topic: {topic}\n"),
    );
    if matches!(load, FraudLoad::Backlog(_)) {
        text = text.replace("trigger:\n", "trigger:\n  available_now: true\n");
    }
    let spec = tributary_spec::parse_spec("fraud-scoring.yaml", &text)
        .map_err(|e| BenchError::Check(e.report().join("\n")))?;
    let components = Components {
        registry: client,
        checkpoint: CheckpointStore::local(&spec.checkpoint.location),
        state: StateBackend::RocksDb(Default::default()),
    };
    let producer = Producing {
        bootstrap,
        topic,
        partitions,
        schema_id: id,
        cards,
    };
    match load {
        FraudLoad::Backlog(n) => backlog(spec, components, producer, n).await,
        FraudLoad::Steady { rate, duration } => {
            steady(spec, components, producer, rate, duration).await
        }
    }
}

struct Producing {
    bootstrap: String,
    topic: String,
    partitions: i32,
    schema_id: u32,
    cards: u64,
}

impl Producing {
    /// Sends `count` transactions, at `rate` a second when given (event
    /// times: now), else as fast as possible with event times 100 per ms.
    fn send(&self, count: u64, rate: Option<u64>) -> Result<()> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while partitions_of(&producer, &self.topic) < self.partitions {
            ensure!(
                Instant::now() < deadline,
                "topic {} has too few partitions",
                self.topic
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut stream = TransactionStream::new(3, self.cards, 5_000);
        let base = chrono_now_ms();
        let started = Instant::now();
        let mut body = Vec::with_capacity(64);
        for seq in 0..count {
            let now = match rate {
                Some(rate) => {
                    let due = Duration::from_secs_f64(seq as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    chrono_now_ms()
                }
                None => base + (seq / 100) as i64,
            };
            let tx = stream.next(now);
            body.clear();
            tx.encode(&mut body);
            let payload = frame(self.schema_id, &body);
            let record = BaseRecord::to(&self.topic)
                .key(tx.card_id.as_str())
                .payload(&payload);
            crate::produce::send_waiting(&producer, record)?;
        }
        producer.flush(Duration::from_secs(120))?;
        Ok(())
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn backlog(
    spec: tributary_spec::TableSpec,
    components: Components,
    producer: Producing,
    count: u64,
) -> Result<()> {
    let produced_in = Instant::now();
    let producer = Arc::new(producer);
    let sending = producer.clone();
    tokio::task::spawn_blocking(move || sending.send(count, None)).await??;
    let produce_time = produced_in.elapsed();
    // Each step's milliseconds over the run, to show where the time went.
    let steps: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let summed = steps.clone();
    let options = PipelineOptions {
        on_progress: Some(Arc::new(move |p: &BatchProgress| {
            let mut summed = summed.lock().unwrap_or_else(|e| e.into_inner());
            for (step, ms) in &p.duration_ms {
                *summed.entry(step.clone()).or_default() += ms;
            }
        })),
        ..PipelineOptions::default()
    };
    let started = Instant::now();
    let summary = run_pipeline(spec, options, components).await?;
    let elapsed = started.elapsed();
    let steps = steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let seconds = |step: &str| steps.get(step).copied().unwrap_or_default() as f64 / 1000.0;
    ensure!(
        summary.rows == count && summary.dead_letters == 0,
        "lost transactions: {summary:?} for {count} produced"
    );
    println!(
        "bench fraud (backlog): {count} transactions over {} partitions, {} cards (produced in {:.1}s, not timed)\n  \
         enrich + dedup + 10-minute features + score + commit: {:.2}s, {:.0} transactions/s, {} batches, zero loss\n  \
         the batches' write steps: operate {:.2}s, data upload + commit {:.2}s, state apply {:.2}s, of {:.2}s\n  \
         {}",
        producer.partitions,
        producer.cards,
        produce_time.as_secs_f64(),
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        summary.batches,
        seconds("operate"),
        seconds("upload") + seconds("commit"),
        seconds("stateApply"),
        seconds("write"),
        crate::rocksdb_build(),
    );
    Ok(())
}

async fn steady(
    spec: tributary_spec::TableSpec,
    components: Components,
    producer: Producing,
    rate: u64,
    duration: Duration,
) -> Result<()> {
    let count = rate * duration.as_secs().max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let latencies: Arc<Mutex<Vec<(u64, LatencyProgress)>>> = Arc::default();
    let seen = latencies.clone();
    let options = PipelineOptions {
        stop: stop.clone(),
        on_progress: Some(Arc::new(move |p: &BatchProgress| {
            if let Some(l) = &p.event_to_commit {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.push((p.num_input_rows, l.clone()));
            }
        })),
        ..PipelineOptions::default()
    };
    let pipeline = tokio::spawn(run_pipeline(spec, options, components));
    let producer = Arc::new(producer);
    let sending = producer.clone();
    tokio::task::spawn_blocking(move || sending.send(count, Some(rate))).await??;
    // The last records' batch commits within a trigger or two.
    let drained = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: u64 = latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, _)| n)
            .sum();
        if rows >= count || Instant::now() > drained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let summary = pipeline.await??;
    ensure!(
        summary.rows == count,
        "lost transactions: {} of {count} committed",
        summary.rows
    );
    let batches = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The first batches meet a cold start (the dimension load, RocksDB):
    // the steady state is what the rate is for.
    let warm: Vec<&LatencyProgress> = batches.iter().skip(3).map(|(_, l)| l).collect();
    let worst_p95 = warm.iter().map(|l| l.p95_ms).max().unwrap_or_default();
    let mut p95s: Vec<i64> = warm.iter().map(|l| l.p95_ms).collect();
    p95s.sort_unstable();
    let median_p95 = p95s.get(p95s.len() / 2).copied().unwrap_or_default();
    let worst = warm.iter().map(|l| l.max_ms).max().unwrap_or_default();
    let run = match over_the_run(&warm, 3.0) {
        None => "no transactions after the warm-up batches".to_string(),
        Some((within, p95)) => format!(
            "{:.1} % of transactions within 3 s, p95 {}",
            within * 100.0,
            p95.map_or("over an hour".to_string(), |b| format!("<= {b} s"))
        ),
    };
    println!(
        "bench fraud (steady): {rate} transactions/s for {}s, 1 s trigger, {} batches after 3 warm-up batches, zero loss\n  \
         event -> commit per batch: p95 median {median_p95} ms, worst batch p95 {worst_p95} ms, worst record {worst} ms\n  \
         over the run: {run}\n  \
         {}",
        duration.as_secs(),
        warm.len(),
        crate::rocksdb_build(),
    );
    Ok(())
}

/// Over every record of `batches`: the share committed within `seconds`
/// (a bucket bound), and the smallest bucket bound holding 95 % of them
/// (`None` past the last bound); `None` without records.
fn over_the_run(batches: &[&LatencyProgress], seconds: f64) -> Option<(f64, Option<f64>)> {
    let count: u64 = batches.iter().map(|l| l.count).sum();
    if count == 0 {
        return None;
    }
    let within = |bound: usize| batches.iter().map(|l| l.buckets[bound]).sum::<u64>();
    let share = LATENCY_BUCKETS
        .iter()
        .position(|b| *b == seconds)
        .map_or(0.0, |i| within(i) as f64 / count as f64);
    let p95 = (0..LATENCY_BUCKETS.len())
        .find(|&i| within(i) as f64 >= 0.95 * count as f64)
        .map(|i| LATENCY_BUCKETS[i]);
    Some((share, p95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_wide_share_and_p95_come_from_every_batch_buckets() {
        // 100 records 0.9 s..1.89 s old, 100 records 2.9 s..3.89 s old.
        let fast =
            LatencyProgress::of(&(0..100).map(|t| t * 10).collect::<Vec<_>>(), 1_890).unwrap();
        let slow =
            LatencyProgress::of(&(0..100).map(|t| t * 10).collect::<Vec<_>>(), 3_890).unwrap();
        let (share, p95) = over_the_run(&[&fast, &slow], 3.0).unwrap();
        // All of `fast` and the 11 of `slow` at 2.9 s..3.0 s.
        assert!((share - 111.0 / 200.0).abs() < 1e-9, "{share}");
        assert_eq!(p95, Some(5.0));
        assert_eq!(over_the_run(&[&fast], 3.0), Some((1.0, Some(2.0))));
        assert_eq!(over_the_run(&[], 3.0), None);
        let ancient = LatencyProgress::of(&[0], 7_200_000).unwrap();
        assert_eq!(over_the_run(&[&ancient], 3.0), Some((0.0, None)));
    }

    #[test]
    fn variables_given_are_replaced_and_the_others_kept() {
        let text = "a: ${KNOWN:-x}\nb: ${OTHER:-y}/z\nc: plain";
        let out = with_variables(text, |n| (n == "KNOWN").then(|| "v".to_string()));
        assert_eq!(out, "a: v\nb: ${OTHER:-y}/z\nc: plain");
    }

    #[test]
    fn the_example_spec_parses_with_the_fixture_addresses() {
        let text = fraud_spec_text(
            Path::new("/tmp/x"),
            "127.0.0.1:9092",
            "http://127.0.0.1:8081",
        );
        let spec = tributary_spec::parse_spec("fraud-scoring.yaml", &text).unwrap();
        assert_eq!(spec.table.uri, "file:///tmp/x/lake/scored_transactions");
        assert_eq!(spec.enrich[0].table, "file:///tmp/x/lake/card_risk_tiers");
        assert!(spec.features.is_some() && spec.republish.is_some());
    }
}
