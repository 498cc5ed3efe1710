//! Writes a batch's rows as Parquet data files (one or more per partition)
//! and describes them as Delta `add` actions with statistics.
//!
//! Every file's name is announced to `FileIntent` before the file is
//! written, so files of an attempt that never committed can be found and
//! removed on recovery.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deltalake::ObjectStore;
use deltalake::Path;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{cast, take_record_batch};
use deltalake::arrow::datatypes::{DataType, Schema};
use deltalake::kernel::Add;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use object_store::ObjectStoreExt as _;
use serde_json::{Map, Value, json};

use crate::error::{DeltaSinkError, Result};

/// Records the names of data files before they are written.
pub trait FileIntent: Send + Sync {
    /// Durably notes that `path` (relative to the table root) is about to be
    /// written. Called before every file.
    fn announce(&self, table_uri: &str, path: &str) -> std::io::Result<()>;
}

/// Parquet settings of data files.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

/// Rows of one partition.
struct PartitionRows {
    /// (column, value) pairs; `None` is a null partition value.
    values: Vec<(String, Option<String>)>,
    batches: Vec<RecordBatch>,
}

/// Writes `batches` (which include the partition columns) as data files named
/// `part-<name>-<n>.snappy.parquet` under Hive-style partition directories.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_data_files(
    store: Arc<dyn ObjectStore>,
    table_uri: &str,
    batches: Vec<RecordBatch>,
    partition_columns: &[String],
    name: &str,
    target_file_size: u64,
    intent: &dyn FileIntent,
) -> Result<Vec<Add>> {
    let groups = split_by_partition(batches, partition_columns)?;
    let mut adds = Vec::new();
    let mut n = 0usize;
    for group in groups {
        let dir: String = group
            .values
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
        let partition_values: HashMap<String, Option<String>> =
            group.values.iter().cloned().collect();
        // Encoding is CPU work: off the async workers.
        let encoded = tokio::task::spawn_blocking(move || encode(group.batches, target_file_size))
            .await
            .map_err(|e| DeltaSinkError::Corrupt {
                uri: String::new(),
                message: format!("encoder task failed: {e}"),
            })??;
        for file in encoded {
            let path = format!("{dir}part-{name}-{n:05}.snappy.parquet");
            n += 1;
            intent
                .announce(table_uri, &path)
                .map_err(|e| DeltaSinkError::Corrupt {
                    uri: table_uri.to_string(),
                    message: format!("cannot record the data file about to be written: {e}"),
                })?;
            let size = file.bytes.len() as i64;
            store
                .put(&Path::from(path.as_str()), file.bytes.into())
                .await
                .map_err(|e| DeltaSinkError::delta(table_uri, e.into()))?;
            adds.push(Add {
                path: encode_log_path(&path),
                partition_values: partition_values.clone(),
                size,
                modification_time: chrono::Utc::now().timestamp_millis(),
                data_change: true,
                stats: Some(file.stats),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
                clustering_provider: None,
            });
        }
    }
    Ok(adds)
}

struct EncodedFile {
    bytes: Vec<u8>,
    stats: String,
}

/// Encodes rows into files of about `target_file_size` bytes.
fn encode(batches: Vec<RecordBatch>, target_file_size: u64) -> Result<Vec<EncodedFile>> {
    let mut files = Vec::new();
    let Some(first) = batches.first() else {
        return Ok(files);
    };
    let schema = first.schema();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))
        .map_err(parquet_err)?;
    let mut stats = StatsBuilder::new(&schema);
    for batch in &batches {
        writer.write(batch).map_err(parquet_err)?;
        stats.add(batch);
        if (writer.bytes_written() + writer.in_progress_size()) as u64 >= target_file_size {
            let done = std::mem::replace(
                &mut writer,
                ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))
                    .map_err(parquet_err)?,
            );
            files.push(EncodedFile {
                bytes: done.into_inner().map_err(parquet_err)?,
                stats: stats.finish(),
            });
            stats = StatsBuilder::new(&schema);
        }
    }
    if stats.rows > 0 {
        files.push(EncodedFile {
            bytes: writer.into_inner().map_err(parquet_err)?,
            stats: stats.finish(),
        });
    }
    Ok(files)
}

fn parquet_err(e: deltalake::parquet::errors::ParquetError) -> DeltaSinkError {
    DeltaSinkError::Corrupt {
        uri: String::new(),
        message: format!("Parquet encoding failed: {e}"),
    }
}

/// Splits rows by the values of the partition columns (removed from the
/// rows), in a stable order of partition values.
fn split_by_partition(
    batches: Vec<RecordBatch>,
    partition_columns: &[String],
) -> Result<Vec<PartitionRows>> {
    if partition_columns.is_empty() {
        return Ok(vec![PartitionRows {
            values: vec![],
            batches,
        }]);
    }
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches {
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
        // Most batches hold one partition (one day, one hour): no per-row work then.
        let uniform =
            (1..batch.num_rows()).all(|i| keys.iter().all(|k| value(k, i) == value(k, 0)));
        if uniform {
            if batch.num_rows() > 0 {
                let key = keys
                    .iter()
                    .map(|k| value(k, 0).map(str::to_string))
                    .collect();
                groups.entry(key).or_default().push(data);
            }
            continue;
        }
        let mut rows: HashMap<Vec<Option<&str>>, Vec<u32>> = HashMap::new();
        for i in 0..batch.num_rows() {
            rows.entry(keys.iter().map(|k| value(k, i)).collect())
                .or_default()
                .push(i as u32);
        }
        for (key, indices) in rows {
            let taken = take_record_batch(&data, &UInt32Array::from(indices))?;
            groups
                .entry(key.into_iter().map(|v| v.map(str::to_string)).collect())
                .or_default()
                .push(taken);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(key, batches)| PartitionRows {
            values: partition_columns.iter().cloned().zip(key).collect(),
            batches,
        })
        .collect())
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
fn encode_log_path(path: &str) -> String {
    path.replace('%', "%25").replace(' ', "%20")
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
        let groups = split_by_partition(vec![batch], &["region".to_string()]).unwrap();
        let described: Vec<(Option<String>, usize, usize)> = groups
            .iter()
            .map(|g| {
                (
                    g.values[0].1.clone(),
                    g.batches.iter().map(|b| b.num_rows()).sum(),
                    g.batches[0].num_columns(),
                )
            })
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
    }
}
