//! Decodes Confluent-framed Avro records straight into Arrow batches.
//!
//! arrow-avro's streaming decoder assumes a well-formed stream: a truncated
//! body makes it wait for the next message's bytes, and a malformed one can
//! leave its column builders unequal. Kafka messages are independent, so each
//! one is checked as it is fed (all bytes consumed, exactly one row added), and
//! every message since the last flush is kept as raw bytes. When a message
//! fails, the decoder for its schema is rebuilt and the good messages are fed
//! again: a bad record becomes a dead letter and costs no other record.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::datatypes::SchemaRef;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use tributary_core::{DeadLetter, DeadLetterReason, RawRecord};

use crate::body_check::BodyCheck;
use crate::error::{AvroError, Result};
use crate::registry::RegistryClient;
use crate::{CONFLUENT_MAGIC, split_frame};

/// Schema metadata key naming the writer schema id of a decoded batch.
pub const SCHEMA_ID_METADATA: &str = "tributary.writer_schema_id";

/// Rows per Arrow batch produced by the decoder.
const DEFAULT_BATCH_ROWS: usize = 8192;

/// What the decoder produced for a range of input: Arrow batches (one schema
/// per writer schema id) and dead letters.
#[derive(Debug, Default)]
pub struct DecodedChunk {
    pub batches: Vec<RecordBatch>,
    pub dead_letters: Vec<DeadLetter>,
}

/// The raw messages fed to one decoder since its last flush.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    records: Vec<PendingRecord>,
}

struct PendingRecord {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Range<usize>>,
    value: Range<usize>,
    /// Kept only when the table stores the headers.
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Columns taken from the Kafka record besides its value; each is off
/// unless it has a name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordColumns {
    /// The key, as text or as bytes.
    pub key: Option<(String, KeyFormat)>,
    /// The headers, as `map<string, binary>`.
    pub headers: Option<String>,
    /// (column, the topic's name).
    pub topic: Option<(String, String)>,
    pub partition: Option<String>,
    pub offset: Option<String>,
    /// The Kafka timestamp (UTC).
    pub timestamp: Option<String>,
    /// Rows whose event time is too far past their Kafka timestamp become
    /// dead letters.
    pub future: Option<FutureBound>,
}

/// `event_time.max_future`: a row whose `column` is more than
/// `max_future_ms` past its record's Kafka timestamp is a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FutureBound {
    pub column: String,
    pub max_future_ms: i64,
}

impl FutureBound {
    /// The rows of `batch` (record `rows[i]` of `pending` each) to keep,
    /// sending the others to `out` as dead letters.
    fn keep(
        &self,
        batch: &RecordBatch,
        pending: &Pending,
        rows: &[usize],
        out: &mut DecodedChunk,
    ) -> Result<Option<arrow::array::BooleanArray>> {
        use arrow::datatypes::{DataType, Int64Type, TimeUnit};
        let Some(column) = batch.column_by_name(&self.column) else {
            return Ok(None);
        };
        let to_ms: fn(i64) -> i64 = match column.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => |v| v.saturating_mul(1000),
            DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => |v| v,
            DataType::Timestamp(TimeUnit::Microsecond, _) => |v| v.div_euclid(1000),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => |v| v.div_euclid(1_000_000),
            _ => return Ok(None),
        };
        let values = arrow::compute::cast(column, &DataType::Int64)?;
        let values = values.as_primitive::<Int64Type>();
        let mut keep = Vec::with_capacity(rows.len());
        for (i, &record) in rows.iter().enumerate() {
            let kafka = pending.records[record].timestamp_ms.filter(|t| *t >= 0);
            let event = values.is_valid(i).then(|| to_ms(values.value(i)));
            let ahead = match (event, kafka) {
                (Some(event), Some(kafka)) => event.saturating_sub(kafka),
                _ => 0,
            };
            let future = ahead > self.max_future_ms;
            if future {
                let reason = format!(
                    "event time {} ms is {} s past the record's Kafka timestamp {} ms, more than \
                     event_time.max_future ({} s): it would move the watermark past every later row",
                    event.unwrap_or_default(),
                    ahead / 1000,
                    kafka.unwrap_or_default(),
                    self.max_future_ms / 1000
                );
                out.dead_letters.push(DeadLetter::new(
                    &pending.raw(record),
                    DeadLetterReason::Future(reason),
                ));
            }
            keep.push(!future);
        }
        Ok((keep.iter().any(|k| !k)).then(|| keep.into()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// UTF-8 text; a key that is not UTF-8 makes its record a dead letter.
    String,
    Bytes,
    /// Avro in the Confluent wire format, decoded with its schema from the
    /// registry: a record key becomes a struct column, any other a column
    /// of its type. A key that cannot be decoded makes its record a dead letter.
    Avro,
}

impl RecordColumns {
    /// Why `record` cannot fill these columns, if it cannot.
    fn refuse(&self, record: &RawRecord<'_>) -> Option<String> {
        match (&self.key, record.key) {
            (Some((_, KeyFormat::String)), Some(key)) if std::str::from_utf8(key).is_err() => {
                Some("the key is not UTF-8 text (store it with key format bytes)".into())
            }
            _ => None,
        }
    }

    /// `batch` with these columns appended, from `records` (one per row).
    fn append(&self, batch: RecordBatch, pending: &Pending, rows: &[usize]) -> Result<RecordBatch> {
        use arrow::array::{
            ArrayRef, BinaryBuilder, Int32Array, Int64Array, MapBuilder, MapFieldNames,
            StringArray, StringBuilder, TimestampMillisecondArray,
        };
        use arrow::datatypes::{Field, Schema};
        let records: Vec<&PendingRecord> = rows.iter().map(|&i| &pending.records[i]).collect();
        let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut add = |name: &str, column: ArrayRef| {
            fields.push(Arc::new(Field::new(name, column.data_type().clone(), true)));
            columns.push(column);
        };
        if let Some((name, format)) = &self.key {
            let keys = records
                .iter()
                .map(|r| r.key.clone().map(|k| &pending.bytes[k]));
            // Avro keys travel as bytes here; the record decoder decodes them.
            let column: ArrayRef = match format {
                KeyFormat::String => Arc::new(StringArray::from_iter(
                    keys.map(|k| k.map(|k| String::from_utf8_lossy(k).into_owned())),
                )),
                KeyFormat::Bytes | KeyFormat::Avro => {
                    let mut b = BinaryBuilder::new();
                    for k in keys {
                        b.append_option(k);
                    }
                    Arc::new(b.finish())
                }
            };
            add(name, column);
        }
        if let Some(name) = &self.headers {
            // Named as arrow-avro names a map's parts, as Delta readers expect.
            let names = MapFieldNames {
                entry: "entries".into(),
                key: "key".into(),
                value: "value".into(),
            };
            let mut b = MapBuilder::new(Some(names), StringBuilder::new(), BinaryBuilder::new());
            for r in &records {
                // Map keys must be unique for readers: a repeated header keeps its first value.
                let mut seen = std::collections::HashSet::new();
                for (k, v) in &r.headers {
                    if seen.insert(k.as_str()) {
                        b.keys().append_value(k);
                        b.values().append_option(v.as_deref());
                    }
                }
                b.append(true)?;
            }
            add(name, Arc::new(b.finish()));
        }
        if let Some((name, topic)) = &self.topic {
            add(
                name,
                Arc::new(StringArray::from(vec![topic.as_str(); records.len()])),
            );
        }
        if let Some(name) = &self.partition {
            add(
                name,
                Arc::new(Int32Array::from_iter_values(
                    records.iter().map(|r| r.partition),
                )),
            );
        }
        if let Some(name) = &self.offset {
            add(
                name,
                Arc::new(Int64Array::from_iter_values(
                    records.iter().map(|r| r.offset),
                )),
            );
        }
        if let Some(name) = &self.timestamp {
            add(
                name,
                Arc::new(
                    TimestampMillisecondArray::from_iter(records.iter().map(|r| r.timestamp_ms))
                        .with_timezone("UTC"),
                ),
            );
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

impl Pending {
    fn push(&mut self, r: &RawRecord<'_>, value: &[u8], keep_headers: bool) {
        let key = r.key.map(|k| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(k);
            start..self.bytes.len()
        });
        let start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        let mut headers = Vec::new();
        if keep_headers && let Some(h) = r.headers {
            h.for_each(&mut |k, v| headers.push((k.to_string(), v.map(<[u8]>::to_vec))));
        }
        self.records.push(PendingRecord {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key,
            value: start..self.bytes.len(),
            headers,
        });
    }

    fn raw(&self, i: usize) -> RawRecord<'_> {
        let p = &self.records[i];
        RawRecord {
            partition: p.partition,
            offset: p.offset,
            timestamp_ms: p.timestamp_ms,
            key: p.key.clone().map(|k| &self.bytes[k]),
            value: Some(&self.bytes[p.value.clone()]),
            headers: None,
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

/// The decoder of one writer schema.
struct SchemaDecoder {
    schema_json: String,
    id: u32,
    batch_rows: usize,
    decoder: Decoder,
    pending: Pending,
    columns: Arc<RecordColumns>,
    /// When this decoder last took a record (`RecordDecoder::pushed`).
    last_used: u64,
    /// Refuses a malformed body before the decoder sees it (`None`: the
    /// schema uses something the check does not know).
    check: Option<BodyCheck>,
    /// Records still to check: the check runs only after a bad record
    /// reached the decoder, so a clean stream does not pay for it.
    checks_left: u32,
}

/// Records checked before decoding after a bad one: while bad records keep
/// coming, each costs its own check instead of a rebuilt decoder.
const CHECK_AFTER_BAD: u32 = 10_000;

impl SchemaDecoder {
    fn new(
        id: u32,
        schema_json: String,
        batch_rows: usize,
        columns: Arc<RecordColumns>,
    ) -> std::result::Result<SchemaDecoder, String> {
        let decoder = build_decoder(id, &schema_json, batch_rows)?;
        Ok(SchemaDecoder {
            id,
            batch_rows,
            decoder,
            pending: Pending::default(),
            columns,
            check: BodyCheck::compile(&schema_json),
            checks_left: 0,
            last_used: 0,
            schema_json,
        })
    }

    /// A decoded batch of the pending records `rows`, with the record columns.
    /// Also names the writer schema id in the batch's schema metadata
    /// (`SCHEMA_ID_METADATA`), for messages about the schema.
    fn finished(&self, batch: RecordBatch, rows: &[usize], out: &mut DecodedChunk) -> Result<()> {
        let mut batch = if *self.columns == RecordColumns::default() {
            batch
        } else {
            self.columns.append(batch, &self.pending, rows)?
        };
        if let Some(bound) = &self.columns.future
            && let Some(keep) = bound.keep(&batch, &self.pending, rows, out)?
        {
            batch = arrow::compute::filter_record_batch(&batch, &keep)?;
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut metadata = batch.schema().metadata().clone();
        metadata.insert(SCHEMA_ID_METADATA.to_string(), self.id.to_string());
        let schema =
            arrow::datatypes::Schema::new_with_metadata(batch.schema().fields().clone(), metadata);
        out.batches.push(batch.with_schema(Arc::new(schema))?);
        Ok(())
    }

    fn rebuild(&mut self) -> Result<()> {
        self.decoder =
            build_decoder(self.id, &self.schema_json, self.batch_rows).map_err(|message| {
                AvroError::UnsupportedSchema {
                    id: self.id,
                    message,
                }
            })?;
        Ok(())
    }

    /// Feeds one framed message; `Err(reason)` when it is not one valid record.
    /// After an `Err` the decoder must be rebuilt.
    fn feed(&mut self, message: &[u8]) -> std::result::Result<(), String> {
        let before = self.decoder.capacity();
        let decoded = self.decoder.decode(message);
        let rows = before - self.decoder.capacity();
        let consumed = match decoded {
            Ok(n) => n,
            // A whole record, then bytes that are no record: the decoder took them for the next frame.
            Err(_) if rows >= 1 => {
                return Err("invalid Avro body: trailing bytes after the record".into());
            }
            Err(e) => return Err(format!("invalid Avro body: {e}")),
        };
        match (consumed == message.len(), rows) {
            (true, 1) => Ok(()),
            (_, 0) => Err("truncated Avro body: the record ends before its schema does".into()),
            _ => Err(format!(
                "invalid Avro body: {} trailing byte(s) after the record",
                message.len().saturating_sub(consumed)
            )),
        }
    }

    /// Feeds a record, turning a bad one into a dead letter without losing the others.
    fn push(&mut self, record: &RawRecord<'_>, value: &[u8], out: &mut DecodedChunk) -> Result<()> {
        if let Some(reason) = self.columns.refuse(record) {
            out.dead_letters
                .push(DeadLetter::new(record, DeadLetterReason::Column(reason)));
            return Ok(());
        }
        if self.checks_left > 0
            && let Some(check) = &self.check
        {
            self.checks_left -= 1;
            if let Err(reason) = check.check(value.get(5..).unwrap_or_default()) {
                self.checks_left = CHECK_AFTER_BAD;
                out.dead_letters
                    .push(DeadLetter::new(record, DeadLetterReason::Body(reason)));
                return Ok(());
            }
        }
        match self.feed(value) {
            Ok(()) => {
                self.pending
                    .push(record, value, self.columns.headers.is_some());
                if self.decoder.batch_is_full() {
                    self.flush(out)?;
                }
                Ok(())
            }
            Err(reason) => {
                out.dead_letters
                    .push(DeadLetter::new(record, DeadLetterReason::Body(reason)));
                // Flushed at once, so no record is fed again twice: the
                // slow path stays linear too.
                self.checks_left = CHECK_AFTER_BAD;
                self.refeed()?;
                self.flush(out)
            }
        }
    }

    /// Rebuilds the decoder and feeds it the pending records again; they were
    /// all accepted before, so they are accepted again.
    fn refeed(&mut self) -> Result<()> {
        self.rebuild()?;
        for i in 0..self.pending.records.len() {
            let r = self.pending.records[i].value.clone();
            let bytes = &self.pending.bytes[r];
            let consumed =
                self.decoder
                    .decode(bytes)
                    .map_err(|e| AvroError::UnsupportedSchema {
                        id: self.id,
                        message: format!("record accepted once was refused on replay: {e}"),
                    })?;
            if consumed != bytes.len() {
                return Err(AvroError::UnsupportedSchema {
                    id: self.id,
                    message: "record accepted once was not consumed on replay".into(),
                });
            }
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut DecodedChunk) -> Result<()> {
        match self.decoder.flush() {
            Ok(Some(batch)) => {
                let rows: Vec<usize> = (0..self.pending.records.len()).collect();
                self.finished(batch, &rows, out)?;
            }
            Ok(None) => {}
            // A value the decoder accepted but Arrow refuses at flush (for
            // example invalid UTF-8): find the culprits one record at a time.
            Err(_) => self.isolate(out)?,
        }
        self.pending.clear();
        Ok(())
    }

    fn isolate(&mut self, out: &mut DecodedChunk) -> Result<()> {
        let mut good = Vec::new();
        let mut good_rows = Vec::new();
        for i in 0..self.pending.records.len() {
            self.rebuild()?;
            let value = self.pending.bytes[self.pending.records[i].value.clone()].to_vec();
            let result = self.feed(&value).and_then(|()| {
                self.decoder
                    .flush()
                    .map_err(|e| format!("invalid Avro value: {e}"))
            });
            match result {
                Ok(Some(batch)) => {
                    good.push(batch);
                    good_rows.push(i);
                }
                Ok(None) => {}
                Err(reason) => out.dead_letters.push(DeadLetter::new(
                    &self.pending.raw(i),
                    DeadLetterReason::Body(reason),
                )),
            }
        }
        self.rebuild()?;
        if let Some(first) = good.first() {
            let batch = arrow::compute::concat_batches(&first.schema(), &good)?;
            self.finished(batch, &good_rows, out)?;
        }
        Ok(())
    }
}

/// `schema` with the `uuid` logical type removed from its strings. Spark
/// reads such a field as the string it is, and so do we: arrow-avro would
/// parse each value to 16 bytes, which the table then needs formatted back
/// (in canonical form, not as written). A `uuid` on `fixed` stays.
fn uuid_strings_as_strings(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(node) => {
            if node.get("type").and_then(serde_json::Value::as_str) == Some("string")
                && node.get("logicalType").and_then(serde_json::Value::as_str) == Some("uuid")
            {
                node.remove("logicalType");
            }
            // A default is data, not schema.
            for (_, child) in node.iter_mut().filter(|(k, _)| *k != "default") {
                uuid_strings_as_strings(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(uuid_strings_as_strings),
        _ => {}
    }
}

fn build_decoder(
    id: u32,
    schema_json: &str,
    batch_rows: usize,
) -> std::result::Result<Decoder, String> {
    let mut schema: serde_json::Value =
        serde_json::from_str(schema_json).map_err(|e| format!("schema {id} is not JSON: {e}"))?;
    uuid_strings_as_strings(&mut schema);
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), AvroSchema::new(schema.to_string()))
        .map_err(|e| e.to_string())?;
    let decoder = ReaderBuilder::new()
        .with_batch_size(batch_rows)
        .with_writer_schema_store(store)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    if decoder.schema().fields().is_empty() {
        return Err("a record schema without fields cannot be stored".into());
    }
    Ok(decoder)
}

/// Decodes the records of a micro-batch. Not thread-safe; one per reader.
pub struct RecordDecoder {
    registry: Arc<RegistryClient>,
    runtime: tokio::runtime::Handle,
    batch_rows: usize,
    decoders: HashMap<u32, SchemaDecoder>,
    /// Records pushed so far: the clock of `SchemaDecoder::last_used`.
    pushed: u64,
    /// Schema ids that cannot be decoded, with the reason their records get.
    unusable: Unusable,
    out: DecodedChunk,
    columns: Arc<RecordColumns>,
    gate: Option<SchemaGate>,
    keys: AvroKeys,
}

/// Decoders of Avro keys, by key schema id.
#[derive(Default)]
struct AvroKeys {
    decoders: HashMap<u32, KeyDecoder>,
    /// Key schema ids that cannot be decoded, with the reason.
    unusable: Unusable,
}

/// How long a schema id found unusable (unknown to the registry, above all)
/// stays so before the registry is asked again: a schema registered after
/// its first records were produced is then picked up by a running pipeline.
const UNUSABLE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Most unusable schema ids remembered (per decoder, for values and keys).
const MAX_UNUSABLE: usize = 1024;

/// Most writer schemas with a decoder at once; the least recently used is
/// flushed and dropped to make room (its id is compiled again if it returns).
const MAX_SCHEMA_DECODERS: usize = 64;

/// Schema ids found unusable, each with its reason and when it was found.
#[derive(Default)]
struct Unusable(HashMap<u32, (String, std::time::Instant)>);

impl Unusable {
    fn get(&self, id: &u32) -> Option<&String> {
        self.0
            .get(id)
            .filter(|(_, found)| found.elapsed() < UNUSABLE_FOR)
            .map(|(reason, _)| reason)
    }

    /// Records `id`, keeping at most `MAX_UNUSABLE` ids: a producer writing
    /// random schema ids must not grow the map without end. The expired go
    /// first, then the oldest.
    fn insert(&mut self, id: u32, reason: String) {
        if self.0.len() >= MAX_UNUSABLE {
            self.0
                .retain(|_, (_, found)| found.elapsed() < UNUSABLE_FOR);
        }
        if self.0.len() >= MAX_UNUSABLE
            && let Some(oldest) = self
                .0
                .iter()
                .min_by_key(|(_, (_, found))| *found)
                .map(|(id, _)| *id)
        {
            self.0.remove(&oldest);
        }
        self.0.insert(id, (reason, std::time::Instant::now()));
    }
}

/// The decoder of one key schema. Arrow batches need a record at the top:
/// any other key schema is wrapped in a one-field record, whose binary
/// encoding is the same bytes.
struct KeyDecoder {
    schema_json: String,
    id: u32,
    wrapped: bool,
    /// Checks each key as it arrives (its rows are thrown away).
    check: Decoder,
}

impl KeyDecoder {
    fn new(id: u32, schema: &str) -> std::result::Result<KeyDecoder, String> {
        let parsed: serde_json::Value = serde_json::from_str(schema)
            .map_err(|e| format!("key schema {id} is not JSON: {e}"))?;
        let wrapped = parsed.get("type").and_then(serde_json::Value::as_str) != Some("record");
        let schema_json = if wrapped {
            serde_json::json!({"type": "record", "name": "TributaryKey",
                               "fields": [{"name": "key", "type": parsed}]})
            .to_string()
        } else {
            schema.to_string()
        };
        let check = build_decoder(id, &schema_json, DEFAULT_BATCH_ROWS)?;
        Ok(KeyDecoder {
            schema_json,
            id,
            wrapped,
            check,
        })
    }

    /// Whether `body` is one whole key of this schema.
    fn accepts(&mut self, body: &[u8]) -> std::result::Result<(), String> {
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(CONFLUENT_MAGIC);
        framed.extend_from_slice(&self.id.to_be_bytes());
        framed.extend_from_slice(body);
        let before = self.check.capacity();
        let result = self.check.decode(&framed);
        let rows = before - self.check.capacity();
        let outcome = match result {
            Ok(n) if n == framed.len() && rows == 1 => Ok(()),
            Ok(_) => Err("invalid Avro key: it does not end where its schema does".to_string()),
            Err(e) => Err(format!("invalid Avro key: {e}")),
        };
        if outcome.is_err() {
            self.check = build_decoder(self.id, &self.schema_json, DEFAULT_BATCH_ROWS)?;
        } else if self.check.batch_is_full() {
            let _ = self.check.flush();
        }
        outcome
    }

    /// The keys (framed, in order) as one column.
    fn decode(&self, keys: &[&[u8]]) -> Result<ArrayRef> {
        let broken = |message: String| AvroError::UnsupportedSchema {
            id: self.id,
            message,
        };
        let mut decoder =
            build_decoder(self.id, &self.schema_json, keys.len().max(1)).map_err(broken)?;
        if keys.is_empty() {
            let schema = decoder.schema();
            let data_type = if self.wrapped {
                schema.field(0).data_type().clone()
            } else {
                arrow::datatypes::DataType::Struct(schema.fields().clone())
            };
            return Ok(arrow::array::new_null_array(&data_type, 0));
        }
        for key in keys {
            decoder
                .decode(key)
                .map_err(|e| broken(format!("a key accepted once was refused: {e}")))?;
        }
        let batch = decoder
            .flush()
            .map_err(|e| broken(format!("a key accepted once was refused: {e}")))?
            .ok_or_else(|| broken("no keys decoded".into()))?;
        Ok(if self.wrapped {
            batch.column(0).clone()
        } else {
            Arc::new(StructArray::from(batch))
        })
    }
}

/// Decides whether the records of a writer schema (its id, its Arrow schema)
/// may be decoded; `Err(reason)` makes every record of that schema a dead letter.
pub type SchemaGate = Box<dyn FnMut(u32, &SchemaRef) -> std::result::Result<(), String> + Send>;

impl RecordDecoder {
    /// `runtime` is used to reach the registry from the (blocking) reader thread.
    pub fn new(registry: Arc<RegistryClient>, runtime: tokio::runtime::Handle) -> RecordDecoder {
        RecordDecoder {
            registry,
            runtime,
            batch_rows: DEFAULT_BATCH_ROWS,
            decoders: HashMap::new(),
            pushed: 0,
            unusable: Unusable::default(),
            out: DecodedChunk::default(),
            columns: Arc::new(RecordColumns::default()),
            gate: None,
            keys: AvroKeys::default(),
        }
    }

    /// Whether records must come with their headers (a headers column).
    pub fn wants_headers(&self) -> bool {
        self.columns.headers.is_some()
    }

    /// Asks `gate` about each writer schema before decoding its records.
    pub fn with_schema_gate(mut self, gate: SchemaGate) -> RecordDecoder {
        self.gate = Some(gate);
        self
    }

    /// Also fill these columns from each record's key, headers and position.
    pub fn with_record_columns(mut self, columns: RecordColumns) -> RecordDecoder {
        self.columns = Arc::new(columns);
        self
    }

    /// Decodes one record. Records that cannot be decoded become dead letters;
    /// an `Err` means the registry could not be reached, and the caller must
    /// discard this decoder and read the batch again.
    pub fn push(&mut self, record: &RawRecord<'_>) -> Result<()> {
        let Some(value) = record.value else {
            self.out
                .dead_letters
                .push(DeadLetter::new(record, DeadLetterReason::Tombstone));
            return Ok(());
        };
        let id = match split_frame(value) {
            Ok((id, _)) => id,
            Err(reason) => {
                let reason = DeadLetterReason::Framing(reason);
                self.out.dead_letters.push(DeadLetter::new(record, reason));
                return Ok(());
            }
        };
        if matches!(self.columns.key, Some((_, KeyFormat::Avro)))
            && let Some(key) = record.key
            && let Err(reason) = self.check_key(key)?
        {
            let reason = DeadLetterReason::Key(reason);
            self.out.dead_letters.push(DeadLetter::new(record, reason));
            return Ok(());
        }
        // One lookup for the usual record, whose writer schema is loaded;
        // a loaded schema (`load` inserts its decoder) goes round once more.
        loop {
            if let Some(decoder) = self.decoders.get_mut(&id) {
                self.pushed += 1;
                decoder.last_used = self.pushed;
                return decoder.push(record, value, &mut self.out);
            }
            if let Some(reason) = self.unusable.get(&id) {
                let reason = DeadLetterReason::Schema(reason.clone());
                self.out.dead_letters.push(DeadLetter::new(record, reason));
                return Ok(());
            }
            if let Err(reason) = self.load(id)? {
                let dead = DeadLetter::new(record, DeadLetterReason::Schema(reason.clone()));
                self.out.dead_letters.push(dead);
                self.unusable.insert(id, reason);
                return Ok(());
            }
        }
    }

    /// Fetches and compiles the schema of `id`. Outer `Err`: registry
    /// unreachable. Inner `Err`: the id's records cannot be decoded.
    fn load(&mut self, id: u32) -> Result<std::result::Result<(), String>> {
        let fetched = self.runtime.block_on(self.registry.schema_by_id(id))?;
        let Some(schema) = fetched else {
            return Ok(Err(format!(
                "unknown schema id {id}: the schema registry has no schema with this id"
            )));
        };
        if schema.schema_type != "AVRO" {
            return Ok(Err(format!(
                "schema id {id} is a {} schema; only Avro is supported",
                schema.schema_type
            )));
        }
        match SchemaDecoder::new(
            id,
            schema.schema.clone(),
            self.batch_rows,
            self.columns.clone(),
        ) {
            Ok(d) => {
                if let Some(gate) = &mut self.gate
                    && let Err(reason) = gate(id, &d.decoder.schema())
                {
                    return Ok(Err(reason));
                }
                self.make_room()?;
                self.decoders.insert(id, d);
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(format!("schema id {id} cannot be decoded: {e}"))),
        }
    }

    /// Decodes the records of writer schema `id` with `schema_json` without
    /// asking the registry (the fuzz targets have none).
    pub fn preload(&mut self, id: u32, schema_json: &str) -> Result<()> {
        let decoder = SchemaDecoder::new(
            id,
            schema_json.to_string(),
            self.batch_rows,
            self.columns.clone(),
        )
        .map_err(|message| AvroError::UnsupportedSchema { id, message })?;
        self.make_room()?;
        self.decoders.insert(id, decoder);
        Ok(())
    }

    /// Flushes and drops the least recently used decoder when there are
    /// `MAX_SCHEMA_DECODERS`.
    fn make_room(&mut self) -> Result<()> {
        if self.decoders.len() < MAX_SCHEMA_DECODERS {
            return Ok(());
        }
        let oldest = self
            .decoders
            .iter()
            .min_by_key(|(_, d)| d.last_used)
            .map(|(id, _)| *id);
        if let Some(mut decoder) = oldest.and_then(|id| self.decoders.remove(&id)) {
            decoder.flush(&mut self.out)?;
        }
        Ok(())
    }

    /// Everything decoded since the last call: flushes every decoder.
    pub fn finish(&mut self) -> Result<DecodedChunk> {
        for decoder in self.decoders.values_mut() {
            decoder.flush(&mut self.out)?;
        }
        let mut chunk = std::mem::take(&mut self.out);
        chunk.batches = self.attach_keys(std::mem::take(&mut chunk.batches))?;
        Ok(chunk)
    }

    /// Arrow batches completed so far (each decoder flushes when full);
    /// dead letters stay until `finish`.
    pub fn take_batches(&mut self) -> Result<Vec<RecordBatch>> {
        let batches = std::mem::take(&mut self.out.batches);
        self.attach_keys(batches)
    }

    /// Whether an Avro key is one this decoder can read. Outer `Err`: the
    /// registry could not be reached.
    fn check_key(&mut self, key: &[u8]) -> Result<std::result::Result<(), String>> {
        let (id, body) = match split_frame(key) {
            Ok(frame) => frame,
            Err(reason) => return Ok(Err(format!("Avro key: {reason}"))),
        };
        if let Some(reason) = self.keys.unusable.get(&id) {
            return Ok(Err(reason.clone()));
        }
        if !self.keys.decoders.contains_key(&id) {
            let fetched = self.runtime.block_on(self.registry.schema_by_id(id))?;
            let loaded = match fetched {
                None => Err(format!(
                    "unknown key schema id {id}: the registry has no schema with this id"
                )),
                Some(s) if s.schema_type != "AVRO" => Err(format!(
                    "key schema id {id} is a {} schema; only Avro is supported",
                    s.schema_type
                )),
                Some(s) => KeyDecoder::new(id, &s.schema),
            };
            match loaded {
                Ok(decoder) => {
                    self.keys.decoders.insert(id, decoder);
                }
                Err(reason) => {
                    self.keys.unusable.insert(id, reason.clone());
                    return Ok(Err(reason));
                }
            }
        }
        Ok(self
            .keys
            .decoders
            .get_mut(&id)
            .map_or_else(|| Err("key decoder vanished".into()), |d| d.accepts(body)))
    }

    /// Replaces the raw key column by the decoded keys. A batch whose keys
    /// use several key schemas is cut into runs of one schema each.
    fn attach_keys(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let Some((name, KeyFormat::Avro)) = &self.columns.key else {
            return Ok(batches);
        };
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let index = batch.schema().index_of(name)?;
            let raw = batch.column(index).as_binary::<i32>().clone();
            let key_id = |i: usize| {
                (raw.is_valid(i))
                    .then(|| split_frame(raw.value(i)).ok().map(|(id, _)| id))
                    .flatten()
            };
            // Runs of rows sharing a key schema; null keys join the run they are in.
            let mut start = 0;
            let mut run_id = (0..raw.len()).find_map(key_id);
            for i in 0..=raw.len() {
                let next = if i < raw.len() { key_id(i) } else { None };
                let ends = i == raw.len() || next.is_some_and(|id| Some(id) != run_id);
                if !ends {
                    continue;
                }
                if i > start {
                    out.push(self.decoded_run(&batch, index, &raw, start, i, run_id)?);
                }
                start = i;
                run_id = next.or(run_id);
            }
        }
        Ok(out)
    }

    fn decoded_run(
        &self,
        batch: &RecordBatch,
        index: usize,
        raw: &arrow::array::BinaryArray,
        start: usize,
        end: usize,
        key_id: Option<u32>,
    ) -> Result<RecordBatch> {
        use arrow::array::UInt32Array;
        use arrow::datatypes::{Field, Schema};
        let slice = batch.slice(start, end - start);
        let Some(decoder) = key_id.and_then(|id| self.keys.decoders.get(&id)) else {
            // No key at all: without a key schema there is no type, so the
            // column is left out and reads as null.
            return Ok(slice.project(
                &(0..slice.num_columns())
                    .filter(|&i| i != index)
                    .collect::<Vec<_>>(),
            )?);
        };
        let present: Vec<&[u8]> = (start..end)
            .filter(|&i| raw.is_valid(i))
            .map(|i| raw.value(i))
            .collect();
        let decoded = decoder.decode(&present)?;
        // Null keys stay null: row i takes the next decoded key, or none.
        let mut next = 0u32;
        let positions: UInt32Array = (start..end)
            .map(|i| {
                raw.is_valid(i).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let column = arrow::compute::take(&decoded, &positions, None)?;
        let mut fields: Vec<Arc<Field>> = slice.schema().fields().iter().cloned().collect();
        let mut columns = slice.columns().to_vec();
        fields[index] = Arc::new(Field::new(
            fields[index].name(),
            column.data_type().clone(),
            true,
        ));
        columns[index] = column;
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// Whether `take_batches` has anything.
    pub fn has_batches(&self) -> bool {
        !self.out.batches.is_empty()
    }
}

/// Arrow schema of an Avro schema, as the decoder produces it.
pub fn arrow_schema_of(schema_json: &str) -> Result<SchemaRef> {
    build_decoder(0, schema_json, 1)
        .map(|d| d.schema())
        .map_err(|message| AvroError::UnsupportedSchema { id: 0, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_schema_id_is_asked_again_after_a_while() {
        let mut unusable = Unusable::default();
        unusable.insert(7, "unknown schema id 7".into());
        assert_eq!(
            unusable.get(&7).map(String::as_str),
            Some("unknown schema id 7")
        );
        let long_ago = std::time::Instant::now() - UNUSABLE_FOR;
        unusable
            .0
            .insert(7, ("unknown schema id 7".into(), long_ago));
        assert_eq!(unusable.get(&7), None);
        assert_eq!(unusable.get(&8), None);
    }

    #[test]
    fn random_schema_ids_do_not_grow_the_unusable_map() {
        let mut unusable = Unusable::default();
        for id in 0..10 * MAX_UNUSABLE as u32 {
            unusable.insert(id, format!("unknown schema id {id}"));
        }
        assert_eq!(unusable.0.len(), MAX_UNUSABLE);
        // The newest are kept.
        assert!(unusable.get(&(10 * MAX_UNUSABLE as u32 - 1)).is_some());
    }

    /// A decoder whose registry never answers (schemas are preloaded), and
    /// the runtime it runs on.
    fn offline_decoder() -> (RecordDecoder, tokio::runtime::Runtime) {
        let registry = Arc::new(
            RegistryClient::new(crate::RegistryConfig {
                url: "http://127.0.0.1:9".into(),
                ..Default::default()
            })
            .unwrap(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (
            RecordDecoder::new(registry, runtime.handle().clone()),
            runtime,
        )
    }

    #[test]
    fn uuid_strings_are_kept_as_written_as_spark_reads_them() {
        let (mut decoder, _runtime) = offline_decoder();
        let schema = r#"{"type": "record", "name": "R", "fields": [
            {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "v", "type": ["null", {"type": "string", "logicalType": "uuid"}]}]}"#;
        decoder.preload(3, schema).unwrap();
        let written = [
            "00010203-0405-0607-0809-0a0b0c0d0e0f",
            "A0B1C2D3-E4F5-4061-8293-A4B5C6D7E8F9",
            "000102030405060708090a0b0c0d0e0f",
            "not a uuid",
        ];
        let framed: Vec<Vec<u8>> = written
            .iter()
            .map(|u| {
                let mut body = vec![CONFLUENT_MAGIC, 0, 0, 0, 3];
                for branch in [None, Some(2)] {
                    body.extend(branch); // the union's second branch, zig-zag
                    body.push((u.len() * 2) as u8); // zig-zag length, < 64
                    body.extend_from_slice(u.as_bytes());
                }
                body
            })
            .collect();
        for (offset, value) in framed.iter().enumerate() {
            let record = RawRecord {
                partition: 0,
                offset: offset as i64,
                timestamp_ms: None,
                key: None,
                value: Some(value),
                headers: None,
            };
            decoder.push(&record).unwrap();
        }
        let chunk = decoder.finish().unwrap();
        assert!(chunk.dead_letters.is_empty(), "{:?}", chunk.dead_letters);
        for column in 0..2 {
            let read: Vec<&str> = chunk
                .batches
                .iter()
                .flat_map(|b| {
                    let values = b.column(column).as_string::<i32>();
                    values.iter().map(Option::unwrap)
                })
                .collect();
            assert_eq!(read, written);
        }
    }

    #[test]
    fn a_default_that_looks_like_a_uuid_type_is_data_and_kept() {
        let mut schema = serde_json::json!({"type": "record", "name": "R", "fields": [
            {"name": "p", "type": {"type": "record", "name": "P", "fields": [
                {"name": "type", "type": "string"},
                {"name": "logicalType", "type": "string"}]},
             "default": {"type": "string", "logicalType": "uuid"}}]});
        uuid_strings_as_strings(&mut schema);
        assert_eq!(
            schema["fields"][0]["default"],
            serde_json::json!({"type": "string", "logicalType": "uuid"})
        );
    }

    #[test]
    fn the_least_recently_used_schema_decoder_makes_room() {
        let (mut decoder, _runtime) = offline_decoder();
        let schema =
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}"#;
        for id in 0..MAX_SCHEMA_DECODERS as u32 + 5 {
            decoder.make_room().unwrap();
            let mut d = SchemaDecoder::new(id, schema.into(), 8, Arc::default()).unwrap();
            // Id 0 is used last of all; the others in order.
            d.last_used = if id == 0 { u64::MAX } else { u64::from(id) };
            decoder.decoders.insert(id, d);
        }
        assert_eq!(decoder.decoders.len(), MAX_SCHEMA_DECODERS);
        assert!(decoder.decoders.contains_key(&0));
        assert!((1..=5).all(|id| !decoder.decoders.contains_key(&id)));
    }
}
