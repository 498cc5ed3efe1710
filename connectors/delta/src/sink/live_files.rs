//! The live data files of a table and reading them back, shaped as the
//! table's current schema: update mode's MERGE rewrites files with them,
//! and compaction bin-packs them.

use std::sync::Arc;

use bytes::Bytes;
use deltalake::Path;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray, new_null_array};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Schema, SchemaRef};
use deltalake::kernel::Remove;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::ObjectStoreExt as _;

use crate::error::Result;
use crate::sink::files::parquet_err;
use crate::sink::table::DeltaTableSink;

/// A live data file of the table.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Path relative to the table root (decoded).
    pub path: String,
    pub size: u64,
    /// When the file was added, in milliseconds since the epoch.
    pub modification_time: i64,
    /// Its partition values, in the order of the table's partition columns.
    pub partition_values: Vec<Option<String>>,
    pub rows: Option<u64>,
    /// Its statistics as the log holds them (JSON), when it has some.
    pub stats: Option<String>,
    /// The action that retires it (with its deletion vector, if it has one).
    pub remove: Remove,
}

impl DeltaTableSink {
    /// The table's partition columns (from its metadata); empty without a table.
    pub fn table_partition_columns(&self) -> Vec<String> {
        self.table
            .as_ref()
            .and_then(|t| t.snapshot().ok())
            .map(|s| s.metadata().partition_columns().to_vec())
            .unwrap_or_default()
    }

    /// The live data files of the loaded version (no refresh).
    pub fn data_files(&self) -> Result<Vec<DataFile>> {
        let Some(table) = &self.table else {
            return Ok(Vec::new());
        };
        let snapshot = table.snapshot().map_err(self.delta_err())?;
        let columns = snapshot.metadata().partition_columns().to_vec();
        Ok(snapshot
            .log_data()
            .iter()
            .map(|f| {
                let values = f.partition_values_map();
                DataFile {
                    path: f.path().to_string(),
                    size: f.size().max(0) as u64,
                    modification_time: f.modification_time(),
                    partition_values: columns
                        .iter()
                        .map(|c| values.get(c).cloned().flatten())
                        .collect(),
                    rows: f.num_records().map(|n| n as u64),
                    stats: f.stats(),
                    remove: f.remove_action(false),
                }
            })
            .collect())
    }

    /// The table's schema without its partition columns: what a data file holds.
    pub fn data_schema(&self) -> Option<SchemaRef> {
        let partitions = self.table_partition_columns();
        let schema = self.arrow_schema()?;
        Some(Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .filter(|f| !partitions.contains(f.name()))
                .cloned()
                .collect::<Vec<_>>(),
        )))
    }

    /// Reads a data file's rows, shaped as `data_schema` (columns a file
    /// lacks read as nulls).
    pub async fn read_data_file(&self, file: &DataFile) -> Result<Vec<RecordBatch>> {
        self.read_parquet(&file.path).await
    }

    /// Reads the data file at `path` (relative to the table root), shaped as
    /// `data_schema`.
    pub(crate) async fn read_parquet(&self, path: &str) -> Result<Vec<RecordBatch>> {
        let (Some(table), Some(schema)) = (&self.table, self.data_schema()) else {
            return Ok(Vec::new());
        };
        let bytes: Bytes = table
            .object_store()
            .get(&Path::from(path))
            .await
            .map_err(|e| self.delta_err()(e.into()))?
            .bytes()
            .await
            .map_err(|e| self.delta_err()(e.into()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(parquet_err)?
            .with_batch_size(64 * 1024)
            .build()
            .map_err(parquet_err)?;
        let mut out = Vec::new();
        for batch in reader {
            out.push(conform(&batch?, &schema)?);
        }
        Ok(out)
    }
}

/// Shapes a batch as `schema`: columns by name, missing ones null, types cast.
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => conform_array(column, field.data_type()),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A column of an older file in the table's current type: struct fields
/// matched by name, those a later schema version added read as null.
fn conform_array(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    match to {
        DataType::Struct(to_fields) => {
            let from = array.as_struct();
            let children = to_fields
                .iter()
                .map(|f| match from.column_by_name(f.name()) {
                    Some(child) => conform_array(child, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), from.len())),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Arc::new(StructArray::try_new(
                to_fields.clone(),
                children,
                from.nulls().cloned(),
            )?))
        }
        _ => Ok(cast(array, to)?),
    }
}
