//! Schema evolution: the table's schema grows to hold what a new writer
//! schema adds, so producers evolve without a redeploy or an ALTER.
//!
//! - A new field (top level or inside a record) becomes a new nullable
//!   column, appended; rows written before read it as null.
//! - A field a later version drops keeps its column, which reads as null.
//! - A type that widens safely into the table's (int into long, float into
//!   double, int into double) is converted on write.
//! - A column that would have to widen (the table has int, the records long)
//!   or change type is an incompatible change: the batch fails with the
//!   subject and the field named, and nothing is written.

use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema};

/// `table` extended to hold `incoming`, or `None` when it holds it already.
pub(crate) fn evolve(table: &Schema, incoming: &Schema) -> Result<Option<Schema>, String> {
    Ok(merge_fields(table.fields(), incoming.fields(), "")?
        .map(|fields| Schema::new_with_metadata(fields, table.metadata().clone())))
}

fn merge_fields(table: &Fields, incoming: &Fields, path: &str) -> Result<Option<Fields>, String> {
    let mut out: Vec<FieldRef> = Vec::with_capacity(table.len());
    let mut changed = false;
    for t in table.iter() {
        let Some(i) = incoming.iter().find(|f| f.name() == t.name()) else {
            out.push(t.clone());
            continue;
        };
        match merge_type(t.data_type(), i.data_type(), &format!("{path}{}", t.name()))? {
            None => out.push(t.clone()),
            Some(data_type) => {
                changed = true;
                out.push(Arc::new(t.as_ref().clone().with_data_type(data_type)));
            }
        }
    }
    for i in incoming.iter() {
        if table.find(i.name()).is_none() {
            changed = true;
            out.push(Arc::new(i.as_ref().clone().with_nullable(true)));
        }
    }
    Ok(changed.then(|| Fields::from(out)))
}

/// The table type extended to hold `incoming`; `None`: no change needed.
fn merge_type(
    table: &DataType,
    incoming: &DataType,
    path: &str,
) -> Result<Option<DataType>, String> {
    if table == incoming {
        return Ok(None);
    }
    match (table, incoming) {
        (DataType::Struct(t), DataType::Struct(i)) => {
            Ok(merge_fields(t, i, &format!("{path}."))?.map(DataType::Struct))
        }
        (DataType::List(t), DataType::List(i)) => {
            Ok(merge_type(t.data_type(), i.data_type(), path)?
                .map(|item| DataType::List(Arc::new(Field::clone(t).with_data_type(item)))))
        }
        (DataType::Int64, DataType::Int32)
        | (DataType::Float64, DataType::Float32)
        | (DataType::Float64, DataType::Int32) => Ok(None),
        (DataType::Int32, DataType::Int64) | (DataType::Float32, DataType::Float64) => {
            Err(format!(
                "field {path}: the table's column is {table} and the records now carry {incoming}; \
             widening a column needs Delta's type-widening table feature, which Tributary does not \
             apply: keep the field's type, or write the wider values to a new field"
            ))
        }
        _ => Err(format!(
            "field {path}: the table's column is {table} and the records now carry {incoming}, \
             an incompatible type change"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: Vec<Field>) -> Schema {
        Schema::new(fields)
    }

    fn nested(fields: Vec<Field>) -> DataType {
        DataType::Struct(Fields::from(fields))
    }

    #[test]
    fn new_fields_are_appended_at_every_level() {
        let v1 = schema(vec![
            Field::new("id", DataType::Int64, true),
            Field::new(
                "geo",
                nested(vec![Field::new("lat", DataType::Float64, true)]),
                true,
            ),
        ]);
        let v3 = schema(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("coupon", DataType::Utf8, false),
            Field::new(
                "geo",
                nested(vec![
                    Field::new("lat", DataType::Float32, true),
                    Field::new("lon", DataType::Float64, true),
                ]),
                true,
            ),
        ]);
        let evolved = evolve(&v1, &v3).unwrap().unwrap();
        assert_eq!(
            evolved,
            schema(vec![
                Field::new("id", DataType::Int64, true),
                Field::new(
                    "geo",
                    nested(vec![
                        Field::new("lat", DataType::Float64, true),
                        Field::new("lon", DataType::Float64, true),
                    ]),
                    true
                ),
                Field::new("coupon", DataType::Utf8, true),
            ])
        );
        // The evolved table holds every version, old and new: nothing more to add.
        assert_eq!(evolve(&evolved, &v1).unwrap(), None);
        assert_eq!(evolve(&evolved, &v3).unwrap(), None);
    }

    #[test]
    fn narrowing_and_type_changes_are_refused_with_the_field_path() {
        let table = schema(vec![Field::new(
            "geo",
            nested(vec![Field::new("zip", DataType::Int32, true)]),
            true,
        )]);
        let wider = schema(vec![Field::new(
            "geo",
            nested(vec![Field::new("zip", DataType::Int64, true)]),
            true,
        )]);
        let err = evolve(&table, &wider).unwrap_err();
        assert!(err.starts_with("field geo.zip: the table's column is Int32 and the records now carry Int64; widening"), "{err}");
        let text = schema(vec![Field::new(
            "geo",
            nested(vec![Field::new("zip", DataType::Utf8, true)]),
            true,
        )]);
        let err = evolve(&table, &text).unwrap_err();
        assert!(err.ends_with("an incompatible type change"), "{err}");
    }
}
