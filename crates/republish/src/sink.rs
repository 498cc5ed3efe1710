//! The republish loop: follow the table version by version and publish each
//! version's new rows in Kafka transactions that also record where the sink
//! stands (the next version, and row within it). A version with more rows
//! than `max_transaction_records` is published in several transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{
    DataType, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use serde::Serialize;
use tokio::sync::Notify;
use tributary_avro::RegistryClient;
use tributary_core::{Classify, ErrorKind, LatencyProgress};
use tributary_delta::{DeltaTableSink, TableOptions};
use tributary_kafka::{
    OutRecord, Position, ProgressTopicCheck, PublisherConfig, TransactionalPublisher,
};
use tributary_spec::{Expr, RepublishFormat, RepublishSpec, TableSpec};

use crate::encode::{RowEncoder, ValueFormat};
use crate::error::{RepublishError, Result};
use tributary_transform::select;

/// What one transaction published.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepublishProgress {
    /// When the transaction committed (RFC 3339, UTC).
    pub timestamp: String,
    pub pipeline: String,
    pub topic: String,
    /// The table version published.
    pub version: u64,
    /// Rows that version added.
    pub rows_read: u64,
    /// Of those, the rows that passed the filter and were produced by this
    /// sink (fewer when an earlier sink had published part of the version).
    pub rows_published: u64,
    /// The row of the version this sink started at (0 unless an earlier
    /// sink stopped within the version).
    pub first_row: u64,
    /// Kafka transactions the version took.
    pub transactions: u64,
    /// Table versions committed but not yet published.
    pub lag_versions: u64,
    pub duration_ms: u64,
    /// The column each published row's latency is measured from: the
    /// Kafka timestamp (`source.columns.timestamp`) when the table keeps
    /// it, else the `event_time` column.
    pub latency_from: Option<String>,
    /// From each published row's `latency_from` time to the commit of the
    /// Kafka transaction that published it; absent when nothing was
    /// published or no row had that time.
    pub event_to_publish: Option<LatencyProgress>,
}

pub type RepublishCallback = Arc<dyn Fn(&RepublishProgress) + Send + Sync>;

/// Longest wait between two attempts after an error a retry can cure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the republish sink of `spec` until `stop` is set (between two
/// transactions), registering an Avro value schema with `registry`. It
/// looks for new versions every `republish.interval`, and at once when
/// `committed` is notified: the pipeline in the same process notifies it
/// on each commit, so a version is published without waiting for the poll.
/// Errors a retry can cure (broker, storage, registry) are
/// retried with backoff; a fenced sink, a version lost to log retention or a
/// filter that cannot be evaluated end it.
pub async fn run_republisher(
    spec: TableSpec,
    stop: Arc<AtomicBool>,
    on_progress: Option<RepublishCallback>,
    registry: Arc<RegistryClient>,
    committed: Option<Arc<Notify>>,
) -> Result<()> {
    run_republisher_checking(
        spec,
        stop,
        on_progress,
        registry,
        committed,
        ProgressTopicCheck::Describe,
    )
    .await
}

/// [`run_republisher`], with the progress topic checked as `check` says
/// (the development stack's demo trusts the topic it created).
pub async fn run_republisher_checking(
    spec: TableSpec,
    stop: Arc<AtomicBool>,
    on_progress: Option<RepublishCallback>,
    registry: Arc<RegistryClient>,
    committed: Option<Arc<Notify>>,
    check: ProgressTopicCheck,
) -> Result<()> {
    let Some(republish) = spec.republish.clone() else {
        return Err(RepublishError::Columns(format!(
            "pipeline {} has no republish section",
            spec.pipeline
        )));
    };
    let filter = republish
        .filter
        .as_deref()
        .map(Expr::parse)
        .transpose()
        .map_err(RepublishError::Filter)?;
    let publisher = connect(&spec, &republish, check).await?;
    let mut sink = Sink {
        spec,
        republish,
        filter,
        publisher,
        registry,
        encoder: None,
        on_progress,
        next: None,
        table: None,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match sink.publish_new_versions(&stop).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) if e.kind() == ErrorKind::External => {
                // Resume from what Kafka says was committed, not from memory.
                sink.next = None;
                tracing::warn!(pipeline = %sink.spec.pipeline, error = %e, retry_in = ?backoff,
                    "republishing failed; retrying from the last committed transaction");
                sleep_unless_stopped(backoff, &stop).await;
                if stop.load(Ordering::Relaxed) {
                    // Stopped while failing: nothing more can be published.
                    return Err(e);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let poll = sleep_unless_stopped(sink.republish.interval.0, &stop);
        match &committed {
            Some(committed) => {
                tokio::select! {
                    () = poll => {}
                    () = committed.notified() => {}
                }
            }
            None => poll.await,
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

async fn connect(
    spec: &TableSpec,
    republish: &RepublishSpec,
    progress_topic_check: ProgressTopicCheck,
) -> Result<Arc<TransactionalPublisher>> {
    let config = PublisherConfig {
        bootstrap_servers: republish
            .bootstrap_servers
            .clone()
            .unwrap_or_else(|| spec.source.kafka.bootstrap_servers.clone()),
        topic: republish.topic.clone(),
        transactional_id: republish.transactional_id(&spec.pipeline),
        progress_topic: republish.progress_topic.clone(),
        properties: republish.properties.clone(),
        progress_topic_check,
    };
    let publisher = blocking(move || TransactionalPublisher::connect(config)).await?;
    Ok(Arc::new(publisher))
}

struct Sink {
    spec: TableSpec,
    republish: RepublishSpec,
    filter: Option<Expr>,
    publisher: Arc<TransactionalPublisher>,
    /// Where an Avro value schema is registered.
    registry: Arc<RegistryClient>,
    /// The encoder, for the table schema it was made for.
    encoder: Option<(SchemaRef, Arc<RowEncoder>)>,
    on_progress: Option<RepublishCallback>,
    /// Where the sink stands; read back from Kafka at start and after an error.
    next: Option<Position>,
    /// The table, once opened.
    table: Option<DeltaTableSink>,
}

impl Sink {
    /// Publishes every committed version after the last published one. The
    /// table is opened once and refreshed at each poll.
    async fn publish_new_versions(&mut self, stop: &AtomicBool) -> Result<()> {
        let table = match self.table.take() {
            Some(mut table) => {
                table.refresh().await?;
                table
            }
            None => {
                DeltaTableSink::open_existing(TableOptions {
                    uri: self.spec.table.uri.clone(),
                    storage_options: self.spec.table.storage_options.clone(),
                    ..TableOptions::default()
                })
                .await?
            }
        };
        let outcome = self.publish_up_to_latest(&table, stop).await;
        self.table = Some(table);
        outcome
    }

    async fn publish_up_to_latest(
        &mut self,
        table: &DeltaTableSink,
        stop: &AtomicBool,
    ) -> Result<()> {
        let mut next = match self.next {
            Some(next) => next,
            None => {
                let publisher = self.publisher.clone();
                let next = blocking(move || publisher.position())
                    .await?
                    .unwrap_or(Position { version: 0, row: 0 });
                self.next = Some(next);
                next
            }
        };
        let Some(latest) = table.version() else {
            return Ok(());
        };
        let per_transaction = self.republish.max_transaction_records.max(1) as usize;
        while next.version <= latest && !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let version = next.version;
            let first_row = next.row;
            let added = table
                .added_in(version)
                .await?
                .ok_or(RepublishError::VersionGone { version })?;
            let encoder = self.encoder_for(table).await?;
            let latency_from = table
                .arrow_schema()
                .and_then(|schema| latency_column(&self.spec, &schema));
            let mut records: Vec<OutRecord> = Vec::new();
            // Each record's time to measure its latency from, in step with `records`.
            let mut times: Vec<Option<i64>> = Vec::new();
            let mut rows_read = 0;
            for file in &added {
                for batch in table.read_added(file).await? {
                    rows_read += batch.num_rows() as u64;
                    let selected = match &self.filter {
                        Some(filter) => select(filter, &batch)
                            .map_err(|e| RepublishError::Filter(e.to_string()))?,
                        None => batch,
                    };
                    records.extend(encoder.encode(&selected)?);
                    times.extend(row_times_ms(&selected, latency_from.as_deref())?);
                }
            }
            let mut latencies: Vec<i64> = Vec::new();
            let records = Arc::new(records);
            let total = records.len();
            // A version with nothing to publish still moves the position.
            let mut from = (first_row as usize).min(total);
            let mut transactions = 0;
            loop {
                let to = (from + per_transaction).min(total);
                let after = if to == total {
                    Position {
                        version: version + 1,
                        row: 0,
                    }
                } else {
                    Position {
                        version,
                        row: to as u64,
                    }
                };
                let (publisher, chunk) = (self.publisher.clone(), records.clone());
                blocking(move || publisher.publish(&chunk[from..to], after)).await?;
                let committed_ms = chrono::Utc::now().timestamp_millis();
                latencies.extend(times[from..to].iter().flatten().map(|t| committed_ms - t));
                transactions += 1;
                next = after;
                self.next = Some(next);
                from = to;
                if after.version > version || stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            if next.version == version {
                // Stopped within the version: the next sink carries on from `next`.
                break;
            }
            let progress = RepublishProgress {
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                pipeline: self.spec.pipeline.clone(),
                topic: self.republish.topic.clone(),
                version,
                rows_read,
                rows_published: total as u64 - first_row.min(total as u64),
                first_row,
                transactions,
                lag_versions: latest - version,
                duration_ms: started.elapsed().as_millis() as u64,
                latency_from,
                event_to_publish: LatencyProgress::of_latencies(&latencies),
            };
            tracing::info!(pipeline = %progress.pipeline, topic = %progress.topic, version,
                rows_read, rows_published = progress.rows_published, transactions,
                lag_versions = progress.lag_versions, "republished a table version");
            if let Some(callback) = &self.on_progress {
                callback(&progress);
            }
        }
        Ok(())
    }

    /// The encoder for the table's current schema; with Avro, the schema of
    /// the published columns is registered as `<topic>-value` first.
    async fn encoder_for(&mut self, table: &DeltaTableSink) -> Result<Arc<RowEncoder>> {
        let schema = table
            .arrow_schema()
            .ok_or_else(|| RepublishError::Columns("the table has no schema yet".into()))?;
        if let Some((known, encoder)) = &self.encoder
            && *known == schema
        {
            return Ok(encoder.clone());
        }
        let columns = self.republish.columns.clone();
        let value_schema = RowEncoder::value_schema(&columns, &schema)?;
        let value = match self.republish.format {
            RepublishFormat::Json => ValueFormat::Json,
            RepublishFormat::Avro => {
                let subject = format!("{}-value", self.republish.topic);
                let schema_id = self
                    .registry
                    .register(&subject, &RowEncoder::avro_schema(&value_schema)?)
                    .await?;
                ValueFormat::Avro { schema_id }
            }
        };
        let encoder = Arc::new(RowEncoder::new(
            &schema,
            &columns,
            self.republish.key.clone(),
            value,
        )?);
        self.encoder = Some((schema, encoder.clone()));
        Ok(encoder)
    }
}

/// The column of a table of `spec` to measure latencies from (see
/// [`RepublishProgress::latency_from`]): the Kafka timestamp column, else
/// the event-time column, whichever the table holds as a timestamp.
fn latency_column(spec: &TableSpec, schema: &Schema) -> Option<String> {
    let kafka_timestamp = spec.source.columns.timestamp.as_deref();
    let event_time = spec.event_time.as_ref().and_then(|e| e.column.as_deref());
    [kafka_timestamp, event_time]
        .into_iter()
        .flatten()
        .find(|name| {
            schema
                .field_with_name(name)
                .is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(..)))
        })
        .map(str::to_string)
}

/// Each row's `column` as milliseconds since the epoch (`None` for every
/// row without the column).
fn row_times_ms(batch: &RecordBatch, column: Option<&str>) -> Result<Vec<Option<i64>>> {
    let Some(array) = column.and_then(|c| batch.column_by_name(c)) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let DataType::Timestamp(_, zone) = array.data_type() else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let millis = cast(
        array,
        &DataType::Timestamp(TimeUnit::Millisecond, zone.clone()),
    )?;
    Ok(millis
        .as_primitive::<TimestampMillisecondType>()
        .iter()
        .collect())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tributary_kafka::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepublishError::Encode(format!("the Kafka task failed: {e}")))?
        .map_err(RepublishError::from)
}

async fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::datatypes::Field;

    fn spec(extra: &str) -> TableSpec {
        let yaml = format!(
            "pipeline: pay
source:
  kafka: {{bootstrap_servers: localhost:9092, topic: pay}}
  schema_registry: {{url: http://localhost:8081}}
{extra}table: {{uri: file:///tmp/lake/pay}}
checkpoint: {{location: file:///tmp/ckpt/pay}}
"
        );
        tributary_spec::parse_spec("s.yaml", &yaml).unwrap()
    }

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(name, t)| Field::new(*name, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn latency_is_measured_from_the_kafka_timestamp_else_the_event_time() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let both = spec(
            "  columns: {timestamp: kafka_ts}\nevent_time: {column: ts, watermark_delay: 1m}\n",
        );
        let table = schema(&[("kafka_ts", ts.clone()), ("ts", ts.clone())]);
        assert_eq!(latency_column(&both, &table).as_deref(), Some("kafka_ts"));
        // The table left the Kafka timestamp out (a SELECT dropped it).
        let table = schema(&[("ts", ts.clone())]);
        assert_eq!(latency_column(&both, &table).as_deref(), Some("ts"));
        // An event time in long milliseconds is no timestamp to measure from.
        let table = schema(&[("ts", DataType::Int64)]);
        assert_eq!(latency_column(&both, &table), None);
        let neither = spec("");
        let table = schema(&[("kafka_ts", ts.clone()), ("ts", ts)]);
        assert_eq!(latency_column(&neither, &table), None);
    }
}
