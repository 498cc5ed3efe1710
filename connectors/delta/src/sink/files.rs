//! Writes a batch's rows as Parquet data files (one or more per partition)
//! and describes them as Delta `add` actions with statistics.
//!
//! Every file's name is announced to `FileIntent` before the file is
//! written, so files of an attempt that never committed can be found and
//! removed on recovery.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::DeltaTableError;
use deltalake::ObjectStore;
use deltalake::Path;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{cast, take_record_batch};
use deltalake::arrow::datatypes::{DataType, Schema, SchemaRef};
use deltalake::kernel::Add;
use deltalake::logstore::LogStoreRef;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use object_store::ObjectStoreExt as _;
use serde_json::{Map, Value, json};

use crate::error::{DeltaSinkError, Result};

/// Records the names of data files before they are written.
#[async_trait::async_trait]
pub trait FileIntent: Send + Sync {
    /// Durably notes that `path` (relative to the table root) is about to be
    /// written. Called before every file.
    async fn announce(&self, table_uri: &str, path: &str) -> std::io::Result<()>;
}

/// Parquet settings of data files.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

/// Encodes the rows of one batch into Parquet files as they arrive: one open
/// file per partition, closed and a new one started at the target size. Pure
/// CPU work with no I/O, so it can run on its own thread beside the reader.
pub struct BatchEncoder {
    partition_columns: Vec<String>,
    target_file_size: u64,
    open: BTreeMap<Vec<Option<String>>, OpenFile>,
    done: Vec<EncodedFile>,
    schema: Option<SchemaRef>,
    rows: u64,
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    stats: StatsBuilder,
}

/// One finished data file, not yet uploaded.
pub struct EncodedFile {
    /// (column, value) of its partition; `None` is a null value.
    pub partition_values: Vec<(String, Option<String>)>,
    pub bytes: Vec<u8>,
    /// Delta statistics JSON.
    pub stats: String,
}

/// The encoded rows of a batch.
pub struct EncodedBatch {
    pub files: Vec<EncodedFile>,
    pub rows: u64,
    /// Schema of the rows (partition columns included); `None` without rows.
    pub schema: Option<SchemaRef>,
}

impl BatchEncoder {
    pub fn new(partition_columns: Vec<String>, target_file_size: u64) -> BatchEncoder {
        BatchEncoder {
            partition_columns,
            target_file_size,
            open: BTreeMap::new(),
            done: Vec::new(),
            schema: None,
            rows: 0,
        }
    }

    /// Encodes rows (partition columns included). When the schema evolves
    /// within the batch, the open files are closed: a file holds one schema,
    /// and readers see the columns an older file lacks as null.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.schema.as_ref().is_some_and(|s| *s != batch.schema()) {
            for (key, file) in std::mem::take(&mut self.open) {
                self.close(key, file)?;
            }
        }
        self.schema = Some(batch.schema());
        for (key, rows) in split_by_partition(batch, &self.partition_columns)? {
            self.push_partition(key, &rows)?;
        }
        Ok(())
    }

    /// Encodes rows of one partition (`key`: its values, in the order of the
    /// partition columns); `rows` hold no partition columns.
    pub fn push_partition(&mut self, key: Vec<Option<String>>, rows: &RecordBatch) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        self.rows += rows.num_rows() as u64;
        let file = match self.open.entry(key.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let schema = rows.schema();
                e.insert(OpenFile {
                    writer: ArrowWriter::try_new(
                        Vec::new(),
                        schema.clone(),
                        Some(writer_properties()),
                    )
                    .map_err(parquet_err)?,
                    stats: StatsBuilder::new(&schema),
                })
            }
        };
        file.writer.write(rows).map_err(parquet_err)?;
        file.stats.add(rows);
        if (file.writer.bytes_written() + file.writer.in_progress_size()) as u64
            >= self.target_file_size
            && let Some(full) = self.open.remove(&key)
        {
            self.close(key, full)?;
        }
        Ok(())
    }

    fn close(&mut self, key: Vec<Option<String>>, file: OpenFile) -> Result<()> {
        self.done.push(EncodedFile {
            partition_values: self.partition_columns.iter().cloned().zip(key).collect(),
            stats: file.stats.finish(),
            bytes: file.writer.into_inner().map_err(parquet_err)?,
        });
        Ok(())
    }

    /// Closes every open file.
    pub fn finish(mut self) -> Result<EncodedBatch> {
        for (key, file) in std::mem::take(&mut self.open) {
            self.close(key, file)?;
        }
        Ok(EncodedBatch {
            files: self.done,
            rows: self.rows,
            schema: self.schema,
        })
    }
}

/// Uploads encoded files as `part-<name>-<n>.snappy.parquet` under
/// Hive-style partition directories, announcing each before it is written,
/// and returns their `add` actions.
pub(crate) async fn upload_files(
    store: Arc<dyn ObjectStore>,
    table_uri: &str,
    files: Vec<EncodedFile>,
    name: &str,
    intent: &dyn FileIntent,
    data_change: bool,
) -> Result<Vec<Add>> {
    let mut adds = Vec::with_capacity(files.len());
    for (n, file) in files.into_iter().enumerate() {
        let dir: String = file
            .partition_values
            .iter()
            .map(|(c, v)| {
                format!(
                    "{c}={}/",
                    v.as_deref()
                        .map(escape_partition_value)
                        .unwrap_or_else(|| "__HIVE_DEFAULT_PARTITION__".into())
                )
            })
            .collect();
        let path = format!("{dir}part-{name}-{n:05}.snappy.parquet");
        intent
            .announce(table_uri, &path)
            .await
            .map_err(|source| DeltaSinkError::Announce {
                uri: table_uri.to_string(),
                source,
            })?;
        let size = file.bytes.len() as i64;
        store
            .put(&Path::from(path.as_str()), file.bytes.into())
            .await
            .map_err(|e| DeltaSinkError::delta(table_uri, e.into()))?;
        adds.push(Add {
            path: encode_log_path(&path),
            partition_values: file.partition_values.into_iter().collect(),
            size,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change,
            stats: Some(file.stats),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        });
    }
    Ok(adds)
}

/// Encodes rows on a blocking thread.
pub(crate) async fn encode(
    batches: Vec<RecordBatch>,
    partition_columns: Vec<String>,
    target_file_size: u64,
) -> Result<EncodedBatch> {
    tokio::task::spawn_blocking(move || {
        let mut encoder = BatchEncoder::new(partition_columns, target_file_size);
        for b in &batches {
            encoder.push(b)?;
        }
        encoder.finish()
    })
    .await
    .map_err(|e| DeltaSinkError::Corrupt {
        uri: String::new(),
        message: format!("encoder task failed: {e}"),
    })?
}

pub(crate) fn parquet_err(e: deltalake::parquet::errors::ParquetError) -> DeltaSinkError {
    DeltaSinkError::Corrupt {
        uri: String::new(),
        message: format!("Parquet encoding failed: {e}"),
    }
}

/// Splits a batch by the values of its partition columns (removed from the
/// rows), in the order of partition values.
fn split_by_partition(
    batch: &RecordBatch,
    partition_columns: &[String],
) -> Result<Vec<(Vec<Option<String>>, RecordBatch)>> {
    if partition_columns.is_empty() {
        return Ok(vec![(vec![], batch.clone())]);
    }
    let keys: Vec<ArrayRef> = partition_columns
        .iter()
        .map(|c| {
            let col = batch.column_by_name(c).ok_or_else(|| {
                deltalake::arrow::error::ArrowError::SchemaError(format!(
                    "partition column {c} missing from batch"
                ))
            })?;
            Ok::<_, DeltaSinkError>(cast(col, &DataType::Utf8)?)
        })
        .collect::<Result<_>>()?;
    let keys: Vec<_> = keys.iter().map(|k| k.as_string::<i32>()).collect();
    let data_indices: Vec<usize> = (0..batch.num_columns())
        .filter(|i| !partition_columns.contains(batch.schema().field(*i).name()))
        .collect();
    let data = batch.project(&data_indices)?;
    let key_of = |i: usize| -> Vec<Option<String>> {
        keys.iter()
            .map(|k| value(k, i).map(str::to_string))
            .collect()
    };
    // Most batches hold one partition (one day, one hour): no per-row work then.
    if (1..batch.num_rows()).all(|i| keys.iter().all(|k| value(k, i) == value(k, 0))) {
        return Ok(vec![(key_of(0), data)]);
    }
    let mut rows: BTreeMap<Vec<Option<&str>>, Vec<u32>> = BTreeMap::new();
    for i in 0..batch.num_rows() {
        rows.entry(keys.iter().map(|k| value(k, i)).collect())
            .or_default()
            .push(i as u32);
    }
    rows.into_iter()
        .map(|(key, indices)| {
            let taken = take_record_batch(&data, &UInt32Array::from(indices))?;
            Ok((
                key.into_iter().map(|v| v.map(str::to_string)).collect(),
                taken,
            ))
        })
        .collect()
}

/// The value of row `i`, `None` when null.
fn value(k: &deltalake::arrow::array::StringArray, i: usize) -> Option<&str> {
    k.is_valid(i).then(|| k.value(i))
}

/// Hive-style escaping of a partition value in a directory name.
fn escape_partition_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b' ') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Paths in the Delta log are URIs: the escapes of the directory names are
/// themselves escaped.
/// The object paths of an attempt's added files.
pub(crate) fn object_paths<'a>(adds: impl IntoIterator<Item = &'a Add>) -> Vec<Path> {
    adds.into_iter()
        .map(|a| Path::from(decode_log_path(&a.path).as_str()))
        .collect()
}

/// The version after `read_version` whose commit added the files of an
/// attempt (`attempt`: their object paths), if any; `None` for an attempt
/// without files. A commit answered with an error may have landed all the
/// same: object_store retries the log PUT after a 5xx, and when the first
/// try had been written the retry is refused as a conflict with that very
/// commit. Attempts' file names are unique, so a commit that adds one of
/// them is the attempt's own.
pub(crate) async fn version_that_added(
    log_store: &LogStoreRef,
    read_version: Option<u64>,
    attempt: &[Path],
) -> std::result::Result<Option<u64>, DeltaTableError> {
    let Some(probe) = attempt.first() else {
        return Ok(None);
    };
    let mut version = read_version.map_or(0, |v| v + 1);
    while let Some(bytes) = log_store.read_commit_entry(version).await? {
        if added_paths(&bytes).any(|path| path == probe.as_ref()) {
            return Ok(Some(version));
        }
        version += 1;
    }
    Ok(None)
}

/// The data file paths (decoded) that a log commit's `add` actions name.
pub(crate) fn added_paths(commit: &[u8]) -> impl Iterator<Item = String> + '_ {
    commit
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter_map(|action| {
            action
                .get("add")
                .and_then(|a| a.get("path"))
                .and_then(Value::as_str)
                .map(decode_log_path)
        })
}

/// Deletes the files of an attempt that will never be committed: nobody
/// else knows them. A file that cannot be deleted is left to vacuum.
/// Callers first rule out that the attempt landed (`version_that_added`).
pub(crate) async fn delete_attempt(
    store: &Arc<dyn ObjectStore>,
    uri: &str,
    paths: &[Path],
    attempt: &str,
) {
    for path in paths {
        if let Err(e) = store.delete(path).await {
            tracing::warn!(table = %uri, path = %path, error = %e, "cannot delete a file of {attempt}; vacuum will");
        }
    }
}

pub(crate) fn encode_log_path(path: &str) -> String {
    path.replace('%', "%25").replace(' ', "%20")
}

/// The inverse of `encode_log_path`.
pub(crate) fn decode_log_path(path: &str) -> String {
    path.replace("%20", " ").replace("%25", "%")
}

/// Delta file statistics (`numRecords`, `minValues`, `maxValues`,
/// `nullCount`) for top-level columns. Bounds are conservative: a
/// timestamp's minimum is rounded down and maximum up to the millisecond
/// (the precision of the stats format), and long strings get no maximum.
struct StatsBuilder {
    schema: Arc<Schema>,
    rows: u64,
    nulls: Vec<u64>,
    min: Vec<Option<Value>>,
    max: Vec<Option<Value>>,
    /// Columns whose bounds cannot be kept (NaN, long strings): no min/max.
    unbounded: Vec<bool>,
}

const STRING_STATS_PREFIX: usize = 32;

impl StatsBuilder {
    fn new(schema: &Arc<Schema>) -> StatsBuilder {
        let n = schema.fields().len();
        StatsBuilder {
            schema: schema.clone(),
            rows: 0,
            nulls: vec![0; n],
            min: vec![None; n],
            max: vec![None; n],
            unbounded: vec![false; n],
        }
    }

    fn add(&mut self, batch: &RecordBatch) {
        use deltalake::arrow::compute::{max, max_string, min, min_string};
        use deltalake::arrow::datatypes::*;
        self.rows += batch.num_rows() as u64;
        for (i, col) in batch.columns().iter().enumerate() {
            self.nulls[i] += col.null_count() as u64;
            if self.unbounded[i] || col.null_count() == col.len() {
                continue;
            }
            let (lo, hi): (Option<Value>, Option<Value>) = match col.data_type() {
                DataType::Int32 => (
                    min(col.as_primitive::<Int32Type>()).map(Value::from),
                    max(col.as_primitive::<Int32Type>()).map(Value::from),
                ),
                DataType::Int64 => (
                    min(col.as_primitive::<Int64Type>()).map(Value::from),
                    max(col.as_primitive::<Int64Type>()).map(Value::from),
                ),
                DataType::Float32 | DataType::Float64 => {
                    let c = cast(col, &DataType::Float64).ok();
                    let c = c.as_ref().map(|c| c.as_primitive::<Float64Type>());
                    match c {
                        Some(c) if !c.iter().flatten().any(f64::is_nan) => {
                            (min(c).map(Value::from), max(c).map(Value::from))
                        }
                        _ => {
                            self.unbounded[i] = true;
                            (None, None)
                        }
                    }
                }
                DataType::Date32 => {
                    let c = col.as_primitive::<Date32Type>();
                    let day = |d: i32| {
                        Date32Type::to_naive_date_opt(d)
                            .map(|d| Value::from(d.format("%Y-%m-%d").to_string()))
                    };
                    (min(c).and_then(day), max(c).and_then(day))
                }
                DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                    let c = col.as_primitive::<TimestampMicrosecondType>();
                    let utc = tz.is_some();
                    (
                        min(c).map(|v| timestamp_value(v.div_euclid(1000), utc)),
                        max(c).map(|v| timestamp_value((v + 999).div_euclid(1000), utc)),
                    )
                }
                DataType::Utf8 => {
                    let c = col.as_string::<i32>();
                    let lo = min_string(c).map(|s| {
                        Value::from(s.chars().take(STRING_STATS_PREFIX).collect::<String>())
                    });
                    let hi = max_string(c)
                        .filter(|s| s.chars().count() <= STRING_STATS_PREFIX)
                        .map(Value::from);
                    if hi.is_none() {
                        self.unbounded[i] = true;
                    }
                    (lo, hi)
                }
                _ => (None, None),
            };
            merge(&mut self.min[i], lo, std::cmp::Ordering::Less);
            merge(&mut self.max[i], hi, std::cmp::Ordering::Greater);
        }
    }

    fn finish(&self) -> String {
        let mut min = Map::new();
        let mut max = Map::new();
        let mut nulls = Map::new();
        for (i, f) in self.schema.fields().iter().enumerate() {
            // Nested columns would need nested statistics; readers skip
            // columns without any, so they get none.
            if f.data_type().is_nested() {
                continue;
            }
            nulls.insert(f.name().clone(), json!(self.nulls[i]));
            if self.unbounded[i] {
                continue;
            }
            if let (Some(lo), Some(hi)) = (&self.min[i], &self.max[i]) {
                min.insert(f.name().clone(), lo.clone());
                max.insert(f.name().clone(), hi.clone());
            }
        }
        json!({"numRecords": self.rows, "minValues": min, "maxValues": max, "nullCount": nulls})
            .to_string()
    }
}

fn timestamp_value(millis: i64, utc: bool) -> Value {
    let t = chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default();
    let fmt = if utc {
        "%Y-%m-%dT%H:%M:%S%.3fZ"
    } else {
        "%Y-%m-%dT%H:%M:%S%.3f"
    };
    Value::from(t.naive_utc().format(fmt).to_string())
}

/// Keeps the smaller (`Less`) or larger (`Greater`) of two bounds.
fn merge(current: &mut Option<Value>, candidate: Option<Value>, keep: std::cmp::Ordering) {
    let Some(c) = candidate else { return };
    let better = match (&*current, &c) {
        (None, _) => true,
        (Some(Value::Number(a)), Value::Number(b)) => {
            b.as_f64()
                .zip(a.as_f64())
                .and_then(|(b, a)| b.partial_cmp(&a))
                == Some(keep)
        }
        (Some(Value::String(a)), Value::String(b)) => b.cmp(a) == keep,
        _ => false,
    };
    if better {
        *current = Some(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{Field, TimeUnit};

    #[test]
    fn stats_bound_every_value_conservatively() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(5), None, Some(-3)])),
                Arc::new(StringArray::from(vec!["b", "a", "c"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_000_500, 2_000_001, 1_500_000])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let mut stats = StatsBuilder::new(&schema);
        stats.add(&batch);
        let v: Value = serde_json::from_str(&stats.finish()).unwrap();
        assert_eq!(v["numRecords"], 3);
        assert_eq!(v["nullCount"]["n"], 1);
        assert_eq!(v["minValues"]["n"], -3);
        assert_eq!(v["maxValues"]["n"], 5);
        assert_eq!(v["minValues"]["s"], "a");
        assert_eq!(v["maxValues"]["s"], "c");
        assert_eq!(v["minValues"]["ts"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["maxValues"]["ts"], "1970-01-01T00:00:02.001Z");
    }

    #[test]
    fn rows_split_by_partition_values_without_partition_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("region", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("eu"),
                    Some("us/west"),
                    Some("eu"),
                    None,
                ])),
            ],
        )
        .unwrap();
        let groups = split_by_partition(&batch, &["region".to_string()]).unwrap();
        let described: Vec<(Option<String>, usize, usize)> = groups
            .iter()
            .map(|(k, b)| (k[0].clone(), b.num_rows(), b.num_columns()))
            .collect();
        assert_eq!(
            described,
            vec![
                (None, 1, 1),
                (Some("eu".into()), 2, 1),
                (Some("us/west".into()), 1, 1)
            ]
        );
        assert_eq!(escape_partition_value("us/west"), "us%2Fwest");
        assert_eq!(
            encode_log_path("region=us%2Fwest/part-x.parquet"),
            "region=us%252Fwest/part-x.parquet"
        );

        // The encoder keeps one file per partition and closes them at the end.
        let mut encoder = BatchEncoder::new(vec!["region".into()], 1 << 20);
        encoder.push(&batch).unwrap();
        encoder.push(&batch).unwrap();
        let encoded = encoder.finish().unwrap();
        assert_eq!(encoded.rows, 8);
        assert_eq!(encoded.files.len(), 3);
        let stats: Vec<Value> = encoded
            .files
            .iter()
            .map(|f| serde_json::from_str(&f.stats).unwrap())
            .collect();
        assert_eq!(
            stats
                .iter()
                .map(|s| s["numRecords"].as_u64().unwrap())
                .sum::<u64>(),
            8
        );
    }
}
