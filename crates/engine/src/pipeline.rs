use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deltalake::arrow::datatypes::SchemaRef;
use serde_json::json;
use tributary_avro::{
    KeyFormat, RecordColumns, RecordDecoder, RegistryAuth, RegistryClient, RegistryConfig,
    SchemaGate, SecretSource,
};
use tributary_core::{Classify, CrashPoint, ErrorKind, TOPIC_GROUP, app_id, crash_point};
use tributary_delta::{BatchCommit, BatchRows, DeltaTableSink, TableOptions, dead_letter_batch};
use tributary_kafka::{GroupMember, KafkaReader, ReaderConfig, StartAt};
use tributary_spec::{OnIncompatible, StartingOffsets, StateScope, TableSpec};

use crate::encode::{Chunk, Converter, Payload, ReadyBatch, run_encoder};
use crate::error::{EngineError, Result};
use crate::offset_log::{BatchPlan, OffsetLog, RecordedDeadLetter};
use crate::progress::{BatchProgress, EventTimeProgress, SinkProgress, SourceProgress};
use crate::read::{PlanLimits, read_new_batch, replay_batch};
use crate::stateful::{GroupState, add_operator_columns, operator_config};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Called with each batch's progress (the demo prints them).
pub type ProgressCallback = Arc<dyn Fn(&BatchProgress) + Send + Sync>;

#[derive(Clone, Default)]
pub struct PipelineOptions {
    /// Set to stop after the batch in flight commits.
    pub stop: Arc<AtomicBool>,
    /// Appends each progress event as a JSON line.
    pub progress_json: Option<PathBuf>,
    pub on_progress: Option<ProgressCallback>,
    /// Told of every failed attempt of a group: (pipeline, group, error,
    /// attempts in a row, whether the pipeline stops on it).
    pub on_failure: Option<FailureCallback>,
}

/// See `PipelineOptions::on_failure`.
pub type FailureCallback = Arc<dyn Fn(&GroupFailure) + Send + Sync>;

/// A failed attempt of a group's batch.
#[derive(Debug, Clone)]
pub struct GroupFailure {
    pub pipeline: String,
    pub group: String,
    pub error: String,
    pub kind: ErrorKind,
    pub attempt: u32,
    /// The pipeline stops: the error is not one a retry can cure.
    pub fatal: bool,
}

/// Attempts at reading a stored file that does not parse before the
/// pipeline stops: a writer that is mid-way finishes within them.
const CORRUPT_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub batches: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub files: u64,
    pub bytes: u64,
    pub table_version: Option<u64>,
}

/// The Kafka columns (key, headers, position) a spec asks the decoder to fill.
fn record_columns(spec: &TableSpec) -> RecordColumns {
    let c = &spec.source.columns;
    RecordColumns {
        key: c.key.as_ref().map(|k| {
            let format = match k.format {
                tributary_spec::KeyFormatSpec::String => KeyFormat::String,
                tributary_spec::KeyFormatSpec::Bytes => KeyFormat::Bytes,
                tributary_spec::KeyFormatSpec::Avro => KeyFormat::Avro,
            };
            (k.name.clone(), format)
        }),
        headers: c.headers.clone(),
        topic: c
            .topic
            .clone()
            .map(|name| (name, spec.source.kafka.topic.clone())),
        partition: c.partition.clone(),
        offset: c.offset.clone(),
        timestamp: c.timestamp.clone(),
    }
}

/// With `schema_evolution.on_incompatible: dead_letter`, refuses the writer
/// schemas the table cannot hold, so their records become dead letters: each
/// is checked against the table's schema as the run starts, evolved by every
/// schema accepted since.
fn schema_gate(spec: &TableSpec, table: Option<SchemaRef>) -> Option<SchemaGate> {
    if spec.schema_evolution.on_incompatible != OnIncompatible::DeadLetter {
        return None;
    }
    let subject = spec.value_subject();
    let mut current = table;
    Some(Box::new(move |id, writer| {
        let incoming = tributary_avro::delta_schema(writer).map_err(|e| e.to_string())?;
        let Some(table) = &current else {
            current = Some(incoming);
            return Ok(());
        };
        match crate::evolve::evolve(table, &incoming) {
            Ok(Some(evolved)) => {
                current = Some(Arc::new(evolved));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(m) => Err(format!(
                "incompatible schema version (subject {subject}, schema id {id}): {m}; \
                 kept here by schema_evolution.on_incompatible: dead_letter"
            )),
        }
    }))
}

/// The schema the records of a table have so far: the table's own, unless
/// the table holds windows, whose records' schema starts afresh each run.
fn records_schema(spec: &TableSpec, data: &DeltaTableSink) -> Option<SchemaRef> {
    if spec.window.is_some() {
        None
    } else {
        data.arrow_schema()
    }
}

/// The schema-registry client a spec describes.
pub fn registry_client(registry: &tributary_spec::RegistrySpec) -> Result<RegistryClient> {
    Ok(RegistryClient::new(registry_config(registry)?)?)
}

/// The registry settings a spec describes, credentials read from the
/// environment variable or file it names.
pub fn registry_config(registry: &tributary_spec::RegistrySpec) -> Result<RegistryConfig> {
    let auth = RegistryAuth::from_sources(
        registry
            .basic_auth_env
            .as_deref()
            .map(SecretSource::Env)
            .or(registry.basic_auth_file.as_deref().map(SecretSource::File)),
        registry
            .bearer_token_env
            .as_deref()
            .map(SecretSource::Env)
            .or(registry
                .bearer_token_file
                .as_deref()
                .map(SecretSource::File)),
    )?;
    Ok(RegistryConfig {
        url: registry.url.clone(),
        auth,
        timeout: registry.timeout.0,
        max_retries: registry.max_retries,
        ca_file: registry.ca_file.clone(),
    })
}

/// Runs a pipeline until it is stopped, or, with `available_now`, until the
/// topic is drained. Errors a retry can cure (broker, registry, storage) are
/// retried with backoff from the last committed batch; nothing is lost and
/// nothing is written twice. Other errors end the run.
pub async fn run_pipeline(spec: TableSpec, options: PipelineOptions) -> Result<RunSummary> {
    let registry = Arc::new(registry_client(&spec.source.schema_registry)?);
    match spec.state_scope {
        StateScope::Topic => run_group(&spec, &options, registry, GroupScope::topic(), None).await,
        StateScope::Partition => crate::partitioned::run_partitioned(spec, options, registry).await,
    }
}

/// The Kafka connection a spec describes.
pub fn reader_config(spec: &TableSpec) -> ReaderConfig {
    let kafka = &spec.source.kafka;
    ReaderConfig {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        topic: kafka.topic.clone(),
        group_id: kafka.group_id(&spec.pipeline),
        properties: kafka.properties.clone(),
    }
}

/// With no plan in the checkpoint, the table's log must still say where
/// the group stands: a txn version without the commit record of that batch
/// (its JSON expired while the checkpoint location was lost) would make the
/// group start over at `starting_offsets` and skip every batch id the table
/// has as "already landed", losing those records silently.
async fn refuse_unknown_position(spec: &TableSpec, group: &Group, name: &str) -> Result<()> {
    let Some(batch) = group.data.committed_batch(&group.app_id).await? else {
        return Ok(());
    };
    if group.data.marker_of(&group.app_id, batch).await?.is_some() {
        return Ok(());
    }
    Err(EngineError::Spec(format!(
        "group {group} of pipeline {pipeline} committed batch {batch} to {table} (its txn \
         version), but neither the checkpoint location {checkpoint} nor the table's log (its \
         JSON commits expired) still records that batch's offsets: the pipeline cannot tell \
         where to resume, and starting over would skip records. Restore the checkpoint \
         location (offsets/{group}/); or, to start over on purpose, give the pipeline a new \
         name and choose source.kafka.starting_offsets",
        group = name,
        pipeline = spec.pipeline,
        table = spec.table.uri,
        checkpoint = spec.checkpoint.location,
    )))
}

/// Which records a group owns.
pub(crate) struct GroupScope {
    /// `topic`, or `p<partition>`: part of the Delta app id and checkpoint paths.
    pub name: String,
    /// The group's partitions; `None`: every partition of the topic.
    pub partitions: Option<Vec<i32>>,
}

impl GroupScope {
    fn topic() -> GroupScope {
        GroupScope {
            name: TOPIC_GROUP.to_string(),
            partitions: None,
        }
    }

    pub(crate) fn partition(p: i32) -> GroupScope {
        GroupScope {
            name: format!("p{p}"),
            partitions: Some(vec![p]),
        }
    }
}

/// Runs one group until stopped or drained, retrying what a retry can cure.
pub(crate) async fn run_group(
    spec: &TableSpec,
    options: &PipelineOptions,
    registry: Arc<RegistryClient>,
    scope: GroupScope,
    member: Option<Arc<GroupMember>>,
) -> Result<RunSummary> {
    let mut run = Run {
        spec,
        options,
        registry,
        scope,
        member,
        summary: RunSummary::default(),
    };
    let mut failures = 0u32;
    // Failures on a file that does not parse, of `failures`.
    let mut unreadable = 0u32;
    let mut batches_at_failure = 0;
    loop {
        let e = match run.once().await {
            Ok(()) => return Ok(run.summary),
            Err(e) => e,
        };
        // Backoff grows only while no batch gets through.
        if run.summary.batches > batches_at_failure {
            failures = 0;
            unreadable = 0;
            batches_at_failure = run.summary.batches;
        }
        failures += 1;
        if e.kind() == ErrorKind::Corrupt {
            unreadable += 1;
        }
        let retry = !options.stop.load(Ordering::Relaxed)
            && match e.kind() {
                ErrorKind::External => true,
                ErrorKind::Corrupt => unreadable < CORRUPT_ATTEMPTS,
                ErrorKind::User | ErrorKind::Internal => false,
            };
        if let Some(on_failure) = &options.on_failure {
            on_failure(&GroupFailure {
                pipeline: spec.pipeline.clone(),
                group: run.scope.name.clone(),
                error: e.to_string(),
                kind: e.kind(),
                attempt: failures,
                fatal: !retry,
            });
        }
        if !retry {
            return Err(e);
        }
        let backoff = Duration::from_millis(500 << failures.min(6)).min(Duration::from_secs(30));
        tracing::warn!(pipeline = %spec.pipeline, group = %run.scope.name, error = %e, attempt = failures,
            "batch failed; nothing of it is committed; retrying from the last commit in {backoff:?}");
        tokio::time::sleep(backoff).await;
    }
}

struct Run<'a> {
    spec: &'a TableSpec,
    options: &'a PipelineOptions,
    registry: Arc<RegistryClient>,
    scope: GroupScope,
    /// With `state_scope: partition`, the group member that commits offsets.
    member: Option<Arc<GroupMember>>,
    summary: RunSummary,
}

/// Sinks and identity of one group.
struct Group {
    app_id: String,
    data: DeltaTableSink,
    dead: DeltaTableSink,
    /// The late-rows table, when late rows are kept.
    late: Option<DeltaTableSink>,
    /// Event-time operators and their state, for stateful pipelines.
    state: Option<GroupState>,
    /// The Kafka columns the decoder fills, and those only operators see.
    columns: RecordColumns,
    hidden: Vec<String>,
    log: OffsetLog,
    /// Offsets known to exist (with `available_now`, the high watermarks at start).
    known_latest: BTreeMap<i32, i64>,
}

impl Run<'_> {
    async fn once(&mut self) -> Result<()> {
        let spec = self.spec;
        let stop = self.options.stop.clone();
        let partitions = spec.partition_columns();
        let mut columns = record_columns(spec);
        let hidden = add_operator_columns(spec, &mut columns);
        let state = if spec.is_stateful() {
            let config = operator_config(spec, &columns, hidden.clone())?;
            Some(GroupState::open(spec, &self.scope.name, config).await?)
        } else {
            None
        };
        let late = match spec.late_rows_uri() {
            Some(uri) => Some(
                DeltaTableSink::open(TableOptions {
                    storage_options: spec.table.storage_options.clone(),
                    uri: uri.to_string(),
                    partition_columns: vec![],
                    target_file_size: spec.table.target_file_size.0,
                })
                .await?,
            ),
            None => None,
        };
        let mut group = Group {
            app_id: app_id(&spec.pipeline, &self.scope.name),
            data: DeltaTableSink::open(TableOptions {
                storage_options: spec.table.storage_options.clone(),
                uri: spec.table.uri.clone(),
                partition_columns: partitions.iter().map(|p| p.name().to_string()).collect(),
                target_file_size: spec.table.target_file_size.0,
            })
            .await?,
            dead: DeltaTableSink::open(TableOptions {
                storage_options: spec.table.storage_options.clone(),
                uri: spec.dead_letter_uri(),
                partition_columns: vec![],
                target_file_size: spec.table.target_file_size.0,
            })
            .await?,
            late,
            state,
            columns,
            hidden,
            log: OffsetLog::open(
                &spec.checkpoint.location,
                spec.checkpoint_storage_options(),
                &self.scope.name,
            )
            .await?,
            known_latest: BTreeMap::new(),
        };
        let kafka = &spec.source.kafka;
        let reader = Arc::new(KafkaReader::connect(&reader_config(spec))?);
        let topic_partitions = match &self.scope.partitions {
            Some(own) => own.clone(),
            None => blocking(|| reader.partitions(KAFKA_TIMEOUT))?,
        };

        // Recovery: the newest recorded plan is re-run with exactly its
        // ranges unless every table it touches already has it.
        let last_plan = match group.log.latest().await? {
            Some(plan) => Some(self.reconcile(&mut group, plan).await?),
            None => None,
        };
        if last_plan.is_none() {
            refuse_unknown_position(spec, &group, &self.scope.name).await?;
        }
        // A stateful group's state may lag the table (a crash between the
        // commit and the state) or be gone: the batches it lacks are re-run
        // through the operators, their table commits skipped as landed.
        if group.state.is_some() {
            let last = match &last_plan {
                Some(plan) => Some(plan.clone()),
                None => match group.data.last_marker(&group.app_id).await? {
                    Some(marker) => Some(plan_of_marker(&marker)?),
                    None => None,
                },
            };
            if let Some(last) = last {
                let from = match group.state.as_ref().map(GroupState::committed_batch) {
                    Some(Ok(Some(m))) => m + 1,
                    Some(Err(e)) => return Err(e),
                    _ => 0,
                };
                if from <= last.batch_id {
                    tracing::info!(pipeline = %spec.pipeline, from, to = last.batch_id, "bringing the operator state up to the last planned batch");
                }
                for b in from..=last.batch_id {
                    let plan = if b == last.batch_id {
                        last.clone()
                    } else {
                        self.recorded_plan(&group, b).await?
                    };
                    if !self.rerun(&mut group, &reader, &plan).await? {
                        return Ok(());
                    }
                }
            }
        }
        let (mut positions, mut next_id, resumed) = match &last_plan {
            Some(plan) if group.state.is_some() => {
                (plan.end_offsets.clone(), plan.batch_id + 1, true)
            }
            Some(plan) => {
                if !self.landed(&group, plan).await? {
                    if !self.rerun(&mut group, &reader, plan).await? {
                        return Ok(());
                    }
                } else {
                    remove_failed_attempts(&mut group, plan, 0).await?;
                }
                (plan.end_offsets.clone(), plan.batch_id + 1, true)
            }
            None => match group.data.last_marker(&group.app_id).await? {
                Some(marker) => {
                    tracing::warn!(pipeline = %spec.pipeline, "the offsets log is empty; resuming after the table's last commit by this pipeline");
                    let plan = plan_of_marker(&marker)?;
                    (plan.end_offsets, plan.batch_id + 1, true)
                }
                None => (BTreeMap::new(), 0, false),
            },
        };
        // Partitions without a position: new partitions of a running pipeline
        // start at the beginning (as in Spark); a new pipeline obeys starting_offsets.
        for p in &topic_partitions {
            if !positions.contains_key(p) {
                let (low, high) = blocking(|| reader.watermarks(*p, KAFKA_TIMEOUT))?;
                let start = if resumed || kafka.starting_offsets == StartingOffsets::Earliest {
                    low
                } else {
                    high
                };
                positions.insert(*p, start);
            }
        }
        blocking(|| reader.check_resume_offsets(&positions, KAFKA_TIMEOUT))?;
        let starts: Vec<(i32, StartAt)> = positions
            .iter()
            .map(|(p, o)| (*p, StartAt::Offset(*o)))
            .collect();
        blocking(|| reader.assign(&starts))?;

        let drain_targets = if spec.trigger.available_now {
            let mut targets = BTreeMap::new();
            for p in &topic_partitions {
                targets.insert(*p, blocking(|| reader.watermarks(*p, KAFKA_TIMEOUT))?.1);
            }
            group.known_latest = targets.clone();
            Some(targets)
        } else {
            None
        };
        let limits = PlanLimits {
            max_offsets: spec.trigger.max_offsets_per_trigger.unwrap_or(u64::MAX),
            max_bytes: spec.table.target_file_size.0,
            interval: spec.trigger.interval.0,
            drain_targets,
        };

        // Three stages overlap: the reader thread fetches and decodes, the
        // encoder thread converts and encodes Parquet, and this task records
        // plans, uploads and commits. Batch N commits while N+1 is encoded.
        let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Chunk>(64);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<ReadyBatch>>(1);
        let converter = Converter::new(
            spec,
            records_schema(spec, &group.data),
            group.hidden.clone(),
        );
        let target_file_size = spec.table.target_file_size.0;
        let encoder_thread = std::thread::Builder::new()
            .name(format!("encode-{}", spec.pipeline))
            .spawn(move || run_encoder(chunk_rx, tx, converter, target_file_size))
            .map_err(|e| EngineError::Internal(format!("cannot start encoder thread: {e}")))?;
        let thread_reader = reader.clone();
        let registry = self.registry.clone();
        let handle = tokio::runtime::Handle::current();
        let columns = group.columns.clone();
        let gate = schema_gate(spec, records_schema(spec, &group.data));
        // The reader stops when the user stops the pipeline or this run fails.
        let abort = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_abort) = (stop.clone(), abort.clone());
        // A group of the whole topic takes partitions added to it while it
        // runs (a drain with `available_now` keeps the partitions it started with).
        let mut discovery = (self.scope.partitions.is_none() && limits.drain_targets.is_none())
            .then(|| PartitionDiscovery::new(spec.pipeline.clone()));
        let reader_thread = std::thread::Builder::new()
            .name(format!("read-{}", spec.pipeline))
            .spawn(move || {
                let mut decoder = RecordDecoder::new(registry, handle).with_record_columns(columns);
                if let Some(gate) = gate {
                    decoder = decoder.with_schema_gate(gate);
                }
                let mut undrained: BTreeSet<i32> = limits
                    .drain_targets
                    .iter()
                    .flatten()
                    .filter(|(p, target)| positions.get(p).is_none_or(|pos| pos < target))
                    .map(|(p, _)| *p)
                    .collect();
                let stopped =
                    || thread_stop.load(Ordering::Relaxed) || thread_abort.load(Ordering::Relaxed);
                let rows_tx = chunk_tx.clone();
                let mut send_rows = |rows| {
                    rows_tx
                        .send(Chunk::Rows(rows))
                        .map_err(|_| EngineError::Internal("the encoder thread stopped".into()))
                };
                loop {
                    crash_point(CrashPoint::PanicInReader, 0);
                    if let Some(discovery) = &mut discovery
                        && let Err(e) = discovery.add_new_partitions(&thread_reader, &mut positions)
                    {
                        let _ = chunk_tx.send(Chunk::Failed(e));
                        break;
                    }
                    let result = read_new_batch(
                        &thread_reader,
                        &mut decoder,
                        &mut positions,
                        &limits,
                        &mut undrained,
                        &stopped,
                        &mut send_rows,
                    );
                    let (chunk, last) = match result {
                        Ok(b) => {
                            let last = b.drained || stopped();
                            if b.records == 0 {
                                if last {
                                    break;
                                }
                                continue;
                            }
                            (Chunk::End(b), last)
                        }
                        Err(e) => (Chunk::Failed(e), true),
                    };
                    if chunk_tx.send(chunk).is_err() || last {
                        break;
                    }
                }
            })
            .map_err(|e| EngineError::Internal(format!("cannot start reader thread: {e}")))?;

        let mut outcome = Ok(());
        while let Some(ready) = rx.recv().await {
            let batch = match ready {
                Ok(b) => b,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            crash_point(CrashPoint::AfterRead, next_id);
            let plan = BatchPlan {
                batch_id: next_id,
                group: self.scope.name.clone(),
                ranges: batch.read.ranges.clone(),
                end_offsets: batch.read.end_offsets.clone(),
                dead_letters: batch.read.dead_letters.len() as u64,
                dead_letter_records: Some(
                    batch
                        .read
                        .dead_letters
                        .iter()
                        .map(|d| RecordedDeadLetter {
                            partition: d.partition,
                            offset: d.offset,
                            reason: d.reason.clone(),
                        })
                        .collect(),
                ),
            };
            let t = Instant::now();
            match group.log.record(&plan).await {
                Ok(None) => {}
                Ok(Some(recorded)) if recorded.ranges == plan.ranges => {}
                Ok(Some(_)) => {
                    outcome = Err(EngineError::ConcurrentInstance(format!(
                        "batch {} of group {} was planned by another instance sharing this checkpoint",
                        plan.batch_id, plan.group
                    )));
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            let plan_ms = t.elapsed().as_millis() as u64;
            crash_point(CrashPoint::AfterPlan, plan.batch_id);
            if let Err(e) = self
                .write(&mut group, &reader, &plan, batch, false, plan_ms)
                .await
            {
                outcome = Err(e);
                break;
            }
            next_id += 1;
        }
        // The reader must not outlive its run: it would keep reading for nobody.
        abort.store(true, Ordering::Relaxed);
        drop(rx);
        let joined = tokio::task::spawn_blocking(move || {
            [
                ("reader", reader_thread.join()),
                ("encoder", encoder_thread.join()),
            ]
        })
        .await
        .map_err(|e| EngineError::Internal(format!("joining the batch loop's threads: {e}")))?;
        // A thread that panicked closed its channel like one that finished:
        // without this the run would end as if drained, its records unread.
        for (thread, joined) in joined {
            if let Err(panic) = joined
                && outcome.is_ok()
            {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                outcome = Err(EngineError::Internal(format!(
                    "the {thread} thread of the batch loop panicked: {message}"
                )));
            }
        }
        outcome
    }

    /// Re-runs a recorded batch with exactly its offsets: read, decode,
    /// operate and write, each table commit skipped where it landed.
    /// Returns false when the pipeline was stopped meanwhile.
    async fn rerun(
        &mut self,
        group: &mut Group,
        reader: &KafkaReader,
        plan: &BatchPlan,
    ) -> Result<bool> {
        let spec = self.spec;
        tracing::info!(pipeline = %spec.pipeline, batch = plan.batch_id, "re-running a planned batch with its recorded offsets");
        let starts: Vec<(i32, StartAt)> = plan
            .ranges
            .ranges
            .iter()
            .map(|r| (r.partition, StartAt::Offset(r.start)))
            .collect();
        blocking(|| reader.assign(&starts))?;
        let mut decoder =
            RecordDecoder::new(self.registry.clone(), tokio::runtime::Handle::current())
                .with_record_columns(group.columns.clone());
        if let Some(gate) = schema_gate(spec, records_schema(spec, &group.data)) {
            decoder = decoder.with_schema_gate(gate);
        }
        let stop = self.options.stop.clone();
        let stopped = || stop.load(Ordering::Relaxed);
        let mut rows = Vec::new();
        let mut collect = |b| {
            rows.push(b);
            Ok(())
        };
        let replayed =
            blocking(|| replay_batch(reader, &mut decoder, plan, &stopped, &mut collect))?;
        let Some(read) = replayed else {
            return Ok(false);
        };
        let started = Instant::now();
        let mut converter = Converter::new(
            spec,
            records_schema(spec, &group.data),
            group.hidden.clone(),
        );
        let payload = blocking(|| converter.payload_of(&rows, spec.table.target_file_size.0))?;
        let batch = ReadyBatch {
            read,
            payload,
            encode_time: started.elapsed(),
        };
        self.write(group, reader, plan, batch, true, 0).await?;
        Ok(true)
    }

    /// The plan of an earlier batch: from the offsets log, or from the
    /// table's commit of it.
    async fn recorded_plan(&self, group: &Group, batch: u64) -> Result<BatchPlan> {
        if let Some(plan) = group.log.plan(batch).await? {
            return Ok(plan);
        }
        match group.data.marker_of(&group.app_id, batch).await? {
            Some(marker) => plan_of_marker(&marker),
            None => Err(EngineError::Spec(format!(
                "the operator state needs batch {batch} re-run, but neither the offsets log nor \
                 the table's log still records its offsets; restore the state directory, or \
                 start the pipeline afresh (new checkpoint and table)"
            ))),
        }
    }

    /// The table is the arbiter of what a batch holds: when it has the newest
    /// planned batch, or a later one, with other offsets than this
    /// checkpoint recorded (another instance committed it), the table's
    /// record is adopted.
    async fn reconcile(&self, group: &mut Group, plan: BatchPlan) -> Result<BatchPlan> {
        let landed = group.data.committed_batch(&group.app_id).await?;
        if landed.is_none_or(|v| v < plan.batch_id) {
            return Ok(plan);
        }
        let Some(marker) = group.data.last_marker(&group.app_id).await? else {
            return Ok(plan);
        };
        let table_plan = plan_of_marker(&marker)?;
        if table_plan.batch_id == plan.batch_id && table_plan.ranges == plan.ranges {
            return Ok(plan);
        }
        tracing::warn!(
            pipeline = %self.spec.pipeline, local = plan.batch_id, table = table_plan.batch_id,
            "another instance committed batches this checkpoint did not plan; adopting the table's record"
        );
        group.log.adopt(&table_plan).await?;
        Ok(table_plan)
    }

    /// Whether every table the plan touches has committed it.
    async fn landed(&self, group: &Group, plan: &BatchPlan) -> Result<bool> {
        let data_done = group
            .data
            .committed_batch(&group.app_id)
            .await?
            .is_some_and(|v| v >= plan.batch_id);
        let dead_done = plan.dead_letters == 0
            || group
                .dead
                .committed_batch(&group.app_id)
                .await?
                .is_some_and(|v| v >= plan.batch_id);
        Ok(data_done && dead_done)
    }

    /// Writes one batch: dead letters, then data, each one Delta transaction
    /// tagged with the batch id; then offsets to the consumer group.
    async fn write(
        &mut self,
        g: &mut Group,
        reader: &KafkaReader,
        plan: &BatchPlan,
        batch: ReadyBatch,
        replayed: bool,
        plan_ms: u64,
    ) -> Result<()> {
        let spec = self.spec;
        let started = Instant::now();
        let ReadyBatch {
            read: batch,
            payload,
            encode_time,
        } = batch;
        let rows_in = batch.records;
        // Event-time operators run on the state the previous batch left;
        // their state change is applied only after the commits below.
        let (data_rows, operated) = match payload {
            Payload::Encoded(encoded) => (BatchRows::Encoded(encoded), None),
            Payload::Rows(rows) => {
                let state = g.state.as_ref().ok_or_else(|| {
                    EngineError::Internal("rows for operators without their state".into())
                })?;
                let operated = blocking(|| state.operate(plan.batch_id, &rows))?;
                (
                    BatchRows::Arrow(state.table_rows(&operated)?),
                    Some(operated),
                )
            }
        };
        let output_rows = match &data_rows {
            BatchRows::Encoded(e) => e.rows,
            BatchRows::Arrow(b) => b.iter().map(|b| b.num_rows() as u64).sum(),
        };
        let file_name = format!("{}-{}-{:010}", spec.pipeline, plan.group, plan.batch_id);
        let intent = g.log.intent(plan.batch_id);
        let info = json!({
            "appId": g.app_id,
            "pipeline": spec.pipeline,
            "group": plan.group,
            "batchId": plan.batch_id,
            "topic": plan.ranges.topic,
            "ranges": plan.ranges.ranges,
            "endOffsets": plan.end_offsets,
            "deadLetters": plan.dead_letters,
            "watermark": operated.as_ref().and_then(|o| o.watermark).map(format_micros),
        });
        // Dead letters and late rows go to tables of their own, each commit
        // tagged like the data's.
        let app_id = g.app_id.clone();
        let side_commit = |rows| BatchCommit {
            app_id: app_id.clone(),
            batch_id: plan.batch_id,
            rows: BatchRows::Arrow(vec![rows]),
            info: info.clone(),
            file_name: file_name.clone(),
        };
        let mut dead_version = None;
        let dead_letters = batch.dead_letters.len() as u64;
        if dead_letters > 0 {
            let letters =
                dead_letter_batch(&plan.ranges.topic, plan.batch_id, &batch.dead_letters)?;
            let outcome = g.dead.commit(side_commit(letters), &intent).await?;
            if outcome.already_landed && !replayed {
                verify_landed_plan(&g.dead, &g.app_id, plan).await?;
            }
            dead_version = outcome.version;
            crash_point(CrashPoint::AfterDeadLetters, plan.batch_id);
            tracing::warn!(pipeline = %spec.pipeline, batch = plan.batch_id, dead_letters, table = %g.dead.uri(), "records could not be decoded; kept in the dead-letter table");
        }
        let mut late_version = None;
        if let (Some(sink), Some(late)) = (
            g.late.as_mut(),
            operated.as_ref().and_then(|o| o.late.clone()),
        ) {
            let outcome = sink.commit(side_commit(late), &intent).await?;
            if outcome.already_landed && !replayed {
                verify_landed_plan(sink, &g.app_id, plan).await?;
            }
            late_version = outcome.version;
        }
        let commit = BatchCommit {
            app_id,
            batch_id: plan.batch_id,
            rows: data_rows,
            info,
            file_name,
        };
        let merge = g.state.as_ref().and_then(|s| {
            s.merge_keys
                .clone()
                .map(|keys| (keys, s.output_partitions.clone().unwrap_or_default()))
        });
        let outcome = match merge {
            Some((keys, partitions)) => g.data.upsert(commit, &keys, &partitions, &intent).await?,
            None => g.data.commit(commit, &intent).await?,
        };
        if outcome.already_landed && !replayed {
            verify_landed_plan(&g.data, &g.app_id, plan).await?;
            tracing::info!(pipeline = %spec.pipeline, batch = plan.batch_id,
                "another instance committed this batch with the same offsets; skipped");
        }
        crash_point(CrashPoint::AfterCommit, plan.batch_id);
        let event_time = match operated {
            Some(operated) => {
                let progress = EventTimeProgress {
                    watermark: operated.watermark.map(format_micros),
                    num_late_rows: operated.late_rows,
                    num_duplicate_rows: operated.duplicates,
                    late_rows_table_version: late_version,
                };
                let state = g.state.as_mut().ok_or_else(|| {
                    EngineError::Internal("operated rows without their state".into())
                })?;
                blocking(|| state.apply(plan.batch_id, operated))?;
                state.snapshot_if_due(plan.batch_id).await;
                Some(progress)
            }
            None => None,
        };
        tracing::debug!(batch = plan.batch_id, "removing files of failed attempts");
        remove_failed_attempts(g, plan, outcome.files).await?;
        tracing::debug!(
            batch = plan.batch_id,
            "committing offsets to the consumer group"
        );
        let write_ms = started.elapsed().as_millis() as u64;

        let t = Instant::now();
        let next: Vec<(i32, i64)> = plan.end_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        let committed = match &self.member {
            Some(member) => member.commit(&next),
            None => reader.commit(&next),
        };
        if let Err(e) = committed {
            tracing::warn!(pipeline = %spec.pipeline, error = %e, "could not commit offsets to the consumer group (lag tools will lag; the table is correct)");
        }
        let offset_commit_ms = t.elapsed().as_millis() as u64;
        crash_point(CrashPoint::AfterOffsets, plan.batch_id);

        let s = &mut self.summary;
        s.batches += 1;
        s.rows += output_rows;
        s.dead_letters += dead_letters;
        s.files += outcome.files as u64;
        s.bytes += outcome.bytes;
        s.table_version = g.data.version();

        let read_ms = batch.read_time.as_millis() as u64;
        let processing_ms = plan_ms + write_ms + offset_commit_ms;
        let per_sec = |ms: u64| rows_in as f64 * 1000.0 / ms.max(1) as f64;
        let offsets = |pick: &dyn Fn(&tributary_core::PartitionRange) -> i64| {
            BTreeMap::from([(
                plan.ranges.topic.clone(),
                plan.ranges
                    .ranges
                    .iter()
                    .map(|r| (r.partition.to_string(), pick(r)))
                    .collect::<BTreeMap<_, _>>(),
            )])
        };
        let mut latest = reader.latest_offsets();
        for (p, o) in &g.known_latest {
            let e = latest.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        let lag = (!latest.is_empty()).then(|| {
            plan.end_offsets
                .iter()
                .map(|(p, end)| latest.get(p).map_or(0, |l| (l - end).max(0)))
                .sum::<i64>()
        });
        let progress = BatchProgress {
            name: spec.pipeline.clone(),
            batch_id: plan.batch_id,
            group: plan.group.clone(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            replayed,
            num_input_rows: rows_in,
            lag,
            num_output_rows: output_rows,
            num_dead_letters: dead_letters,
            input_bytes: batch.bytes,
            input_rows_per_second: per_sec(read_ms),
            processed_rows_per_second: per_sec(processing_ms),
            duration_ms: BTreeMap::from([
                ("read".to_string(), read_ms),
                ("decode".to_string(), batch.decode_time.as_millis() as u64),
                ("upload".to_string(), outcome.upload.as_millis() as u64),
                ("commit".to_string(), outcome.commit.as_millis() as u64),
                ("encode".to_string(), encode_time.as_millis() as u64),
                ("plan".to_string(), plan_ms),
                ("write".to_string(), write_ms),
                ("offsetCommit".to_string(), offset_commit_ms),
                (
                    "triggerExecution".to_string(),
                    plan_ms + write_ms + offset_commit_ms,
                ),
            ]),
            sources: vec![SourceProgress {
                description: format!("kafka[{}]", plan.ranges.topic),
                start_offset: offsets(&|r| r.start),
                end_offset: offsets(&|r| r.end),
                latest_offset: BTreeMap::from([(
                    plan.ranges.topic.clone(),
                    latest.iter().map(|(p, o)| (p.to_string(), *o)).collect(),
                )]),
            }],
            event_time,
            sink: SinkProgress {
                description: format!("delta[{}]", g.data.uri()),
                table_version: outcome.version,
                num_files: outcome.files,
                num_bytes: outcome.bytes,
                dead_letter_table_version: dead_version,
            },
        };
        tracing::info!(
            pipeline = %spec.pipeline, batch = plan.batch_id, rows = output_rows, dead_letters,
            files = outcome.files, version = ?outcome.version, replayed, ms = processing_ms, "batch committed"
        );
        if let Some(path) = &self.options.progress_json {
            let mut line = serde_json::to_string(&progress)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            line.push('\n');
            // One write per line: the groups of a partition-scope pipeline
            // append to the same file at once, and `writeln!` writes the
            // newline separately, so two lines could interleave.
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot append the progress event");
            }
        }
        if let Some(cb) = &self.options.on_progress {
            cb(&progress);
        }
        Ok(())
    }
}

/// A fresh plan found its batch id already in the table: another instance
/// committed it. Harmless if that instance committed the same offsets; else
/// this instance must stop writing and re-sync from the table.
async fn verify_landed_plan(table: &DeltaTableSink, app_id: &str, plan: &BatchPlan) -> Result<()> {
    let marker = table.marker_of(app_id, plan.batch_id).await?;
    let same = match &marker {
        Some(m) => {
            let table_plan = plan_of_marker(m)?;
            table_plan.batch_id == plan.batch_id && table_plan.ranges == plan.ranges
        }
        None => false,
    };
    if same {
        return Ok(());
    }
    Err(EngineError::ConcurrentInstance(format!(
        "batch {} of {app_id} is already in {} with other offsets",
        plan.batch_id,
        table.uri()
    )))
}

/// Deletes the data files of earlier attempts at a batch once it has landed
/// (no attempt at it can commit any more). Needed only when more files were
/// announced than `committed_now`.
async fn remove_failed_attempts(
    g: &mut Group,
    plan: &BatchPlan,
    committed_now: usize,
) -> Result<()> {
    let announced = g.log.announced(plan.batch_id).await?;
    let total: usize = announced.values().map(Vec::len).sum();
    if total <= committed_now {
        return Ok(());
    }
    for (table, paths) in announced {
        let sink = if table == g.data.uri() {
            &mut g.data
        } else if table == g.dead.uri() {
            &mut g.dead
        } else if let Some(late) = g.late.as_mut().filter(|l| l.uri() == table) {
            late
        } else {
            continue;
        };
        if sink
            .committed_batch(&g.app_id)
            .await?
            .is_some_and(|v| v >= plan.batch_id)
        {
            let removed = sink
                .remove_uncommitted(&g.app_id, plan.batch_id, &paths)
                .await?;
            if removed > 0 {
                tracing::info!(table = %table, batch = plan.batch_id, removed, "removed data files of a failed attempt");
            }
        }
    }
    Ok(())
}

/// The plan a committed batch recorded in `commitInfo.tributary`.
fn plan_of_marker(marker: &tributary_delta::CommitMarker) -> Result<BatchPlan> {
    BatchPlan::from_commit_info(marker.version, &marker.info)
}

/// A time in microseconds since the epoch as RFC 3339 (UTC).
fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| micros.to_string())
}

/// Runs a short blocking client call without stalling the async workers.
/// Looks for partitions added to the topic, between batches, every
/// `DISCOVERY_INTERVAL`; a new partition is read from its first offset (as
/// Spark does).
struct PartitionDiscovery {
    pipeline: String,
    last: Instant,
}

const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

impl PartitionDiscovery {
    fn new(pipeline: String) -> PartitionDiscovery {
        PartitionDiscovery {
            pipeline,
            last: Instant::now(),
        }
    }

    fn add_new_partitions(
        &mut self,
        reader: &KafkaReader,
        positions: &mut BTreeMap<i32, i64>,
    ) -> Result<()> {
        if self.last.elapsed() < DISCOVERY_INTERVAL {
            return Ok(());
        }
        self.last = Instant::now();
        let added: Vec<i32> = reader
            .partitions(KAFKA_TIMEOUT)?
            .into_iter()
            .filter(|p| !positions.contains_key(p))
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let mut starts = Vec::new();
        for p in &added {
            let (low, _) = reader.watermarks(*p, KAFKA_TIMEOUT)?;
            positions.insert(*p, low);
            starts.push((*p, StartAt::Offset(low)));
        }
        reader.add_partitions(&starts)?;
        tracing::info!(pipeline = %self.pipeline, partitions = ?added, "new partitions of the topic; reading them from their first offset");
        Ok(())
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
