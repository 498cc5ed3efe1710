//! Partition columns derived from timestamps (`date(ts)`, `hour(ts)`).

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::compute::kernels::temporal::{DatePart, date_part};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use tributary_spec::PartitionColumn;

use crate::error::Result;

/// Appends the derived partition columns to a batch (source-column partitions
/// are already in it). Both transforms are taken in UTC.
pub fn add_partition_columns(
    batch: &RecordBatch,
    partitions: &[PartitionColumn],
) -> Result<RecordBatch> {
    let derived: Vec<&PartitionColumn> = partitions
        .iter()
        .filter(|p| !matches!(p, PartitionColumn::Source(_)))
        .collect();
    if derived.is_empty() {
        return Ok(batch.clone());
    }
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for p in derived {
        let source = batch.column_by_name(p.source_column()).ok_or_else(|| {
            deltalake::arrow::error::ArrowError::SchemaError(format!(
                "missing column {}",
                p.source_column()
            ))
        })?;
        let (column, data_type): (ArrayRef, DataType) = match p {
            PartitionColumn::Date { .. } => (cast(source, &DataType::Date32)?, DataType::Date32),
            PartitionColumn::Hour { .. } => {
                (date_part(source.as_ref(), DatePart::Hour)?, DataType::Int32)
            }
            PartitionColumn::Source(_) => continue,
        };
        fields.push(Arc::new(Field::new(p.name(), data_type, true)));
        columns.push(column);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{Date32Type, Int32Type};

    #[test]
    fn date_and_hour_are_utc() {
        // 2024-03-01T23:30:00Z and 2024-03-02T00:15:00Z
        let ts =
            TimestampMicrosecondArray::from(vec![1_709_335_800_000_000, 1_709_338_500_000_000])
                .with_timezone("UTC");
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            ts.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(ts)]).unwrap();
        let parts = [
            PartitionColumn::Date { from: "ts".into() },
            PartitionColumn::Hour { from: "ts".into() },
        ];
        let out = add_partition_columns(&batch, &parts).unwrap();
        let dates = out
            .column_by_name("date")
            .unwrap()
            .as_primitive::<Date32Type>();
        assert_eq!(dates.values().to_vec(), vec![19783, 19784]);
        let hours = out
            .column_by_name("hour")
            .unwrap()
            .as_primitive::<Int32Type>();
        assert_eq!(hours.values().to_vec(), vec![23, 0]);
    }
}
