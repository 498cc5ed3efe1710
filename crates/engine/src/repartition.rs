//! The repartition stage (`repartition:` in the spec): Kafka as the shuffle,
//! as Kafka Streams does it. It reads the source topic in its own consumer
//! group (`<group_id>-repartition`), decodes each record only to find its
//! stateful keys, and forwards the record unchanged to the partition of the
//! repartition topic those keys hash to, in transactions that also commit
//! the source offsets (`tributary_kafka::Shuffle`). The dedup and window
//! stage then runs under `state_scope: partition` on the repartition topic,
//! where all rows of a key sit in one partition.
//!
//! Invariants:
//! - a key's partition depends only on its values (their text, FNV-1a, modulo
//!   the partition count), never on the Arrow or Tributary version, so state
//!   and records stay together across upgrades;
//! - a record that does not decode goes to a partition of its own source
//!   partition's choosing and becomes a dead letter in the stateful stage,
//!   with the reason: the shuffle never drops a record.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Int32Type, Int64Type};
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use rdkafka::message::{BorrowedMessage, Message as _};
use tributary_avro::{RecordColumns, RecordDecoder, RegistryClient};
use tributary_core::{Classify, ErrorKind};
use tributary_kafka::{Shuffle, ShuffleConfig, raw_record};
use tributary_spec::{StartingOffsets, TableSpec};

use crate::error::{EngineError, Result};
use crate::open::record_columns;
use crate::options::{Components, PipelineOptions, RunSummary};
use crate::partitioned::run_partitioned;

/// Hidden columns the decoder fills with each row's source position.
const PARTITION_COLUMN: &str = "__tributary_source_partition";
const OFFSET_COLUMN: &str = "__tributary_source_offset";

/// Records per transaction, at most.
const MAX_RECORDS: usize = 20_000;

/// How long a draining stage waits for source partitions before it
/// concludes the other instances have them all.
const NO_ASSIGNMENT_WAIT: Duration = Duration::from_secs(20);

/// The running stage: stop it with `stop`, then `join`.
pub(crate) struct RepartitionStage {
    pub(crate) stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl RepartitionStage {
    /// Starts the stage on its own thread. With `drain`, it returns once
    /// every source partition assigned to it is read to its end.
    pub(crate) fn start(
        spec: &TableSpec,
        registry: Arc<RegistryClient>,
        drain: bool,
    ) -> Result<RepartitionStage> {
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let stage = Stage {
            config: shuffle_config(spec),
            keys: spec.repartition_keys(),
            columns: record_columns(spec),
            registry,
            runtime,
            stop: stop.clone(),
            drain,
            pipeline: spec.pipeline.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("repartition-{}", spec.pipeline))
            .spawn(move || stage.run())
            .map_err(|source| EngineError::Thread {
                thread: "repartition",
                source,
            })?;
        Ok(RepartitionStage { stop, thread })
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the stage to end (after stopping it, with `stop`), and
    /// returns how it ended.
    pub(crate) async fn join(self, stop: bool) -> Result<()> {
        if stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|source| EngineError::Task {
                task: "the repartition stage",
                source,
            })?
            .unwrap_or_else(|_| {
                Err(EngineError::Spec(
                    "the repartition stage panicked (a bug; please report it)".into(),
                ))
            })
    }
}

/// Runs both stages of a spec with `repartition`: the shuffle, and the
/// table's stage under partition scope on the repartition topic. With
/// `available_now` the shuffle drains its source partitions first, then the
/// table's stage drains the repartition topic. A failed shuffle stops the
/// table's stage, and the run returns its error.
pub(crate) async fn run_with_repartition(
    spec: TableSpec,
    options: PipelineOptions,
    components: Components,
) -> Result<RunSummary> {
    let drain = spec.trigger.available_now;
    // The table's stage subscribes to the topic: it must exist first.
    let config = shuffle_config(&spec);
    tokio::task::spawn_blocking(move || Shuffle::ensure_topic(&config))
        .await
        .map_err(|source| EngineError::Task {
            task: "creating the repartition topic",
            source,
        })??;
    let stage = RepartitionStage::start(&spec, components.registry.clone(), drain)?;
    if drain {
        stage.join(false).await?;
        return run_partitioned(spec, options, components).await;
    }
    let stop = options.stop.clone();
    let mut table = tokio::spawn(run_partitioned(spec, options, components));
    let table_result = loop {
        tokio::select! {
            result = &mut table => break result,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stage.is_finished() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    let shuffled = stage.join(true).await;
    let summary = table_result.map_err(|source| EngineError::Task {
        task: "the table's stage",
        source,
    })??;
    shuffled.map(|()| summary)
}

fn shuffle_config(spec: &TableSpec) -> ShuffleConfig {
    let kafka = &spec.source.kafka;
    let repartition = spec.repartition.as_ref();
    ShuffleConfig {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        source_topic: kafka.topic.clone(),
        target_topic: repartition.map(|r| r.topic.clone()).unwrap_or_default(),
        partitions: repartition.map_or(1, |r| r.partitions),
        group_id: format!("{}-repartition", kafka.group_id(&spec.pipeline)),
        transactional_id: format!(
            "{}-repartition-{}",
            kafka.group_id(&spec.pipeline),
            uuid::Uuid::new_v4().simple()
        ),
        from_earliest: kafka.starting_offsets == StartingOffsets::Earliest,
        properties: kafka.properties.clone(),
    }
}

struct Stage {
    config: ShuffleConfig,
    keys: Vec<String>,
    columns: RecordColumns,
    registry: Arc<RegistryClient>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    drain: bool,
    pipeline: String,
}

impl Stage {
    /// Runs until stopped (or drained), reconnecting after failures a retry
    /// can cure; a configuration error ends it.
    fn run(self) -> Result<()> {
        let mut failures = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            match self.shuffle() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::External => {
                    failures += 1;
                    let backoff = Duration::from_millis(500 << failures.min(6));
                    tracing::warn!(pipeline = %self.pipeline, error = %e, attempt = failures,
                        "repartition failed; nothing of its open transaction is visible; \
                         resuming from the committed source offsets in {backoff:?}");
                    std::thread::sleep(backoff);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shuffle(&self) -> Result<()> {
        let shuffle = Shuffle::connect(self.config.clone())?;
        let mut decoder = self.decoder();
        let started = std::time::Instant::now();
        let mut empty_polls = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(records) = shuffle.poll(MAX_RECORDS, Duration::from_millis(200))? else {
                continue;
            };
            if records.is_empty() {
                empty_polls += 1;
                if self.drain && empty_polls >= 3 {
                    match shuffle.drained()? {
                        Some(true) => return Ok(()),
                        // The other instances own every source partition.
                        None if started.elapsed() > NO_ASSIGNMENT_WAIT => return Ok(()),
                        _ => {}
                    }
                }
                continue;
            }
            empty_polls = 0;
            let targets = self.targets(&mut decoder, &records)?;
            shuffle.forward(&records, &targets)?;
        }
        Ok(())
    }

    /// A decoder that also fills each row's source position, kept for the
    /// connection's life (its writer schemas are looked up once).
    fn decoder(&self) -> RecordDecoder {
        let mut columns = self.columns.clone();
        columns.partition = Some(PARTITION_COLUMN.into());
        columns.offset = Some(OFFSET_COLUMN.into());
        // Rows too far in the future are sent on and judged by the table stage.
        columns.future = None;
        RecordDecoder::new(self.registry.clone(), self.runtime.clone()).with_record_columns(columns)
    }

    /// The repartition topic's partition of each record.
    fn targets(
        &self,
        decoder: &mut RecordDecoder,
        records: &[BorrowedMessage<'_>],
    ) -> Result<Vec<i32>> {
        for m in records {
            decoder.push(&raw_record(m))?;
        }
        let partitions = self.config.partitions.max(1);
        let mut by_position: HashMap<(i32, i64), i32> = HashMap::with_capacity(records.len());
        for batch in decoder.finish()?.batches {
            self.place(&batch, partitions, &mut by_position)?;
        }
        Ok(records
            .iter()
            .map(|m| {
                by_position
                    .get(&(m.partition(), m.offset()))
                    .copied()
                    // Not decoded: a dead letter downstream, wherever it goes.
                    .unwrap_or(m.partition().rem_euclid(partitions as i32))
            })
            .collect())
    }

    fn place(
        &self,
        batch: &RecordBatch,
        partitions: u32,
        out: &mut HashMap<(i32, i64), i32>,
    ) -> Result<()> {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                EngineError::Spec(format!(
                    "repartition key {name:?} is not a column of the records"
                ))
            })
        };
        let source_partitions = column(PARTITION_COLUMN)?
            .as_primitive::<Int32Type>()
            .clone();
        let source_offsets = column(OFFSET_COLUMN)?.as_primitive::<Int64Type>().clone();
        let key_columns = self
            .keys
            .iter()
            .map(|k| column(k).cloned())
            .collect::<Result<Vec<_>>>()?;
        let options = FormatOptions::default();
        let formatters = key_columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Spec(format!("repartition keys: {e}")))?;
        let mut text = String::new();
        for row in 0..batch.num_rows() {
            text.clear();
            for (c, f) in key_columns.iter().zip(&formatters) {
                // Unit separator between values; a null is not the empty text.
                if c.is_null(row) {
                    text.push('\u{0}');
                } else {
                    use std::fmt::Write as _;
                    let _ = write!(text, "{}", f.value(row));
                }
                text.push('\u{1f}');
            }
            let target = (fnv1a(text.as_bytes()) % u64::from(partitions)) as i32;
            out.insert(
                (source_partitions.value(row), source_offsets.value(row)),
                target,
            );
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits: stable by definition, unlike `std`'s hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn the_key_hash_is_fnv1a_and_never_changes() {
        // Published FNV-1a 64 test vectors: a change here moves every key
        // to another partition than its state.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
