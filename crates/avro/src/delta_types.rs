//! Avro (as decoded by arrow-avro) to Delta. Delta has no enum, uuid, fixed,
//! time-of-day or millisecond timestamp types, so those are converted the way
//! Spark's Avro reader does (see docs/avro-delta-types.md). Every column is
//! nullable in the table, as in tables Spark creates, so later schema
//! versions can drop or add fields.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, ListArray, MapArray, RecordBatch,
    StringBuilder, StructArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::{AvroError, Result};

const UTC: &str = "UTC";

/// The Delta-compatible Arrow schema for a decoded Avro schema.
pub fn delta_schema(schema: &Schema) -> Result<SchemaRef> {
    let fields: Result<Vec<Field>> = schema
        .fields()
        .iter()
        .map(|f| delta_field(f, f.name()))
        .collect();
    Ok(Arc::new(Schema::new(fields?)))
}

fn delta_field(field: &Field, path: &str) -> Result<Field> {
    Ok(Field::new(field.name(), delta_type(field, path)?, true))
}

fn is_uuid(field: &Field) -> bool {
    field
        .metadata()
        .get("logicalType")
        .is_some_and(|v| v == "uuid")
        || field
            .metadata()
            .get("ARROW:extension:name")
            .is_some_and(|v| v == "arrow.uuid")
}

fn delta_type(field: &Field, path: &str) -> Result<DataType> {
    let unsupported = |what: &str| AvroError::UnsupportedType(format!("field {path}: {what}"));
    Ok(match field.data_type() {
        DataType::FixedSizeBinary(16) if is_uuid(field) => DataType::Utf8,
        DataType::FixedSizeBinary(_) | DataType::LargeBinary | DataType::BinaryView => {
            DataType::Binary
        }
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8) => DataType::Utf8,
        DataType::Time32(_) => DataType::Int32,
        DataType::Time64(_) => DataType::Int64,
        DataType::Timestamp(_, Some(_)) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
        }
        DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::Decimal256(..) => {
            return Err(unsupported("decimal precision above 38 (Delta's maximum)"));
        }
        DataType::Union(..) => {
            return Err(unsupported(
                "a union of several non-null types has no Delta type; use a nullable union [\"null\", T]",
            ));
        }
        DataType::Interval(_) => return Err(unsupported("Avro duration has no Delta type")),
        DataType::Null => return Err(unsupported("a field of Avro type null has no Delta type")),
        DataType::Struct(children) => DataType::Struct(delta_fields(children, path)?),
        DataType::List(item) => DataType::List(Arc::new(Field::new(
            item.name(),
            delta_type(item, &format!("{path}[]"))?,
            true,
        ))),
        DataType::Map(entries, sorted) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(unsupported("malformed map"));
            };
            let key = Field::new(kv[0].name(), DataType::Utf8, false);
            let value = Field::new(
                kv[1].name(),
                delta_type(&kv[1], &format!("{path}{{}}"))?,
                true,
            );
            DataType::Map(
                Arc::new(Field::new(
                    entries.name(),
                    DataType::Struct(Fields::from(vec![key, value])),
                    false,
                )),
                *sorted,
            )
        }
        other => other.clone(),
    })
}

fn delta_fields(children: &Fields, path: &str) -> Result<Fields> {
    children
        .iter()
        .map(|c| delta_field(c, &format!("{path}.{}", c.name())))
        .collect::<Result<Vec<_>>>()
        .map(Fields::from)
}

/// Converts a decoded batch to `target` (from [`delta_schema`] of the same
/// Avro schema, or of the table). Columns missing from the batch are null.
pub fn to_delta_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let source = batch.schema();
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        match source.index_of(field.name()) {
            Ok(i) => columns.push(convert(
                batch.column(i),
                source.field(i),
                field.data_type(),
            )?),
            Err(_) => columns.push(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
        }
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &options,
    )?)
}

fn convert(array: &ArrayRef, from: &Field, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    Ok(match (array.data_type(), to) {
        (DataType::FixedSizeBinary(16), DataType::Utf8) if is_uuid(from) => {
            uuid_strings(array.as_fixed_size_binary())
        }
        (DataType::Struct(from_fields), DataType::Struct(to_fields)) => {
            // By name: a record of an older schema version lacks the fields a
            // later one added, and those read as null.
            let s = array.as_struct();
            let children = to_fields
                .iter()
                .map(
                    |t| match from_fields.iter().position(|f| f.name() == t.name()) {
                        Some(i) => convert(s.column(i), &from_fields[i], t.data_type()),
                        None => Ok(arrow::array::new_null_array(t.data_type(), s.len())),
                    },
                )
                .collect::<Result<Vec<_>>>()?;
            Arc::new(StructArray::try_new(
                to_fields.clone(),
                children,
                s.nulls().cloned(),
            )?)
        }
        (DataType::List(from_item), DataType::List(to_item)) => {
            let l = array.as_list::<i32>();
            let values = convert(l.values(), from_item, to_item.data_type())?;
            Arc::new(ListArray::try_new(
                to_item.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?)
        }
        (DataType::Map(from_entries, _), DataType::Map(to_entries, sorted)) => {
            let m = array.as_map();
            let entries = convert(
                &(Arc::new(m.entries().clone()) as ArrayRef),
                from_entries,
                to_entries.data_type(),
            )?;
            let entries = entries.as_struct().clone();
            let to_entries: FieldRef = to_entries.clone();
            Arc::new(MapArray::try_new(
                to_entries,
                m.offsets().clone(),
                entries,
                m.nulls().cloned(),
                *sorted,
            )?)
        }
        (DataType::Time32(_), DataType::Int32) | (DataType::Time64(_), DataType::Int64) => {
            cast(array, to)?
        }
        _ => cast(array, to)?,
    })
}

/// Canonical `8-4-4-4-12` hex form, written straight into the string buffer.
fn uuid_strings(a: &FixedSizeBinaryArray) -> ArrayRef {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = StringBuilder::with_capacity(a.len(), a.len() * 36);
    let mut text = [0u8; 36];
    for v in a.iter() {
        match v {
            Some(bytes) => {
                let mut o = 0;
                for (i, byte) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        text[o] = b'-';
                        o += 1;
                    }
                    text[o] = HEX[(byte >> 4) as usize];
                    text[o + 1] = HEX[(byte & 0xf) as usize];
                    o += 2;
                }
                b.append_value(std::str::from_utf8(&text).unwrap_or_default());
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::arrow_schema_of;

    #[test]
    fn avro_logical_types_map_to_delta_types() {
        let avro = r#"{"type":"record","name":"R","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"u","type":{"type":"string","logicalType":"uuid"}},
            {"name":"f","type":{"type":"fixed","name":"F","size":4}},
            {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
            {"name":"tu","type":{"type":"long","logicalType":"time-micros"}},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"lts","type":{"type":"long","logicalType":"local-timestamp-micros"}},
            {"name":"m","type":{"type":"map","values":{"type":"enum","name":"E2","symbols":["X"]}}},
            {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}}
        ]}"#;
        let schema = delta_schema(&arrow_schema_of(avro).unwrap()).unwrap();
        let types: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{}", f.data_type()))
            .collect();
        assert_eq!(types[0], "Utf8");
        assert_eq!(types[1], "Utf8");
        assert_eq!(types[2], "Binary");
        assert_eq!(types[3], "Int32");
        assert_eq!(types[4], "Int64");
        assert_eq!(types[5], "Timestamp(µs, \"UTC\")");
        assert_eq!(types[6], "Timestamp(µs)");
        assert!(types[7].starts_with("Map("), "{}", types[7]);
        assert_eq!(types[8], "Decimal128(10, 2)");
        assert!(schema.fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn uuids_print_in_canonical_form() {
        let bytes: Vec<u8> = (0u8..16).collect();
        let a = FixedSizeBinaryArray::try_from_iter([bytes].into_iter()).unwrap();
        let s = uuid_strings(&a);
        assert_eq!(
            s.as_string::<i32>().value(0),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }

    #[test]
    fn general_unions_are_refused_with_the_field_name() {
        let avro =
            r#"{"type":"record","name":"R","fields":[{"name":"x","type":["int","string"]}]}"#;
        let err = delta_schema(&arrow_schema_of(avro).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field x") && err.contains("union"), "{err}");
    }
}
