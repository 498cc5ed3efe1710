//! Rows to Kafka records: projection, key, and the value as Avro (Confluent
//! framing) or JSON.

use std::sync::Arc;

use arrow_avro::schema::AvroSchema;
use arrow_avro::writer::WriterBuilder;
use arrow_avro::writer::format::AvroBinaryFormat;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Schema, SchemaRef};
use deltalake::arrow::json::writer::{LineDelimited, WriterBuilder as JsonWriterBuilder};
use tributary_kafka::OutRecord;

use crate::error::{RepublishError, Result};

/// Turns table rows (in the table's schema) into records for one target topic.
pub struct RowEncoder {
    /// Indices of the published columns; `None`: every column.
    projection: Option<Vec<usize>>,
    key: Option<String>,
    value: ValueFormat,
}

pub enum ValueFormat {
    /// Avro body behind the Confluent header of this schema id.
    Avro {
        schema_id: u32,
    },
    Json,
}

impl RowEncoder {
    /// An encoder for rows of `table`, publishing `columns` (all when empty).
    pub fn new(
        table: &Schema,
        columns: &[String],
        key: Option<String>,
        value: ValueFormat,
    ) -> Result<RowEncoder> {
        let projection = if columns.is_empty() {
            None
        } else {
            let value_schema = Self::value_schema(columns, table)?;
            Some(
                value_schema
                    .fields()
                    .iter()
                    .map(|f| table.index_of(f.name()))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        Ok(RowEncoder {
            projection,
            key,
            value,
        })
    }

    /// The schema of the published values, given the table's.
    pub fn value_schema(columns: &[String], table: &Schema) -> Result<SchemaRef> {
        if columns.is_empty() {
            return Ok(Arc::new(table.clone()));
        }
        let fields = columns
            .iter()
            .map(|c| {
                table
                    .field_with_name(c)
                    .cloned()
                    .map_err(|_| RepublishError::Columns(format!("the table has no column {c:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The Avro schema (JSON) of the published values, to register.
    pub fn avro_schema(value_schema: &Schema) -> Result<String> {
        AvroSchema::try_from(value_schema)
            .map(|s| s.json_string)
            .map_err(|e| {
                RepublishError::Encode(format!("no Avro schema for the published columns: {e}"))
            })
    }

    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<OutRecord>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let values = match &self.projection {
            Some(indices) => batch.project(indices)?,
            None => batch.clone(),
        };
        let bodies = match self.value {
            ValueFormat::Avro { schema_id } => avro_values(&values, schema_id)?,
            ValueFormat::Json => json_values(&values)?,
        };
        let keys = self.keys(batch)?;
        Ok(bodies
            .into_iter()
            .zip(keys)
            .map(|(value, key)| OutRecord { key, value })
            .collect())
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        let Some(key) = &self.key else {
            return Ok(vec![None; batch.num_rows()]);
        };
        let column = batch.column_by_name(key).ok_or_else(|| {
            RepublishError::Columns(format!("the table has no key column {key:?}"))
        })?;
        let text = cast(column, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        Ok((0..text.len())
            .map(|i| text.is_valid(i).then(|| text.value(i).as_bytes().to_vec()))
            .collect())
    }
}

fn avro_values(batch: &RecordBatch, schema_id: u32) -> Result<Vec<Vec<u8>>> {
    let mut encoder = WriterBuilder::new(batch.schema().as_ref().clone())
        .build_encoder::<AvroBinaryFormat>()
        .map_err(|e| RepublishError::Encode(e.to_string()))?;
    encoder
        .encode(batch)
        .map_err(|e| RepublishError::Encode(e.to_string()))?;
    let rows = encoder.flush();
    let header = schema_id.to_be_bytes();
    Ok(rows
        .iter()
        .map(|body| {
            let mut framed = Vec::with_capacity(body.len() + 5);
            framed.push(0);
            framed.extend_from_slice(&header);
            framed.extend_from_slice(&body);
            framed
        })
        .collect())
}

fn json_values(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buffer = Vec::new();
    let mut writer = JsonWriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(&mut buffer);
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{BooleanArray, Int64Array, StringArray};
    use deltalake::arrow::datatypes::Field;

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("account", DataType::Utf8, true),
                Field::new("flag", DataType::Boolean, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(StringArray::from(vec![Some("a-1"), None])),
                Arc::new(BooleanArray::from(vec![true, false])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn json_values_are_projected_with_explicit_nulls_and_keyed() {
        let encoder = RowEncoder::new(
            &batch().schema(),
            &["account".into(), "id".into()],
            Some("account".into()),
            ValueFormat::Json,
        )
        .unwrap();
        let records = encoder.encode(&batch()).unwrap();
        assert_eq!(
            records,
            vec![
                OutRecord {
                    key: Some(b"a-1".to_vec()),
                    value: br#"{"account":"a-1","id":7}"#.to_vec()
                },
                OutRecord {
                    key: None,
                    value: br#"{"account":null,"id":8}"#.to_vec()
                },
            ]
        );
    }

    #[test]
    fn avro_values_carry_the_confluent_header_and_the_avro_body() {
        let encoder = RowEncoder::new(
            &batch().schema(),
            &["id".into()],
            None,
            ValueFormat::Avro { schema_id: 258 },
        )
        .unwrap();
        let records = encoder.encode(&batch()).unwrap();
        // Magic byte, schema id 258 big-endian, then the union branch of a
        // nullable long (1 = the long) and 7 zig-zag encoded (14).
        assert_eq!(records[0].value, vec![0, 0, 0, 1, 2, 2, 14]);
        assert_eq!(records[1].value, vec![0, 0, 0, 1, 2, 2, 16]);
        let schema: serde_json::Value = serde_json::from_str(
            &RowEncoder::avro_schema(
                &RowEncoder::value_schema(&["id".into()], &batch().schema()).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(schema["type"], "record");
        assert_eq!(schema["fields"][0]["name"], "id");
        assert!(RowEncoder::value_schema(&["nope".into()], &batch().schema()).is_err());
    }
}
