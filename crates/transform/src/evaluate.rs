//! Evaluates an expression over a batch with Arrow's kernels, typed as Spark
//! types it: integer arithmetic is 64-bit and fails on overflow, `/` always
//! gives a double, division by zero gives NULL, and a comparison with NULL
//! is NULL (so a filter does not select its row).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, NullArray, RecordBatch, Scalar,
    StringArray,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::compute::{CastOptions, cast_with_options, is_not_null, is_null, like, nlike, nullif};
use arrow::datatypes::{DataType, TimeUnit};
use tributary_spec::{BinaryOp, CastType, Expr, Literal};

use crate::error::{Result, TransformError};
use crate::functions::call;
use crate::types::{
    Value, boolean_operand, compare, convert, nulls_false, numeric_operand, string_operand,
    to_common_type,
};

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

fn overflow(e: arrow::error::ArrowError) -> TransformError {
    TransformError::Evaluate(format!("{e} (integer arithmetic is 64-bit)"))
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
    let mut values = to_common_type(results, "the results of CASE")?;
    let mut out = values.pop().expect("the ELSE value");
    // The first matching branch wins: fold from the last.
    for (condition, then) in conditions.iter().zip(values).rev() {
        out = zip(condition, &then, &out)?;
    }
    Ok(Value::computed(out))
}
