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

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, new_null_array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use tributary_spec::{Expr, Select, SelectItem, TransformSpec};

pub use error::{Result, TransformError};
use evaluate::evaluate;
use types::{Kind, describe, kind, nulls_false};

/// A spec's `transform`, parsed.
#[derive(Debug, Clone)]
pub struct Transform {
    columns: Vec<(String, Expr)>,
    filter: Option<Expr>,
    select: Option<Select>,
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
            select: parsed.select,
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
        let mut schema = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
        // A SELECT reading a column that failed would only repeat its problem.
        if let Some(select) = &self.select
            && failed.is_empty()
        {
            match project(select, &rows, &schema) {
                Ok(selected) => schema = selected.rows.schema(),
                Err(e) => problems.push(("transform.sql".to_string(), e.to_string())),
            }
        }
        Checked {
            schema,
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
        let mut filtered = 0;
        if let Some(condition) = &self.filter {
            let mask = condition_mask(condition, &rows)
                .map_err(|e| TransformError::Evaluate(format!("transform.where: {e}")))?;
            filtered = rows.num_rows() - mask.true_count();
            if filtered > 0 {
                rows = filter_record_batch(&rows, &mask)?;
            }
        }
        let Some(select) = &self.select else {
            return Ok(Transformed { rows, filtered });
        };
        let selected = project(select, &rows, rows.schema_ref())
            .map_err(|e| TransformError::Evaluate(format!("transform.sql: {e}")))?;
        Ok(Transformed {
            rows: selected.rows,
            filtered: filtered + selected.filtered,
        })
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

/// The rows of the SELECT: its WHERE, then its columns. A column taken as
/// it is keeps its field in `fields` (the rows' schema, with the
/// nullability the output should have), renamed by its alias.
fn project(select: &Select, rows: &RecordBatch, fields: &Schema) -> Result<Transformed> {
    let (rows, filtered) = match &select.filter {
        Some(condition) => {
            let mask = condition_mask(condition, rows)?;
            let filtered = rows.num_rows() - mask.true_count();
            (filter_record_batch(rows, &mask)?, filtered)
        }
        None => (rows.clone(), 0),
    };
    let mut out_fields: Vec<FieldRef> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for item in &select.items {
        match item {
            SelectItem::All { except } => {
                if let Some(unknown) = except.iter().find(|c| fields.column_with_name(c).is_none())
                {
                    return Err(TransformError::Type(format!(
                        "* leaves out {unknown:?}, which is not a column of the rows"
                    )));
                }
                for (i, field) in fields.fields().iter().enumerate() {
                    if !except.contains(field.name()) {
                        out_fields.push(field.clone());
                        columns.push(rows.column(i).clone());
                    }
                }
            }
            SelectItem::Column { name, expr } => {
                if let Expr::Column(c) = expr
                    && let Some((i, field)) = fields.column_with_name(c)
                {
                    out_fields.push(Arc::new(field.clone().with_name(name)));
                    columns.push(rows.column(i).clone());
                    continue;
                }
                let value = match expr {
                    Expr::Column(_) => evaluate(expr, &rows)?,
                    _ => evaluate(expr, &rows)
                        .map_err(|e| TransformError::Type(format!("{name}: {e}")))?,
                };
                if kind(value.array.data_type()) == Kind::Null {
                    return Err(TransformError::Type(format!(
                        "{name}: the expression is always NULL; CAST it to the column's type"
                    )));
                }
                out_fields.push(Arc::new(Field::new(
                    name,
                    value.array.data_type().clone(),
                    true,
                )));
                columns.push(value.array);
            }
        }
    }
    for (i, field) in out_fields.iter().enumerate() {
        if out_fields[..i].iter().any(|f| f.name() == field.name()) {
            return Err(TransformError::Type(format!(
                "the SELECT names column {:?} twice",
                field.name()
            )));
        }
    }
    if out_fields.is_empty() {
        return Err(TransformError::Type("the SELECT keeps no column".into()));
    }
    let schema = Schema::new_with_metadata(out_fields, fields.metadata().clone());
    let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
    Ok(Transformed {
        rows: RecordBatch::try_new_with_options(Arc::new(schema), columns, &options)?,
        filtered,
    })
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
        select: None,
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
