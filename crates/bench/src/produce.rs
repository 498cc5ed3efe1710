//! `tributary bench produce`: a steady stream of the benchmark record, for
//! measuring latency under load (tests/bench/latency.py). A native producer,
//! so that the load generator leaves the CPU to the pipeline it measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tributary_devstack::generator::{BENCH_SCHEMA, Rng, bench_event, frame};

use crate::{BenchError, Result, ensure, partitions_of};

/// Where and how fast to produce.
pub struct Stream {
    pub bootstrap_servers: String,
    pub topic: String,
    /// The schema registry the pipeline reads; the record's schema is
    /// registered there under `<topic>-value`.
    pub registry_url: String,
    pub rate: u64,
    pub duration: Duration,
}

/// Sends `rate` records a second, round-robin over the topic's partitions,
/// each stamped by the producer as it is sent, in 10 ms ticks; prints what
/// it sent once every record is acknowledged.
pub async fn produce(stream: Stream) -> Result<()> {
    let registry = Arc::new(tributary_avro::RegistryClient::new(
        tributary_avro::RegistryConfig {
            url: stream.registry_url.clone(),
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )?);
    let id = registry
        .register(&format!("{}-value", stream.topic), BENCH_SCHEMA)
        .await?;
    tokio::task::spawn_blocking(move || send_steadily(&stream, id)).await?
}

fn send_steadily(stream: &Stream, id: u32) -> Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &stream.bootstrap_servers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .create()?;
    let partitions = partitions_of(&producer, &stream.topic);
    ensure!(partitions > 0, "topic {} has no partitions", stream.topic);
    let (mut rng, mut body) = (Rng::new(13), Vec::new());
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < stream.duration {
        let due = (started.elapsed().as_secs_f64() * stream.rate as f64) as u64 + stream.rate / 100;
        while sent < due {
            bench_event(&mut rng, sent, &mut body);
            let payload = frame(id, &body);
            let record = BaseRecord::<(), _>::to(&stream.topic)
                .payload(&payload)
                .partition((sent % partitions as u64) as i32);
            send_waiting(&producer, record)?;
            sent += 1;
        }
        let next = Duration::from_secs_f64(sent as f64 / stream.rate as f64);
        std::thread::sleep(next.saturating_sub(started.elapsed()));
    }
    let elapsed = started.elapsed();
    producer.flush(Duration::from_secs(60))?;
    println!(
        "bench produce: {sent} records to {} over {partitions} partitions at {:.0} records/s",
        stream.topic,
        sent as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Sends `record`, waiting while the producer's queue is full.
pub(crate) fn send_waiting<K: ToBytes + ?Sized>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, K, Vec<u8>>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(BenchError::Check(format!("producing: {e}"))),
        }
    }
}
