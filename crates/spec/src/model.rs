//! The spec structs. Their doc comments are the spec reference
//! (`docs/spec-reference.md` is generated from them).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event_time::{
    AggregationSpec, DedupSpec, EventTimeSpec, FeaturesSpec, OutputMode, WindowSpec,
};
use crate::transform::{EnrichSpec, TransformSpec};
use crate::units::{ByteSize, HumanDuration};

/// One pipeline: a Kafka topic of Confluent-framed Avro records ingested into one Delta table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Name of the pipeline: letters, digits, `-` and `_`. It names the Delta
    /// transaction id (`<pipeline>/<group>`) that makes commits idempotent, so
    /// never reuse one name for two pipelines writing the same table.
    pub pipeline: String,
    /// Where the records come from.
    pub source: SourceSpec,
    /// The Delta table the records land in.
    pub table: TableTarget,
    /// When a micro-batch ends.
    #[serde(default)]
    pub trigger: TriggerSpec,
    /// The unit of ordering, progress and (later) state. `topic`: the whole
    /// topic is one group, owned by one instance at a time (Spark's
    /// semantics). `partition`: every Kafka partition is its own group, so
    /// instances of the pipeline share the partitions through the consumer
    /// group (`source.kafka.group_id`) and a partition's group moves with it.
    #[serde(default)]
    pub state_scope: StateScope,
    /// Where the pipeline keeps its progress and state.
    pub checkpoint: CheckpointSpec,
    /// Where records that cannot be decoded go. Default: a sibling table
    /// `<table.uri>_dead_letters`.
    #[serde(default)]
    pub dead_letters: Option<DeadLetterSpec>,
    /// Merging of small files, Delta log checkpoints and vacuum.
    #[serde(default)]
    pub compaction: CompactionSpec,
    /// Republishing of committed rows to a Kafka topic, exactly once.
    #[serde(default)]
    pub republish: Option<RepublishSpec>,
    /// How the table follows new versions of the writer schema.
    #[serde(default)]
    pub schema_evolution: SchemaEvolutionSpec,
    /// Columns looked up in Delta tables held in memory (stream-static
    /// joins), added to the records before `transform`, in this order.
    #[serde(default)]
    pub enrich: Vec<EnrichSpec>,
    /// Computed columns and a row filter, applied to the records before
    /// the event-time operators and the table; with `features`, after
    /// them, so the expressions can read the features.
    #[serde(default)]
    pub transform: Option<TransformSpec>,
    /// The event time of rows and its watermark; needed by `dedup` and
    /// `window`.
    #[serde(default)]
    pub event_time: Option<EventTimeSpec>,
    /// Drop duplicate rows within the watermark.
    #[serde(default)]
    pub dedup: Option<DedupSpec>,
    /// Rolling aggregates of each row's key over the time before it, added
    /// to the row (a transaction's count and amount on its card over the
    /// last 10 minutes). Not with `window`.
    #[serde(default)]
    pub features: Option<FeaturesSpec>,
    /// Aggregate rows per event-time window: the table then holds one row
    /// per window and group (`window_start`, `window_end`, the `group_by`
    /// columns, the aggregates) instead of the records.
    #[serde(default)]
    pub window: Option<WindowSpec>,
    /// Columns that split each window into groups.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// The aggregate columns of a windowed table.
    #[serde(default)]
    pub aggregations: Vec<AggregationSpec>,
    /// How windowed results reach the table: `append` (final windows,
    /// once) or `update` (changed windows every batch, upserted).
    #[serde(default)]
    pub output_mode: OutputMode,
    /// Late rows (see `event_time.watermark_delay`): `drop` (the default;
    /// they are counted in the progress events and metrics) or the URI of
    /// a Delta table that receives them, committed with the batch.
    #[serde(default)]
    pub late_rows: Option<String>,
    /// Shuffle the records through a Kafka topic by the stateful keys, so a
    /// dedup or window spec can run on several instances under
    /// `state_scope: partition` (see docs/deployment.md).
    #[serde(default)]
    pub repartition: Option<RepartitionSpec>,
}

/// Schema evolution: new fields always become new columns (see
/// docs/schema-evolution.md); this says what happens to records of a schema
/// version the table cannot hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaEvolutionSpec {
    /// `fail`: the batch fails, naming subject and field, and the pipeline
    /// stops. `dead_letter`: the records of that schema version go to the
    /// dead-letter table with the reason, and the others go on.
    #[serde(default)]
    pub on_incompatible: OnIncompatible,
}

/// What an incompatible schema version does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnIncompatible {
    /// Fail the batch and stop the pipeline.
    #[default]
    Fail,
    /// Send the version's records to the dead-letter table.
    DeadLetter,
}

/// The source of a pipeline.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The Kafka topic and how to reach it.
    pub kafka: KafkaSpec,
    /// The Confluent-compatible schema registry that holds the writer schemas.
    pub schema_registry: RegistrySpec,
    /// Columns filled from the Kafka record besides its value: its key,
    /// headers, topic, partition, offset and timestamp. Each is left out
    /// unless it is given a column name.
    #[serde(default)]
    pub columns: RecordColumnsSpec,
    /// Columns the producers key their records by: records with equal values
    /// of these columns always sit in one Kafka partition. Under
    /// `state_scope: partition` it lets dedup and windows run without a
    /// repartition stage when these columns are among their keys (the
    /// `group_by` columns, the `dedup.keys`). Tributary cannot check it:
    /// declare it only when every producer keys so, with the default
    /// partitioner and a partition count that never changes.
    #[serde(default)]
    pub partitioned_by: Vec<String>,
}

/// Columns from the Kafka record; each is left out unless named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordColumnsSpec {
    /// The record key.
    #[serde(default)]
    pub key: Option<KeyColumnSpec>,
    /// Column of the headers, as `map<string, binary>` (a header key that
    /// repeats keeps its first value).
    #[serde(default)]
    pub headers: Option<String>,
    /// Column of the topic name (`string`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Column of the Kafka partition (`integer`).
    #[serde(default)]
    pub partition: Option<String>,
    /// Column of the Kafka offset (`long`).
    #[serde(default)]
    pub offset: Option<String>,
    /// Column of the Kafka record timestamp (`timestamp`, UTC).
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// The key column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyColumnSpec {
    /// Column name.
    pub name: String,
    /// `string`: UTF-8 text; `bytes`: the raw bytes; `avro`: decoded through
    /// the registry. A key that cannot be read so makes its record a dead letter.
    #[serde(default)]
    pub format: KeyFormatSpec,
}

/// How the key is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormatSpec {
    /// UTF-8 text (`string`).
    #[default]
    String,
    /// The raw bytes (`binary`).
    Bytes,
    /// Avro in the Confluent wire format, decoded with its schema from the
    /// registry: a record key becomes a struct column, any other a column of
    /// its type.
    Avro,
}

impl RecordColumnsSpec {
    /// (path in the spec, column name, is a timestamp) of every named column.
    pub fn named(&self) -> Vec<(&'static str, &str, bool)> {
        let mut out = Vec::new();
        if let Some(key) = &self.key {
            out.push(("source.columns.key.name", key.name.as_str(), false));
        }
        for (path, name, is_timestamp) in [
            ("source.columns.headers", &self.headers, false),
            ("source.columns.topic", &self.topic, false),
            ("source.columns.partition", &self.partition, false),
            ("source.columns.offset", &self.offset, false),
            ("source.columns.timestamp", &self.timestamp, true),
        ] {
            if let Some(name) = name {
                out.push((path, name.as_str(), is_timestamp));
            }
        }
        out
    }
}

/// Kafka connection and topic.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// The topic to ingest.
    pub topic: String,
    /// Consumer group that receives the committed offsets (so standard lag
    /// tools work). The Delta log stays the source of truth for progress.
    /// Default: `tributary-<pipeline>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a pipeline with no committed batch starts reading.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// librdkafka properties passed through as they are (`security.protocol`,
    /// `sasl.*`, `ssl.*`, `client.id`, ...). Tributary sets the properties its
    /// guarantees rest on (`enable.auto.commit`, `group.id`, ...) itself and
    /// rejects them here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaSpec {
    pub fn group_id(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("tributary-{pipeline}"))
    }
}

/// How the topic is divided into state groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateScope {
    /// One group for the whole topic.
    #[default]
    Topic,
    /// One group per Kafka partition, spread over instances by the consumer group.
    Partition,
}

/// The repartition stage: it reads the source topic, and writes each record,
/// unchanged, to the partition of `topic` its stateful keys hash to, in
/// Kafka transactions that also commit the source offsets it read (exactly
/// once). The dedup and window stage then reads `topic` under
/// `state_scope: partition`: all rows of a key are in one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepartitionSpec {
    /// The internal topic, created with `partitions` partitions if it does
    /// not exist. Use it for this pipeline only.
    pub topic: String,
    /// Its partition count: the most instances the stateful stage can use.
    /// It must never change while the table has state: a key's rows would
    /// move to another partition's state.
    pub partitions: u32,
    /// The columns records are shuffled by; they must be among the
    /// `group_by` columns and among the `dedup.keys`. Default: `group_by`
    /// when there is a window, else `dedup.keys`.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// Where a pipeline with no committed batch starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartingOffsets {
    /// The oldest record still in the topic.
    #[default]
    Earliest,
    /// Only records produced after the pipeline first starts.
    Latest,
}

/// Schema registry connection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    /// Base URL of the registry, e.g. `http://localhost:8081`.
    pub url: String,
    /// Name of an environment variable holding `user:password` for HTTP basic
    /// auth. Secrets are never written in the spec itself.
    #[serde(default)]
    pub basic_auth_env: Option<String>,
    /// Name of an environment variable holding a bearer token.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Path of a file holding `user:password` for HTTP basic auth (a mounted
    /// secret; a trailing newline is ignored).
    #[serde(default)]
    pub basic_auth_file: Option<std::path::PathBuf>,
    /// Path of a file holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// PEM file of the CA that signs the registry's TLS certificate, when it
    /// is not a public one.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate (chain) Tributary presents to a
    /// registry that requires mutual TLS; give `client_key_file` with it.
    #[serde(default)]
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1); mount it as a secret.
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
    /// How producers name the value subject: `topic_name` (`<topic>-value`),
    /// `record_name` (the record's full name) or `topic_record_name`
    /// (`<topic>-<record full name>`). Decoding needs no subject (each record
    /// carries its schema id); `validate` and error messages use it.
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// The value record's full name (`example.Order`), for the
    /// `record_name` and `topic_record_name` strategies.
    #[serde(default)]
    pub record_name: Option<String>,
    /// Timeout of one registry request.
    #[serde(default = "default_registry_timeout")]
    #[schemars(default = "default_registry_timeout")]
    pub timeout: HumanDuration,
    /// How many times a failing registry request is retried (with exponential
    /// backoff) before the batch fails; a failed batch commits nothing and is retried.
    #[serde(default = "default_registry_retries")]
    pub max_retries: u32,
}

/// Confluent's subject name strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value`.
    #[default]
    TopicName,
    /// The record's full name.
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

fn default_registry_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_registry_retries() -> u32 {
    5
}

/// The Delta table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableTarget {
    /// Table location as a URI: `file:///abs/path` (or a plain absolute
    /// path), or `s3://bucket/prefix` (AWS S3 or an S3-compatible store; see
    /// `storage_options`). The table is created on the first batch if it
    /// does not exist.
    pub uri: String,
    /// Options of the object store holding the table and its dead-letter
    /// table, named as deltalake and object_store name them:
    /// `AWS_REGION`, `AWS_ENDPOINT_URL` (MinIO, R2, ...), `AWS_ALLOW_HTTP`,
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (write them as
    /// `${VAR}`), `conditional_put`, ... Unset ones come from the `AWS_*`
    /// environment variables and the AWS default credential chain. On S3
    /// commits use conditional put (`If-None-Match`), the only safe mode:
    /// `conditional_put: disabled` is refused unless
    /// `AWS_S3_ALLOW_UNSAFE_RENAME: 'true'`, and a DynamoDB lock
    /// (`AWS_S3_LOCKING_PROVIDER`) is refused as deltalake 1.x ignores it.
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// Partition columns. Each entry is a source column name, or a column
    /// derived from a timestamp column: `date(ts)` adds a `date` column
    /// (`YYYY-MM-DD`, UTC) and `hour(ts)` an `hour` column (0-23, UTC).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Size at which a data file is closed and a new one started. A micro-batch
    /// also ends once it has read this many bytes of record values, so a busy
    /// topic writes files of about this size.
    #[serde(default = "default_target_file_size")]
    #[schemars(default = "default_target_file_size")]
    pub target_file_size: ByteSize,
}

fn default_target_file_size() -> ByteSize {
    ByteSize(256 << 20)
}

/// How micro-batches are planned.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Processing-time trigger (Spark's `ProcessingTime`): a batch is
    /// planned this long after the previous one was, or at once when that
    /// one took longer. Ignored by `available_now`, which runs batch after
    /// batch.
    #[serde(default = "default_interval")]
    #[schemars(default = "default_interval")]
    pub interval: HumanDuration,
    /// Most Kafka offsets one batch reads, over all partitions, split over
    /// them in proportion to their lag before the batch is read (Spark's
    /// `maxOffsetsPerTrigger`, planned by its rule: a partition whose share
    /// is under one record still reads one, so a batch may pass the limit
    /// by a record per partition). Default: everything readable when the
    /// batch is planned.
    #[serde(default)]
    pub max_offsets_per_trigger: Option<u64>,
    /// `true`: read what the topic holds when the pipeline starts (up to the
    /// high watermarks seen then), commit it, and exit 0 (Spark's
    /// `Trigger.AvailableNow`), for backfills and scheduled runs.
    #[serde(default)]
    pub available_now: bool,
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

impl Default for TriggerSpec {
    fn default() -> Self {
        TriggerSpec {
            interval: default_interval(),
            max_offsets_per_trigger: None,
            available_now: false,
        }
    }
}

/// Checkpoint location.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// URI of the checkpoint directory: `file:///abs/path` (or a plain
    /// absolute path), or `s3://bucket/prefix`, so a replacement node with an
    /// empty disk resumes from object storage alone. Plans are created with
    /// conditional put (`If-None-Match`), which an `s3://` checkpoint requires.
    pub location: String,
    /// Object store options of an `s3://` checkpoint, named as for
    /// `table.storage_options`. Default: the table's.
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// Local directory of the RocksDB operator state (dedup keys, open
    /// windows) of stateful pipelines. Default: `state/` under a local
    /// checkpoint location; required when the checkpoint is on `s3://`.
    /// Lost state is rebuilt by replaying the recorded batches.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// With an `s3://` checkpoint, a snapshot of the operator state is
    /// uploaded to `<location>/state/<group>/` after every this many
    /// batches (only SST files not uploaded before), so a node with an
    /// empty disk restores it instead of re-running every batch. `0`: none.
    #[serde(default = "default_state_snapshot_every")]
    #[schemars(default = "default_state_snapshot_every")]
    pub state_snapshot_every: u64,
}

fn default_state_snapshot_every() -> u64 {
    10
}

/// Dead-letter table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSpec {
    /// URI of the Delta table that receives undecodable records with their raw
    /// key and value bytes, topic, partition, offset, timestamp and the reason.
    pub table: String,
}

/// Compaction: bin-packs each partition's small files into files of about
/// `target_file_size`, as commits with `dataChange=false` (streaming readers
/// see no new data), never touching the transaction ids that make ingest
/// exactly-once. Also writes Delta log checkpoints, deletes expired log
/// files and vacuums files the table no longer references.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactionSpec {
    /// Run the compaction worker inside `tributary run`, one pass every
    /// `interval`. `tributary compact` runs one pass whatever this says.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub enabled: bool,
    /// Time between two passes of the worker; the first pass comes one
    /// interval after start.
    #[serde(default = "default_compaction_interval")]
    #[schemars(default = "default_compaction_interval")]
    pub interval: HumanDuration,
    /// Size of the files compaction writes. Files smaller than this are
    /// candidates; they are packed, in the order they were written, into bins
    /// of at most this many bytes, and each bin of two or more files becomes
    /// one file.
    #[serde(default = "default_compacted_file_size")]
    #[schemars(default = "default_compacted_file_size")]
    pub target_file_size: ByteSize,
    /// Most bytes of small files a pass rewrites before committing them. A
    /// partition's bins are committed in groups of at most this many bytes,
    /// and each bin is read one file at a time, so a pass holds about this
    /// much (plus one input file) however large the partition. At least
    /// `target_file_size`: one bin must fit. With `z_order_by`, a bin's rows
    /// are sorted together, so one bin's decoded rows are held at once.
    #[serde(default = "default_compaction_max_memory")]
    #[schemars(default = "default_compaction_max_memory")]
    pub max_memory: ByteSize,
    /// A partition is rewritten only when it has at least this many files
    /// smaller than `target_file_size`.
    #[serde(default = "default_min_files")]
    #[schemars(default = "default_min_files")]
    pub min_files: u32,
    /// A partition qualifies only when its newest file is at least this old:
    /// with `date(ts)` partitions, `2h` compacts only days that stopped
    /// receiving rows. `0s`: every partition qualifies.
    #[serde(default = "default_quiet_for")]
    #[schemars(default = "default_quiet_for")]
    pub quiet_for: HumanDuration,
    /// Columns whose values cluster together in the rewritten files (the rows
    /// of each bin are sorted along a Z-order curve of these columns), so
    /// readers skip more files by their statistics. Empty: rows keep their order.
    #[serde(default)]
    pub z_order_by: Vec<String>,
    /// Write a Delta log checkpoint once this many commits were made since
    /// the last one, so readers replay few JSON commits.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Delta log files older than this (and covered by a checkpoint) are
    /// deleted; time travel reaches back this far at most. At least 7 days:
    /// the pipeline's newest commit record must outlive a stop, so a lost
    /// checkpoint location can be recovered from the table.
    #[serde(default = "default_log_retention")]
    #[schemars(default = "default_log_retention")]
    pub log_retention: HumanDuration,
    /// Deleting data files the table no longer references.
    #[serde(default)]
    pub vacuum: VacuumSpec,
}

/// Republish sink: tails the table's committed versions and produces their
/// new rows (never compaction's rewrites) to a Kafka topic inside Kafka
/// transactions, with its progress (the next table version to publish)
/// committed in the same transaction: `read_committed` consumers see every
/// qualifying row exactly once, in table-version order.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepublishSpec {
    /// Run the sink inside `tributary run`. `tributary republish` runs it
    /// whatever this says.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub enabled: bool,
    /// The topic the rows go to.
    pub topic: String,
    /// Brokers of the target cluster. Default: `source.kafka.bootstrap_servers`.
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// Only rows for which this condition is true are published: an SQL
    /// expression over the table's columns, in the language of `transform`
    /// (`is_suspicious AND amount >= 1000`; see docs/transform.md).
    /// Default: every row.
    #[serde(default)]
    pub filter: Option<String>,
    /// The columns to publish, in this order. Default: every column.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Column whose value, as text, is the record key. Default: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Value format. `avro`: Confluent framing, with the schema of the
    /// published columns registered as `<topic>-value` in the source's
    /// schema registry. `json`: one JSON object per row.
    #[serde(default)]
    pub format: RepublishFormat,
    /// How often the sink looks for new table versions. Beside its pipeline
    /// in `tributary run` it also looks as soon as a batch commits.
    #[serde(default = "default_interval")]
    #[schemars(default = "default_interval")]
    pub interval: HumanDuration,
    /// Records per Kafka transaction at most. A table version with more rows
    /// is published in several transactions, each recording the version and
    /// row it reached, so that no transaction outlives the producer's
    /// `transaction.timeout.ms`.
    #[serde(default = "default_max_transaction_records")]
    #[schemars(default = "default_max_transaction_records")]
    pub max_transaction_records: u64,
    /// Topic of the sink's progress records (partition 0; key: the
    /// transactional id; value: the next table version and row to publish),
    /// written in each transaction. The sink creates it when missing, with
    /// one partition and `cleanup.policy=compact`, and refuses to start when
    /// its cleanup policy is anything else; pipelines may share it.
    #[serde(default = "default_progress_topic")]
    #[schemars(default = "default_progress_topic")]
    pub progress_topic: String,
    /// librdkafka producer properties passed through (`security.protocol`,
    /// `sasl.*`, `compression.type`, `transaction.timeout.ms`, ...).
    /// Tributary sets `transactional.id` (`tributary-republish-<pipeline>`)
    /// and idempotence itself and rejects them here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Value format of republished records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RepublishFormat {
    /// Avro in the Confluent wire format.
    #[default]
    Avro,
    /// A JSON object per row.
    Json,
}

fn default_max_transaction_records() -> u64 {
    100_000
}

fn default_progress_topic() -> String {
    "tributary-republish-progress".into()
}

impl RepublishSpec {
    /// The fixed `transactional.id` that fences zombie republishers.
    pub fn transactional_id(&self, pipeline: &str) -> String {
        format!("tributary-republish-{pipeline}")
    }
}

/// Vacuum: deletes data files that no table version within the retention
/// period references (files replaced by compaction, files of attempts that
/// never committed).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VacuumSpec {
    /// Delete data files unreferenced for at least this long. Readers at an
    /// older version, and streaming readers that far behind, lose their files.
    #[serde(default = "default_vacuum_retention")]
    #[schemars(default = "default_vacuum_retention")]
    pub retention: HumanDuration,
    /// Time between two vacuums of the worker in `tributary run`.
    #[serde(default = "default_vacuum_interval")]
    #[schemars(default = "default_vacuum_interval")]
    pub interval: HumanDuration,
    /// A retention under one hour is refused unless this is `true`: it can
    /// delete files that a running query or a commit in flight still needs.
    #[serde(default)]
    pub allow_short_retention: bool,
}

fn default_true() -> bool {
    true
}

fn default_compaction_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_compacted_file_size() -> ByteSize {
    ByteSize(256 << 20)
}

fn default_compaction_max_memory() -> ByteSize {
    ByteSize(1 << 30)
}

fn default_min_files() -> u32 {
    8
}

fn default_quiet_for() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}

fn default_checkpoint_interval() -> u64 {
    10
}

fn default_log_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}

fn default_vacuum_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}

fn default_vacuum_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

impl Default for CompactionSpec {
    fn default() -> Self {
        CompactionSpec {
            enabled: default_true(),
            interval: default_compaction_interval(),
            target_file_size: default_compacted_file_size(),
            max_memory: default_compaction_max_memory(),
            min_files: default_min_files(),
            quiet_for: default_quiet_for(),
            z_order_by: Vec::new(),
            checkpoint_interval: default_checkpoint_interval(),
            log_retention: default_log_retention(),
            vacuum: VacuumSpec::default(),
        }
    }
}

impl Default for VacuumSpec {
    fn default() -> Self {
        VacuumSpec {
            retention: default_vacuum_retention(),
            interval: default_vacuum_interval(),
            allow_short_retention: false,
        }
    }
}

/// How a partition column is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionColumn {
    /// A column of the source record, used as it is.
    Source(String),
    /// `date(ts)`: the UTC date of a timestamp column, as a `date` column.
    Date { from: String },
    /// `hour(ts)`: the UTC hour (0-23) of a timestamp column, as an `hour` column.
    Hour { from: String },
}

impl PartitionColumn {
    /// Parses one `table.partition_by` entry.
    pub fn parse(entry: &str) -> Result<PartitionColumn, String> {
        let entry = entry.trim();
        if let Some((func, rest)) = entry.split_once('(') {
            let arg = rest
                .strip_suffix(')')
                .map(str::trim)
                .filter(|a| is_identifier(a))
                .ok_or_else(|| {
                    format!(
                        "invalid partition expression {entry:?}; write date(column) or hour(column)"
                    )
                })?;
            return match func.trim() {
                "date" => Ok(PartitionColumn::Date {
                    from: arg.to_string(),
                }),
                "hour" => Ok(PartitionColumn::Hour {
                    from: arg.to_string(),
                }),
                other => Err(format!(
                    "unknown partition transform {other:?}; supported: date(column), hour(column)"
                )),
            };
        }
        if is_identifier(entry) {
            Ok(PartitionColumn::Source(entry.to_string()))
        } else {
            Err(format!("invalid partition column {entry:?}"))
        }
    }

    /// Name of the column in the table.
    pub fn name(&self) -> &str {
        match self {
            PartitionColumn::Source(c) => c,
            PartitionColumn::Date { .. } => "date",
            PartitionColumn::Hour { .. } => "hour",
        }
    }

    /// The source column it reads.
    pub fn source_column(&self) -> &str {
        match self {
            PartitionColumn::Source(c)
            | PartitionColumn::Date { from: c }
            | PartitionColumn::Hour { from: c } => c,
        }
    }
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TableSpec {
    /// The parsed partition columns. Valid after `validate()` succeeded.
    pub fn partition_columns(&self) -> Vec<PartitionColumn> {
        self.table
            .partition_by
            .iter()
            .filter_map(|e| PartitionColumn::parse(e).ok())
            .collect()
    }

    /// The subject of the topic's value schemas, by the spec's strategy.
    pub fn value_subject(&self) -> String {
        let registry = &self.source.schema_registry;
        let topic = &self.source.kafka.topic;
        let record = registry.record_name.as_deref().unwrap_or("?");
        match registry.subject_strategy {
            SubjectStrategy::TopicName => format!("{topic}-value"),
            SubjectStrategy::RecordName => record.to_string(),
            SubjectStrategy::TopicRecordName => format!("{topic}-{record}"),
        }
    }

    /// Object store options of the checkpoint location: its own, or the table's.
    pub fn checkpoint_storage_options(&self) -> &BTreeMap<String, String> {
        if self.checkpoint.storage_options.is_empty() {
            &self.table.storage_options
        } else {
            &self.checkpoint.storage_options
        }
    }

    /// Whether the checkpoint location is on local disk.
    pub fn checkpoint_is_local(&self) -> bool {
        let l = &self.checkpoint.location;
        l.starts_with('/') || l.starts_with("file://")
    }

    /// URI of the dead-letter table.
    pub fn dead_letter_uri(&self) -> String {
        match &self.dead_letters {
            Some(d) => d.table.clone(),
            None => format!("{}_dead_letters", self.table.uri.trim_end_matches('/')),
        }
    }
}
