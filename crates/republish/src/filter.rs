//! Evaluates a spec's row filter over Arrow batches, with SQL's meaning: a
//! comparison involving NULL is not true, so its row is not selected.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar, StringArray,
};
use deltalake::arrow::compute::kernels::boolean::{and_kleene, not, or_kleene};
use deltalake::arrow::compute::kernels::cmp;
use deltalake::arrow::compute::{cast, filter_record_batch, is_not_null, is_null};
use deltalake::arrow::datatypes::DataType;
use tributary_spec::{CompareOp, Filter, Literal};

use crate::error::{RepublishError, Result};

/// The rows of `batch` the filter selects.
pub fn select(filter: &Filter, batch: &RecordBatch) -> Result<RecordBatch> {
    let mask = evaluate(filter, batch)?;
    Ok(filter_record_batch(batch, &mask)?)
}

fn evaluate(filter: &Filter, batch: &RecordBatch) -> Result<BooleanArray> {
    Ok(match filter {
        Filter::Compare { column, op, value } => {
            let (left, right) = operands(batch, column, value)?;
            let right = Scalar::new(right);
            match op {
                CompareOp::Eq => cmp::eq(&left, &right)?,
                CompareOp::NotEq => cmp::neq(&left, &right)?,
                CompareOp::Lt => cmp::lt(&left, &right)?,
                CompareOp::LtEq => cmp::lt_eq(&left, &right)?,
                CompareOp::Gt => cmp::gt(&left, &right)?,
                CompareOp::GtEq => cmp::gt_eq(&left, &right)?,
            }
        }
        Filter::IsNull { column, negated } => {
            let values = column_of(batch, column)?;
            if *negated {
                is_not_null(values.as_ref())?
            } else {
                is_null(values.as_ref())?
            }
        }
        Filter::And(a, b) => and_kleene(&evaluate(a, batch)?, &evaluate(b, batch)?)?,
        Filter::Or(a, b) => or_kleene(&evaluate(a, batch)?, &evaluate(b, batch)?)?,
        Filter::Not(inner) => not(&evaluate(inner, batch)?)?,
    })
}

fn column_of(batch: &RecordBatch, column: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(column)
        .cloned()
        .ok_or_else(|| RepublishError::Filter(format!("the table has no column {column:?}")))
}

/// The column and the literal as one-element array of a type they compare
/// in: the column's, except that an integer column meets a fractional
/// literal as a float (so `n > 1.5` does not become `n > 1`).
fn operands(batch: &RecordBatch, column: &str, value: &Literal) -> Result<(ArrayRef, ArrayRef)> {
    let mut left = column_of(batch, column)?;
    let raw: ArrayRef = match value {
        Literal::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        Literal::Int(i) => Arc::new(Int64Array::from(vec![*i])),
        Literal::Float(x) => Arc::new(Float64Array::from(vec![*x])),
        Literal::String(s) => Arc::new(StringArray::from(vec![s.as_str()])),
    };
    if matches!(value, Literal::Float(_)) && left.data_type().is_integer() {
        left = cast(&left, &DataType::Float64)?;
    }
    let mismatch = || {
        RepublishError::Filter(format!(
            "cannot compare column {column:?} ({}) with {value}",
            left.data_type()
        ))
    };
    let right = cast(&raw, left.data_type()).map_err(|_| mismatch())?;
    if right.is_null(0) {
        return Err(mismatch());
    }
    Ok((left, right))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{AsArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{Field, Int64Type, Schema};

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(
                    deltalake::arrow::datatypes::TimeUnit::Microsecond,
                    Some("UTC".into()),
                ),
                true,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b'c"),
                    None,
                    Some("a"),
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![0, 86_400_000_000, 172_800_000_000, 0])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    fn ids(text: &str) -> Vec<Option<i64>> {
        let selected = select(&Filter::parse(text).unwrap(), &batch()).unwrap();
        selected
            .column(0)
            .as_primitive::<Int64Type>()
            .iter()
            .collect()
    }

    #[test]
    fn comparisons_follow_sql() {
        assert_eq!(ids("flag = true"), vec![Some(1), None]);
        // NULL never compares true, not even under NOT.
        assert_eq!(ids("NOT flag = true"), vec![Some(2)]);
        assert_eq!(ids("id > 1.5"), vec![Some(2), Some(3)]);
        assert_eq!(ids("id >= 2 AND name IS NOT NULL"), vec![Some(2)]);
        assert_eq!(ids("name = 'b''c' OR id IS NULL"), vec![Some(2), None]);
        assert_eq!(ids("ts >= '1970-01-02T00:00:00Z'"), vec![Some(2), Some(3)]);
        assert_eq!(ids("id <> 1"), vec![Some(2), Some(3)]);
    }

    #[test]
    fn impossible_comparisons_and_unknown_columns_are_errors() {
        for (text, message) in [
            ("flag = 'maybe'", "cannot compare column \"flag\""),
            ("nope = 1", "no column \"nope\""),
        ] {
            let err = select(&Filter::parse(text).unwrap(), &batch()).unwrap_err();
            assert!(err.to_string().contains(message), "{text}: {err}");
        }
    }
}
