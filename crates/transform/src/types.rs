//! The values of the expression language: their type families, the
//! conversions between them, and the typing rules several forms share
//! (comparison, a common type for CASE, coalesce, least and greatest).

use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array, new_null_array};
use arrow::compute::kernels::cmp;
use arrow::compute::{CastOptions, cast_with_options, prep_null_mask_filter, take};
use arrow::datatypes::DataType;
use tributary_spec::BinaryOp;

use crate::error::{Result, TransformError};

/// An evaluated expression: one value per row. `literal` marks values
/// computed from literals alone, whose failed conversions are errors (a
/// mistyped constant) rather than NULLs (a bad record).
#[derive(Clone)]
pub(crate) struct Value {
    pub array: ArrayRef,
    pub literal: bool,
}

impl Value {
    pub(crate) fn computed(array: ArrayRef) -> Value {
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

pub(crate) fn numeric_operand(v: &Value, op: &str) -> Result<ArrayRef> {
    match v.kind() {
        Kind::Int => Ok(convert(v.clone(), &DataType::Int64)?),
        Kind::Float => Ok(convert(v.clone(), &DataType::Float64)?),
        Kind::Null => Ok(new_null_array(&DataType::Int64, v.array.len())),
        _ => Err(TransformError::Type(format!(
            "{op} needs a number, not {}",
            describe(v.array.data_type())
        ))),
    }
}

pub(crate) fn boolean_operand(v: &Value, op: &str) -> Result<BooleanArray> {
    match v.kind() {
        Kind::Bool | Kind::Null => {
            let b = convert(v.clone(), &DataType::Boolean)?;
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
        Kind::String | Kind::Null => convert(v.clone(), &DataType::Utf8),
        _ => Err(TransformError::Type(format!(
            "{op} needs a string, not {}",
            describe(v.array.data_type())
        ))),
    }
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

/// The values in their common type (see `common_type`); `what` names the
/// form in the message when they have none.
pub(crate) fn to_common_type(values: Vec<Value>, what: &str) -> Result<Vec<ArrayRef>> {
    let target = common_type(&values.iter().collect::<Vec<_>>())
        .map_err(|e| TransformError::Type(format!("{what}: {e}")))?;
    values.into_iter().map(|v| convert(v, &target)).collect()
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
