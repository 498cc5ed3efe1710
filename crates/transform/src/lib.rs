//! The transform stage: a spec's computed columns and row filter over Arrow
//! batches, and the republish sink's filter, in one expression language
//! (docs/transform.md).
//!
//! Contract: `check` accepts an input schema exactly when `apply` can
//! transform rows of it, and says what the output schema is; `apply` is a
//! pure function of its batch, so a replayed batch transforms alike.

mod error;
mod evaluate;
mod functions;
mod types;

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use tributary_spec::{Expr, TransformSpec};

pub use error::{Result, TransformError};
use evaluate::evaluate;
use types::{Kind, describe, kind, nulls_false};

/// A spec's `transform`, parsed.
#[derive(Debug, Clone)]
pub struct Transform {
    columns: Vec<(String, Expr)>,
    filter: Option<Expr>,
}

/// What `Transform::check` found.
pub struct Checked {
    /// The transformed rows' schema, without the columns that failed.
    pub schema: SchemaRef,
    /// (spec path, message) of every expression that failed.
    pub problems: Vec<(String, String)>,
    /// The computed columns that failed.
    pub failed: Vec<String>,
}

/// What `apply` made of a batch.
pub struct Transformed {
    pub rows: RecordBatch,
    /// Rows the `where` condition dropped.
    pub filtered: usize,
}

impl Transform {
    pub fn new(spec: &TransformSpec) -> Result<Transform> {
        let parsed = spec.parsed().map_err(TransformError::Parse)?;
        Ok(Transform {
            columns: parsed.columns,
            filter: parsed.filter,
        })
    }

    /// Checks every expression against rows of `input` (their columns and
    /// types, and the constants they hold): the transformed rows' schema
    /// and every problem.
    pub fn check(&self, input: &Schema) -> Checked {
        // One row of NULLs: every kernel runs, and every constant is converted.
        let nullable: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        let schema = Arc::new(Schema::new(nullable));
        let columns = schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        let mut problems = Vec::new();
        let mut failed = Vec::new();
        let mut rows = match RecordBatch::try_new(schema, columns) {
            Ok(rows) => rows,
            Err(e) => {
                return Checked {
                    schema: Arc::new(input.clone()),
                    problems: vec![(
                        "transform".to_string(),
                        format!("cannot build rows of the record's schema: {e}"),
                    )],
                    failed: self.columns.iter().map(|(n, _)| n.clone()).collect(),
                };
            }
        };
        for (name, expr) in &self.columns {
            match self.add_column(&rows, name, expr) {
                Ok(next) => rows = next,
                Err(e) => {
                    problems.push((format!("transform.columns.{name}"), e.to_string()));
                    failed.push(name.clone());
                }
            }
        }
        if let Some(condition) = &self.filter
            && let Err(e) = condition_mask(condition, &rows)
        {
            problems.push(("transform.where".to_string(), e.to_string()));
        }
        // The output keeps the input's nullability; computed columns may be NULL.
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(
            rows.schema()
                .fields()
                .iter()
                .skip(input.fields().len())
                .map(|f| f.as_ref().clone()),
        );
        Checked {
            schema: Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())),
            problems,
            failed,
        }
    }

    /// The batch with the computed columns added and the rows the condition
    /// does not select removed.
    pub fn apply(&self, batch: &RecordBatch) -> Result<Transformed> {
        let mut rows = batch.clone();
        for (name, expr) in &self.columns {
            rows = self
                .add_column(&rows, name, expr)
                .map_err(|e| TransformError::Evaluate(format!("transform.columns.{name}: {e}")))?;
        }
        let Some(condition) = &self.filter else {
            return Ok(Transformed { rows, filtered: 0 });
        };
        let mask = condition_mask(condition, &rows)
            .map_err(|e| TransformError::Evaluate(format!("transform.where: {e}")))?;
        let kept = mask.true_count();
        let filtered = rows.num_rows() - kept;
        if filtered > 0 {
            rows = filter_record_batch(&rows, &mask)?;
        }
        Ok(Transformed { rows, filtered })
    }

    fn add_column(&self, rows: &RecordBatch, name: &str, expr: &Expr) -> Result<RecordBatch> {
        if rows.schema_ref().column_with_name(name).is_some() {
            return Err(TransformError::Type(format!(
                "{name:?} is already a column of the rows; choose another name"
            )));
        }
        let value = evaluate(expr, rows)?;
        let data_type = value.array.data_type().clone();
        if kind(&data_type) == Kind::Null {
            return Err(TransformError::Type(
                "the expression is always NULL; CAST it to the column's type".into(),
            ));
        }
        let schema = rows.schema();
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(name, data_type, true)));
        let mut columns = rows.columns().to_vec();
        columns.push(value.array);
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            columns,
        )?)
    }
}

/// Where `condition` is true; NULL counts as false, as in SQL's WHERE.
fn condition_mask(condition: &Expr, rows: &RecordBatch) -> Result<BooleanArray> {
    let value = evaluate(condition, rows)?;
    let data_type = value.array.data_type();
    match kind(data_type) {
        Kind::Bool => {}
        Kind::Null => return Ok(BooleanArray::from(vec![false; rows.num_rows()])),
        _ => {
            return Err(TransformError::Type(format!(
                "a condition must be true or false, not {}",
                describe(data_type)
            )));
        }
    }
    let mask = value
        .array
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .expect("a boolean value is a BooleanArray");
    Ok(nulls_false(&mask))
}

/// The rows of `batch` for which `condition` is true (NULL is not).
pub fn select(condition: &Expr, batch: &RecordBatch) -> Result<RecordBatch> {
    let mask = condition_mask(condition, batch)?;
    Ok(filter_record_batch(batch, &mask)?)
}

/// Checks a condition against rows of `schema`, as `Transform::check` does.
pub fn check_condition(condition: &Expr, schema: &Schema) -> Result<()> {
    let transform = Transform {
        columns: Vec::new(),
        filter: Some(condition.clone()),
    };
    let problems = transform.check(schema).problems;
    if problems.is_empty() {
        return Ok(());
    }
    Err(TransformError::Type(
        problems
            .into_iter()
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

#[cfg(test)]
mod tests;
