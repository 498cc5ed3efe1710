//! The dead-letter table's rows: the undecodable record kept whole.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tributary_core::DeadLetter;

use crate::error::Result;

/// One row per dead letter: `topic, partition, offset, kafka_timestamp, key,
/// value, error, batch_id`.
pub fn dead_letter_batch(
    topic: &str,
    batch_id: u64,
    letters: &[DeadLetter],
) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new(
            "kafka_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("batch_id", DataType::Int64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![topic; letters.len()])),
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|d| d.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|d| d.offset),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                letters
                    .iter()
                    .map(|d| d.timestamp_ms.map(|t| t * 1000))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(BinaryArray::from(
            letters.iter().map(|d| d.key.as_deref()).collect::<Vec<_>>(),
        )),
        Arc::new(BinaryArray::from(
            letters
                .iter()
                .map(|d| d.value.as_deref())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.reason.to_string()),
        )),
        Arc::new(Int64Array::from(vec![batch_id as i64; letters.len()])),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
