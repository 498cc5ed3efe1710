//! The functions an expression can call, with Spark's meaning.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, StringArray, new_null_array,
};
use arrow::compute::kernels::boolean;
use arrow::compute::kernels::concat_elements::concat_elements_dyn;
use arrow::compute::kernels::zip::zip;
use arrow::compute::{DatePart, date_part, is_not_null, is_null};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use tributary_spec::{BinaryOp, Function};

use crate::error::{Result, TransformError};
use crate::types::{
    Kind, Value, compare, convert, describe, nulls_false, numeric_operand, string_operand,
    to_common_type,
};

pub(crate) fn call(function: Function, args: Vec<Value>) -> Result<Value> {
    let literal = args.iter().all(|a| a.literal);
    let array = match function {
        Function::Coalesce => coalesce(args)?,
        Function::Least => extreme(args, BinaryOp::Lt)?,
        Function::Greatest => extreme(args, BinaryOp::Gt)?,
        Function::Abs => abs(&numeric_operand(&args[0], "abs")?),
        Function::Round => round(&args)?,
        Function::Lower => map_strings(&args[0], "lower", str::to_lowercase)?,
        Function::Upper => map_strings(&args[0], "upper", str::to_uppercase)?,
        Function::Length => {
            let text = string_operand(&args[0], "length")?;
            // Characters, not bytes, as Spark counts.
            let lengths: Int32Array = text
                .as_string::<i32>()
                .iter()
                .map(|s| s.map(|s| i32::try_from(s.chars().count()).unwrap_or(i32::MAX)))
                .collect();
            Arc::new(lengths)
        }
        Function::Concat => {
            let mut parts = args.into_iter();
            let first = parts.next().expect("concat has an argument");
            let mut out = convert(first, &DataType::Utf8)?;
            for part in parts {
                out = concat_elements_dyn(&out, &convert(part, &DataType::Utf8)?)?;
            }
            out
        }
        Function::Date => {
            let v = &args[0];
            match v.kind() {
                Kind::Timestamp | Kind::Date | Kind::String | Kind::Null => {}
                _ => return Err(not_temporal("date", v)),
            }
            convert(v.clone(), &DataType::Date32)?
        }
        Function::Hour => {
            let v = &args[0];
            match v.kind() {
                Kind::Timestamp => date_part(&v.array, DatePart::Hour)?,
                Kind::Null => new_null_array(&DataType::Int32, v.array.len()),
                _ => return Err(not_temporal("hour", v)),
            }
        }
    };
    Ok(Value { array, literal })
}

fn not_temporal(name: &str, v: &Value) -> TransformError {
    TransformError::Type(format!(
        "{name} needs a timestamp, not {}",
        describe(v.array.data_type())
    ))
}

/// The first non-NULL argument, row by row.
fn coalesce(args: Vec<Value>) -> Result<ArrayRef> {
    let mut values = to_common_type(args, "coalesce")?;
    let mut out = values.pop().expect("coalesce has an argument");
    for v in values.into_iter().rev() {
        out = zip(&is_not_null(&v)?, &v, &out)?;
    }
    Ok(out)
}

/// least / greatest: the extreme of the non-NULL arguments (NULL when all
/// are), as Spark skips NULLs here.
fn extreme(args: Vec<Value>, wins: BinaryOp) -> Result<ArrayRef> {
    let mut values = to_common_type(args, "least / greatest")?.into_iter();
    let mut best = values.next().expect("least / greatest have arguments");
    for v in values {
        let better = compare(
            wins,
            Value::computed(v.clone()),
            Value::computed(best.clone()),
        )?;
        let take_new = boolean::or(
            &nulls_false(&better),
            &boolean::and(&is_null(&best)?, &is_not_null(&v)?)?,
        )?;
        best = zip(&take_new, &v, &best)?;
    }
    Ok(best)
}

fn abs(numbers: &ArrayRef) -> ArrayRef {
    if let Some(ints) = numbers.as_primitive_opt::<Int64Type>() {
        let out: Int64Array = ints.unary(i64::wrapping_abs);
        return Arc::new(out);
    }
    let floats = numbers.as_primitive::<Float64Type>();
    let out: Float64Array = floats.unary(f64::abs);
    Arc::new(out)
}

/// round(x [, digits]): half away from zero (Spark's HALF_UP).
fn round(args: &[Value]) -> Result<ArrayRef> {
    let numbers = numeric_operand(&args[0], "round")?;
    let digits = match args.get(1) {
        None => 0,
        Some(d) if d.literal && d.kind() == Kind::Int && !d.array.is_empty() => {
            let d = convert(d.clone(), &DataType::Int64)?;
            i32::try_from(d.as_primitive::<Int64Type>().value(0)).unwrap_or(0)
        }
        Some(d) if d.literal && d.kind() == Kind::Int => 0,
        Some(_) => {
            return Err(TransformError::Type(
                "round's digits must be an integer constant".into(),
            ));
        }
    };
    if numbers.data_type() == &DataType::Int64 && digits >= 0 {
        return Ok(numbers);
    }
    let floats = convert(Value::computed(numbers), &DataType::Float64)?;
    let scale = 10f64.powi(digits);
    let out: Float64Array = floats
        .as_primitive::<Float64Type>()
        .unary(|x| (x * scale).round() / scale);
    Ok(Arc::new(out))
}

fn map_strings(v: &Value, name: &str, f: fn(&str) -> String) -> Result<ArrayRef> {
    let text = string_operand(v, name)?;
    let out: StringArray = text.as_string::<i32>().iter().map(|s| s.map(f)).collect();
    Ok(Arc::new(out))
}
