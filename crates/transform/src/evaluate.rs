//! Evaluates an expression over a batch with Arrow's kernels, typed as Spark
//! types it: integer arithmetic is 64-bit and fails on overflow, `/` always
//! gives a double, division by zero gives NULL, and a comparison with NULL
//! is NULL (so a filter does not select its row).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, NullArray, RecordBatch, Scalar,
    StringArray, UInt32Array, new_null_array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::compute::{
    CastOptions, cast_with_options, is_not_null, is_null, like, nlike, nullif,
    prep_null_mask_filter, take,
};
use arrow::datatypes::{DataType, TimeUnit};
use tributary_spec::{BinaryOp, CastType, Expr, Literal};

use crate::error::{Result, TransformError};
use crate::functions::call;

/// An evaluated expression: one value per row. `literal` marks values
/// computed from literals alone, whose failed conversions are errors (a
/// mistyped constant) rather than NULLs (a bad record).
pub(crate) struct Value {
    pub array: ArrayRef,
    pub literal: bool,
}

impl Value {
    fn computed(array: ArrayRef) -> Value {
        Value {
            array,
            literal: false,
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        kind(self.array.data_type())
    }
}

/// The mask with NULL as false (SQL's WHERE and WHEN).
pub(crate) fn nulls_false(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        mask.clone()
    } else {
        prep_null_mask_filter(mask)
    }
}

/// The type families the language knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Int,
    Float,
    String,
    Date,
    Timestamp,
    Other,
}

pub(crate) fn kind(t: &DataType) -> Kind {
    use DataType as T;
    match t {
        T::Null => Kind::Null,
        T::Boolean => Kind::Bool,
        T::Int8 | T::Int16 | T::Int32 | T::Int64 => Kind::Int,
        T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 => Kind::Int,
        T::Float16 | T::Float32 | T::Float64 => Kind::Float,
        T::Decimal32(..) | T::Decimal64(..) | T::Decimal128(..) | T::Decimal256(..) => Kind::Float,
        T::Utf8 | T::LargeUtf8 | T::Utf8View => Kind::String,
        T::Date32 | T::Date64 => Kind::Date,
        T::Timestamp(..) => Kind::Timestamp,
        _ => Kind::Other,
    }
}

/// A type as the messages name it, with its article.
pub(crate) fn describe(t: &DataType) -> String {
    match kind(t) {
        Kind::Null => "NULL".into(),
        Kind::Bool => "a boolean".into(),
        Kind::Int => "an integer".into(),
        Kind::Float => "a double".into(),
        Kind::String => "a string".into(),
        Kind::Date => "a date".into(),
        Kind::Timestamp => "a timestamp".into(),
        Kind::Other => format!("a {t}"),
    }
}

pub(crate) fn evaluate(e: &Expr, batch: &RecordBatch) -> Result<Value> {
    let rows = batch.num_rows();
    Ok(match e {
        Expr::Column(name) => {
            Value::computed(batch.column_by_name(name).cloned().ok_or_else(|| {
                let names: Vec<&str> = batch
                    .schema_ref()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                TransformError::Type(format!(
                    "unknown column {name:?}; the rows have: {}",
                    names.join(", ")
                ))
            })?)
        }
        Expr::Literal(l) => Value {
            array: literal(l, rows),
            literal: true,
        },
        Expr::Negate(inner) => {
            let v = evaluate(inner, batch)?;
            let numbers = numeric_operand(&v, "-")?;
            Value {
                array: numeric::neg(&numbers).map_err(overflow)?,
                literal: v.literal,
            }
        }
        Expr::Not(inner) => {
            let v = evaluate(inner, batch)?;
            let b = boolean_operand(&v, "NOT")?;
            Value {
                array: Arc::new(boolean::not(&b)?),
                literal: v.literal,
            }
        }
        Expr::Binary { left, op, right } => {
            binary(*op, evaluate(left, batch)?, evaluate(right, batch)?)?
        }
        Expr::IsNull { expr, negated } => {
            let v = evaluate(expr, batch)?;
            let nulls = if *negated {
                is_not_null(&v.array)?
            } else {
                is_null(&v.array)?
            };
            Value::computed(Arc::new(nulls))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let mut any: Option<BooleanArray> = None;
            for item in list {
                let hit = compare(BinaryOp::Eq, evaluate(expr, batch)?, evaluate(item, batch)?)?;
                any = Some(match any {
                    Some(a) => boolean::or_kleene(&a, &hit)?,
                    None => hit,
                });
            }
            let any = any.ok_or_else(|| TransformError::Type("IN () needs values".into()))?;
            Value::computed(Arc::new(if *negated { boolean::not(&any)? } else { any }))
        }
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let above = compare(
                BinaryOp::GtEq,
                evaluate(expr, batch)?,
                evaluate(low, batch)?,
            )?;
            let below = compare(
                BinaryOp::LtEq,
                evaluate(expr, batch)?,
                evaluate(high, batch)?,
            )?;
            let within = boolean::and_kleene(&above, &below)?;
            Value::computed(Arc::new(if *negated {
                boolean::not(&within)?
            } else {
                within
            }))
        }
        Expr::Like {
            expr,
            pattern,
            negated,
        } => {
            let v = evaluate(expr, batch)?;
            let text = string_operand(&v, "LIKE")?;
            let pattern = Scalar::new(StringArray::from(vec![pattern.as_str()]));
            let matched = if *negated {
                nlike(&text, &pattern)?
            } else {
                like(&text, &pattern)?
            };
            Value::computed(Arc::new(matched))
        }
        Expr::Case {
            branches,
            otherwise,
        } => case(branches, otherwise.as_deref(), batch)?,
        Expr::Cast { expr, to } => {
            let v = evaluate(expr, batch)?;
            let literal = v.literal;
            Value {
                array: convert(v, &cast_target(*to))?,
                literal,
            }
        }
        Expr::Call { function, args } => {
            let args = args
                .iter()
                .map(|a| evaluate(a, batch))
                .collect::<Result<Vec<_>>>()?;
            call(*function, args)?
        }
    })
}

fn literal(l: &Literal, rows: usize) -> ArrayRef {
    match l {
        Literal::Null => Arc::new(NullArray::new(rows)),
        Literal::Bool(b) => Arc::new(BooleanArray::from(vec![*b; rows])),
        Literal::Int(i) => Arc::new(Int64Array::from_value(*i, rows)),
        Literal::Float(x) => Arc::new(Float64Array::from_value(*x, rows)),
        Literal::String(s) => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            s.as_str(),
            rows,
        ))),
    }
}

fn cast_target(to: CastType) -> DataType {
    match to {
        CastType::Int => DataType::Int32,
        CastType::Long => DataType::Int64,
        CastType::Double => DataType::Float64,
        CastType::String => DataType::Utf8,
        CastType::Boolean => DataType::Boolean,
        CastType::Date => DataType::Date32,
        CastType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// `v` as type `to`. A record's value that does not convert becomes NULL
/// (Spark's CAST); a literal that does not is an error, raised once.
pub(crate) fn convert(v: Value, to: &DataType) -> Result<ArrayRef> {
    if v.array.data_type() == to {
        return Ok(v.array);
    }
    if !v.literal || v.array.is_empty() {
        return Ok(cast_with_options(&v.array, to, &CastOptions::default())?);
    }
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let one = cast_with_options(&v.array.slice(0, 1), to, &strict).map_err(|e| {
        TransformError::Evaluate(format!(
            "the constant {} is not {}: {e}",
            display_first(&v.array),
            describe(to)
        ))
    })?;
    let zeros = UInt32Array::from(vec![0u32; v.array.len()]);
    Ok(take(&one, &zeros, None)?)
}

fn display_first(array: &ArrayRef) -> String {
    arrow::util::display::ArrayFormatter::try_new(array, &Default::default())
        .map(|f| format!("'{}'", f.value(0)))
        .unwrap_or_else(|_| "value".into())
}

fn overflow(e: arrow::error::ArrowError) -> TransformError {
    TransformError::Evaluate(format!("{e} (integer arithmetic is 64-bit)"))
}

pub(crate) fn numeric_operand(v: &Value, op: &str) -> Result<ArrayRef> {
    match v.kind() {
        Kind::Int => Ok(convert(v.clone_ref(), &DataType::Int64)?),
        Kind::Float => Ok(convert(v.clone_ref(), &DataType::Float64)?),
        Kind::Null => Ok(new_null_array(&DataType::Int64, v.array.len())),
        _ => Err(TransformError::Type(format!(
            "{op} needs a number, not {}",
            describe(v.array.data_type())
        ))),
    }
}

fn boolean_operand(v: &Value, op: &str) -> Result<BooleanArray> {
    match v.kind() {
        Kind::Bool | Kind::Null => {
            let b = convert(v.clone_ref(), &DataType::Boolean)?;
            Ok(b.as_any()
                .downcast_ref::<BooleanArray>()
                .cloned()
                .expect("cast to Boolean gives a BooleanArray"))
        }
        _ => Err(TransformError::Type(format!(
            "{op} needs a boolean, not {}",
            describe(v.array.data_type())
        ))),
    }
}

pub(crate) fn string_operand(v: &Value, op: &str) -> Result<ArrayRef> {
    match v.kind() {
        Kind::String | Kind::Null => convert(v.clone_ref(), &DataType::Utf8),
        _ => Err(TransformError::Type(format!(
            "{op} needs a string, not {}",
            describe(v.array.data_type())
        ))),
    }
}

impl Value {
    fn clone_ref(&self) -> Value {
        Value {
            array: self.array.clone(),
            literal: self.literal,
        }
    }
}

fn binary(op: BinaryOp, left: Value, right: Value) -> Result<Value> {
    let literal = left.literal && right.literal;
    let array: ArrayRef = match op {
        BinaryOp::And | BinaryOp::Or => {
            let name = if op == BinaryOp::And { "AND" } else { "OR" };
            let (l, r) = (
                boolean_operand(&left, name)?,
                boolean_operand(&right, name)?,
            );
            Arc::new(if op == BinaryOp::And {
                boolean::and_kleene(&l, &r)?
            } else {
                boolean::or_kleene(&l, &r)?
            })
        }
        op if op.is_comparison() => Arc::new(compare(op, left, right)?),
        op => arithmetic(op, &left, &right)?,
    };
    Ok(Value { array, literal })
}

fn arithmetic(op: BinaryOp, left: &Value, right: &Value) -> Result<ArrayRef> {
    let symbol = match op {
        BinaryOp::Add => "+",
        BinaryOp::Subtract => "-",
        BinaryOp::Multiply => "*",
        BinaryOp::Divide => "/",
        _ => "%",
    };
    let (l, r) = (
        numeric_operand(left, symbol)?,
        numeric_operand(right, symbol)?,
    );
    let float =
        op == BinaryOp::Divide || [&l, &r].iter().any(|a| a.data_type() == &DataType::Float64);
    let target = if float {
        DataType::Float64
    } else {
        DataType::Int64
    };
    let l = cast_with_options(&l, &target, &CastOptions::default())?;
    let r = cast_with_options(&r, &target, &CastOptions::default())?;
    match op {
        BinaryOp::Add => numeric::add(&l, &r),
        BinaryOp::Subtract => numeric::sub(&l, &r),
        BinaryOp::Multiply => numeric::mul(&l, &r),
        BinaryOp::Divide => numeric::div(&l, &nonzero(&r)?),
        _ => numeric::rem(&l, &nonzero(&r)?),
    }
    .map_err(overflow)
}

/// The divisor with its zeros made NULL: `x / 0` is NULL, as in Spark.
fn nonzero(divisor: &ArrayRef) -> Result<ArrayRef> {
    let zero = cast_with_options(
        &Int64Array::from(vec![0]),
        divisor.data_type(),
        &CastOptions::default(),
    )?;
    let is_zero = cmp::eq(divisor, &Scalar::new(zero))?;
    Ok(nullif(divisor, &is_zero)?)
}

/// `left op right` after bringing both sides to one type; NULL where either is.
pub(crate) fn compare(op: BinaryOp, left: Value, right: Value) -> Result<BooleanArray> {
    let rows = left.array.len();
    if left.kind() == Kind::Null || right.kind() == Kind::Null {
        return Ok(BooleanArray::new_null(rows));
    }
    let common = comparison_type(&left, &right)?;
    let (l, r) = (convert(left, &common)?, convert(right, &common)?);
    Ok(match op {
        BinaryOp::Eq => cmp::eq(&l, &r)?,
        BinaryOp::NotEq => cmp::neq(&l, &r)?,
        BinaryOp::Lt => cmp::lt(&l, &r)?,
        BinaryOp::LtEq => cmp::lt_eq(&l, &r)?,
        BinaryOp::Gt => cmp::gt(&l, &r)?,
        _ => cmp::gt_eq(&l, &r)?,
    })
}

/// The type two sides compare in: a string meets a date or timestamp as
/// one (`ts >= '2026-01-01'`), numbers meet as integers or doubles.
fn comparison_type(left: &Value, right: &Value) -> Result<DataType> {
    let (lt, rt) = (left.array.data_type(), right.array.data_type());
    match (left.kind(), right.kind()) {
        (Kind::Timestamp, Kind::String | Kind::Date) => Ok(lt.clone()),
        (Kind::String | Kind::Date, Kind::Timestamp) => Ok(rt.clone()),
        (Kind::Date, Kind::String) | (Kind::String, Kind::Date) => Ok(DataType::Date32),
        _ => common_type(&[left, right]).map_err(|_| {
            TransformError::Type(format!(
                "cannot compare {} with {}",
                describe(lt),
                describe(rt)
            ))
        }),
    }
}

/// The one type several values take (CASE results, coalesce, least):
/// integers widen to bigint, integers with doubles to double, a date with
/// a timestamp to the timestamp; NULL takes any type.
pub(crate) fn common_type(values: &[&Value]) -> Result<DataType> {
    let typed: Vec<&DataType> = values
        .iter()
        .map(|v| v.array.data_type())
        .filter(|t| kind(t) != Kind::Null)
        .collect();
    let kinds: Vec<Kind> = typed.iter().map(|t| kind(t)).collect();
    let all = |k: &[Kind]| kinds.iter().all(|x| k.contains(x));
    let Some(first) = typed.first() else {
        return Ok(DataType::Null);
    };
    if all(&[Kind::Int]) {
        return Ok(DataType::Int64);
    }
    if all(&[Kind::Int, Kind::Float]) {
        return Ok(DataType::Float64);
    }
    if all(&[Kind::Date]) {
        return Ok(DataType::Date32);
    }
    if all(&[Kind::Date, Kind::Timestamp]) {
        let ts = typed.iter().find(|t| kind(t) == Kind::Timestamp);
        return Ok(ts.map_or(DataType::Date32, |t| (*t).clone()));
    }
    if all(&[Kind::String]) {
        return Ok(DataType::Utf8);
    }
    if all(&[kinds[0]]) && kinds[0] != Kind::Other {
        return Ok((*first).clone());
    }
    let names: Vec<String> = typed.iter().map(|t| describe(t)).collect();
    Err(TransformError::Type(format!(
        "no common type for {}",
        names.join(" and ")
    )))
}

fn case(branches: &[(Expr, Expr)], otherwise: Option<&Expr>, batch: &RecordBatch) -> Result<Value> {
    let mut conditions = Vec::with_capacity(branches.len());
    let mut results = Vec::with_capacity(branches.len() + 1);
    for (when, then) in branches {
        let condition = evaluate(when, batch)?;
        // A NULL condition does not match, as in SQL.
        conditions.push(nulls_false(&boolean_operand(&condition, "WHEN")?));
        results.push(evaluate(then, batch)?);
    }
    results.push(match otherwise {
        Some(e) => evaluate(e, batch)?,
        None => Value::computed(Arc::new(NullArray::new(batch.num_rows()))),
    });
    let target = common_type(&results.iter().collect::<Vec<_>>())
        .map_err(|e| TransformError::Type(format!("the results of CASE: {e}")))?;
    let mut values = results
        .into_iter()
        .map(|v| convert(v, &target))
        .collect::<Result<Vec<_>>>()?;
    let mut out = values.pop().expect("the ELSE value");
    // The first matching branch wins: fold from the last.
    for (condition, then) in conditions.iter().zip(values).rev() {
        out = zip(condition, &then, &out)?;
    }
    Ok(Value::computed(out))
}
