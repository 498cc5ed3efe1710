//! What each committed version changed, for readers that follow the table
//! version by version (the republish sink).

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use serde_json::Value;

use crate::error::{DeltaSinkError, Result};
use crate::sink::files::decode_log_path;
use crate::sink::table::DeltaTableSink;

/// A data file a version added as new data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedFile {
    /// Path relative to the table root (decoded).
    pub path: String,
    /// Partition values by column (`None`: null).
    pub partition_values: Vec<(String, Option<String>)>,
}

impl DeltaTableSink {
    /// The data files `version` added with `dataChange=true`, in log order:
    /// none for compaction's rewrites (`dataChange=false`) and for versions
    /// that changed only metadata. `None` when the version's log file is gone
    /// (expired by log retention) or the table does not exist.
    pub async fn added_in(&self, version: u64) -> Result<Option<Vec<AddedFile>>> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let Some(bytes) = table
            .log_store()
            .read_commit_entry(version)
            .await
            .map_err(self.delta_err())?
        else {
            return Ok(None);
        };
        let corrupt = |message: String| DeltaSinkError::Corrupt {
            uri: self.uri().to_string(),
            message: format!("version {version}: {message}"),
        };
        let mut added = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: Value = serde_json::from_slice(line)
                .map_err(|e| corrupt(format!("unreadable action: {e}")))?;
            let Some(add) = action.get("add") else {
                continue;
            };
            if add.get("dataChange") != Some(&Value::Bool(true)) {
                continue;
            }
            let path = add["path"]
                .as_str()
                .ok_or_else(|| corrupt("an add action without a path".into()))?;
            let partition_values = add["partitionValues"]
                .as_object()
                .map(|values| {
                    values
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
                        .collect()
                })
                .unwrap_or_default();
            added.push(AddedFile {
                path: decode_log_path(path),
                partition_values,
            });
        }
        Ok(Some(added))
    }

    /// The rows of an added file in the table's full schema: the partition
    /// columns are filled in from the file's partition values.
    pub async fn read_added(&self, file: &AddedFile) -> Result<Vec<RecordBatch>> {
        let Some(schema) = self.arrow_schema() else {
            return Ok(Vec::new());
        };
        let batches = self.read_parquet(&file.path).await?;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let columns = schema
                .fields()
                .iter()
                .map(|field| match batch.column_by_name(field.name()) {
                    Some(column) => Ok(column.clone()),
                    None => {
                        let value = file
                            .partition_values
                            .iter()
                            .find(|(k, _)| k == field.name())
                            .and_then(|(_, v)| v.clone());
                        let text: ArrayRef =
                            Arc::new(StringArray::from(vec![value; batch.num_rows()]));
                        Ok(cast(&text, field.data_type())?)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        Ok(out)
    }
}
