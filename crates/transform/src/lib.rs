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
use tributary_spec::{Expr, INTERNAL_COLUMN_PREFIX, Select, SelectItem, TableSpec, TransformSpec};

pub use error::{Result, TransformError};
use evaluate::evaluate;
use types::{Kind, describe, kind, nulls_false};

/// A spec's `transform`, parsed.
#[derive(Debug, Clone)]
pub struct Transform {
    columns: Vec<(String, Expr)>,
    filter: Option<Expr>,
    select: Option<Select>,
    /// Columns a SELECT keeps even when it does not name them.
    keep: Vec<String>,
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
            keep: Vec::new(),
        })
    }

    /// The transform of a spec: a SELECT keeps the Kafka columns named in
    /// `source.columns` (the operators read the partition and offset, and
    /// the table's spec names them) even when it leaves them out.
    pub fn of_spec(spec: &TableSpec) -> Result<Option<Transform>> {
        let Some(t) = &spec.transform else {
            return Ok(None);
        };
        let mut transform = Transform::new(t)?;
        transform.keep = spec
            .source
            .columns
            .named()
            .into_iter()
            .map(|(_, name, _)| name.to_string())
            .collect();
        Ok(Some(transform))
    }

    /// Whether a column of the record reaches the table as it is, under
    /// its own name (a SELECT may drop, rename or recompute it).
    pub fn passes_through(&self, name: &str) -> bool {
        let Some(select) = &self.select else {
            return true;
        };
        let mut kept = self.keep.iter().any(|k| k == name);
        for item in &select.items {
            match item {
                SelectItem::All { except } => kept |= !except.iter().any(|e| e == name),
                SelectItem::Column { name: out, expr } if out.eq_ignore_ascii_case(name) => {
                    // The name holds something else than the record's column.
                    if *expr != Expr::Column(name.to_string()) {
                        return false;
                    }
                    kept = true;
                }
                SelectItem::Column { .. } => {}
            }
        }
        kept
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
            match project(select, &self.keep, &rows, &schema) {
                Ok(projected) => schema = projected.schema,
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
        let (selected, dropped) = project(select, &self.keep, &rows, rows.schema_ref())
            .and_then(|p| p.rows(rows.num_rows()))
            .map_err(|e| TransformError::Evaluate(format!("transform.sql: {e}")))?;
        Ok(Transformed {
            rows: selected,
            filtered: filtered + dropped,
        })
    }

    fn add_column(&self, rows: &RecordBatch, name: &str, expr: &Expr) -> Result<RecordBatch> {
        if rows.schema_ref().column_with_name(name).is_some() {
            return Err(TransformError::Type(format!(
                "{name:?} is already a column of the rows; choose another name"
            )));
        }
        let value = computed_column(expr, rows)?;
        let schema = rows.schema();
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(name, value.data_type().clone(), true)));
        let mut columns = rows.columns().to_vec();
        columns.push(value);
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            columns,
        )?)
    }
}

/// The values of a computed column over `rows`; an expression that is
/// NULL whatever the row has no type for the table and is refused.
fn computed_column(expr: &Expr, rows: &RecordBatch) -> Result<ArrayRef> {
    let value = evaluate(expr, rows)?;
    if kind(value.array.data_type()) == Kind::Null {
        return Err(TransformError::Type(
            "the expression is always NULL; CAST it to the column's type".into(),
        ));
    }
    Ok(value.array)
}

/// The columns of the SELECT over `rows`, and the rows its WHERE keeps.
/// Like `columns` and `where`, the expressions are computed for every row
/// and the WHERE selects among them after, so a column's type never
/// depends on how many rows a batch kept. A column taken as it is keeps
/// its field in `fields` (the rows' schema with the nullability the output
/// should have), renamed by its alias. Columns in `keep` and Tributary's
/// internal columns follow the SELECT's when it leaves them out.
fn project(
    select: &Select,
    keep: &[String],
    rows: &RecordBatch,
    fields: &Schema,
) -> Result<Projected> {
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
                    Expr::Column(_) => computed_column(expr, rows)?,
                    _ => computed_column(expr, rows)
                        .map_err(|e| TransformError::Type(format!("{name}: {e}")))?,
                };
                out_fields.push(Arc::new(Field::new(name, value.data_type().clone(), true)));
                columns.push(value);
            }
        }
    }
    // Delta's column names are case-insensitive.
    for (i, field) in out_fields.iter().enumerate() {
        if out_fields[..i]
            .iter()
            .any(|f| f.name().eq_ignore_ascii_case(field.name()))
        {
            return Err(TransformError::Type(format!(
                "the SELECT names column {:?} twice",
                field.name()
            )));
        }
    }
    if out_fields.is_empty() {
        return Err(TransformError::Type("the SELECT keeps no column".into()));
    }
    for (i, field) in fields.fields().iter().enumerate() {
        let kept = keep.contains(field.name()) || field.name().starts_with(INTERNAL_COLUMN_PREFIX);
        if kept && !out_fields.iter().any(|f| f.name() == field.name()) {
            out_fields.push(field.clone());
            columns.push(rows.column(i).clone());
        }
    }
    let mask = select
        .filter
        .as_ref()
        .map(|condition| condition_mask(condition, rows))
        .transpose()?;
    Ok(Projected {
        schema: Arc::new(Schema::new_with_metadata(
            out_fields,
            fields.metadata().clone(),
        )),
        columns,
        mask,
    })
}

/// What `project` made: the output's schema and columns (all rows), and
/// the rows its WHERE keeps.
struct Projected {
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    mask: Option<BooleanArray>,
}

impl Projected {
    /// The kept rows, and how many the WHERE dropped.
    fn rows(self, num_rows: usize) -> Result<(RecordBatch, usize)> {
        let options = RecordBatchOptions::new().with_row_count(Some(num_rows));
        let all = RecordBatch::try_new_with_options(self.schema, self.columns, &options)?;
        let Some(mask) = self.mask else {
            return Ok((all, 0));
        };
        let filtered = num_rows - mask.true_count();
        Ok((filter_record_batch(&all, &mask)?, filtered))
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
        select: None,
        keep: Vec::new(),
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
