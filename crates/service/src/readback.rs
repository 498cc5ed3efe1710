//! Reads a Delta table back through its snapshot and Parquet files, for the
//! demo's closing query (the tests use DuckDB and Python deltalake instead).

use std::collections::HashMap;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub struct TableSummary {
    pub version: u64,
    pub files: usize,
    pub rows: u64,
    pub distinct_values: usize,
    /// Most frequent values of the grouped column, with counts.
    pub top: Vec<(String, u64)>,
}

/// Counts rows and groups by a string column; `distinct_of` counts distinct values of another.
pub async fn summarize(
    uri: &str,
    group_by: &str,
    distinct_of: &str,
) -> anyhow::Result<TableSummary> {
    let url = deltalake::ensure_table_uri(uri)?;
    let table = deltalake::open_table(url).await?;
    let version = table.version().unwrap_or(0);
    let files: Vec<String> = table.get_file_uris()?.collect();
    let mut rows = 0u64;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut distinct = std::collections::HashSet::new();
    for file in &files {
        let path = file.strip_prefix("file://").unwrap_or(file);
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            if let Some(col) = batch.column_by_name(group_by) {
                let col = deltalake::arrow::compute::cast(
                    col,
                    &deltalake::arrow::datatypes::DataType::Utf8,
                )?;
                for v in col.as_string::<i32>().iter().flatten() {
                    *counts.entry(v.to_string()).or_default() += 1;
                }
            }
            if let Some(col) = batch.column_by_name(distinct_of) {
                let col = deltalake::arrow::compute::cast(
                    col,
                    &deltalake::arrow::datatypes::DataType::Utf8,
                )?;
                let col = col.as_string::<i32>();
                for i in 0..col.len() {
                    if col.is_valid(i) {
                        distinct.insert(col.value(i).to_string());
                    }
                }
            }
        }
    }
    let mut top: Vec<(String, u64)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(5);
    Ok(TableSummary {
        version,
        files: files.len(),
        rows,
        distinct_values: distinct.len(),
        top,
    })
}
