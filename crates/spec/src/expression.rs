//! The expression language of `transform` and `republish.filter`: a subset of
//! SQL's scalar expressions, parsed with sqlparser (already in the build
//! through deltalake) into a small tree that names exactly what Tributary
//! evaluates, so anything else is refused when the spec is read, not when a
//! batch meets it.

use std::fmt;

use sqlparser::ast::{self, BinaryOperator, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Column(String),
    Literal(Literal),
    Negate(Box<Expr>),
    Not(Box<Expr>),
    Binary {
        left: Box<Expr>,
        op: BinaryOp,
        right: Box<Expr>,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
    },
    /// `CASE WHEN c THEN r ... [ELSE e] END`; the simple form
    /// `CASE x WHEN v THEN r` is parsed into `WHEN x = v`.
    Case {
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast {
        expr: Box<Expr>,
        to: CastType,
    },
    Call {
        function: Function,
        args: Vec<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq
        )
    }
}

/// The types a `CAST` can name (Spark's names, and SQL's synonyms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastType {
    Int,
    Long,
    Double,
    String,
    Boolean,
    Date,
    Timestamp,
}

/// The functions an expression can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Coalesce,
    Abs,
    Round,
    Least,
    Greatest,
    Lower,
    Upper,
    Length,
    Concat,
    /// `date(ts)` / `to_date(ts)`: the UTC date of a timestamp.
    Date,
    Hour,
}

const FUNCTIONS: &[(&str, Function, usize, Option<usize>)] = &[
    ("coalesce", Function::Coalesce, 1, None),
    ("abs", Function::Abs, 1, Some(1)),
    ("round", Function::Round, 1, Some(2)),
    ("least", Function::Least, 2, None),
    ("greatest", Function::Greatest, 2, None),
    ("lower", Function::Lower, 1, Some(1)),
    ("upper", Function::Upper, 1, Some(1)),
    ("length", Function::Length, 1, Some(1)),
    ("concat", Function::Concat, 1, None),
    ("date", Function::Date, 1, Some(1)),
    ("to_date", Function::Date, 1, Some(1)),
    ("hour", Function::Hour, 1, Some(1)),
];

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = FUNCTIONS
            .iter()
            .find(|(_, function, ..)| function == self)
            .map_or("?", |(name, ..)| name);
        f.write_str(name)
    }
}

impl Expr {
    /// Parses one expression, refusing anything the evaluator does not know.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| clean(&e.to_string()))?;
        let parsed = parser.parse_expr().map_err(|e| clean(&e.to_string()))?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(format!(
                "unexpected {} after the expression (one expression, no `;`)",
                next.token
            ));
        }
        convert(parsed)
    }

    /// The columns the expression reads, in order of appearance.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit_columns(&mut out);
        out
    }

    fn visit_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        let mut visit = |e: &'a Expr| e.visit_columns(out);
        match self {
            Expr::Column(c) => out.push(c),
            Expr::Literal(_) => {}
            Expr::Negate(e) | Expr::Not(e) | Expr::Cast { expr: e, .. } => visit(e),
            Expr::IsNull { expr, .. } | Expr::Like { expr, .. } => visit(expr),
            Expr::Binary { left, right, .. } => {
                visit(left);
                visit(right);
            }
            Expr::InList { expr, list, .. } => {
                visit(expr);
                list.iter().for_each(visit);
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                visit(expr);
                visit(low);
                visit(high);
            }
            Expr::Case {
                branches,
                otherwise,
            } => {
                for (when, then) in branches {
                    visit(when);
                    visit(then);
                }
                if let Some(e) = otherwise {
                    visit(e);
                }
            }
            Expr::Call { args, .. } => args.iter().for_each(visit),
        }
    }
}

/// sqlparser's messages start with "sql parser error: "; the spec's path
/// already says where.
pub(crate) fn clean(message: &str) -> String {
    message
        .trim_start_matches("sql parser error: ")
        .trim()
        .to_string()
}

fn boxed(e: ast::Expr) -> Result<Box<Expr>, String> {
    convert(e).map(Box::new)
}

pub(crate) fn convert(e: ast::Expr) -> Result<Expr, String> {
    use ast::Expr as E;
    Ok(match e {
        // Spark reads "x" as a string, SQL as a name: refuse the ambiguity.
        E::Identifier(ident) if ident.quote_style == Some('"') => {
            let text = ident.value;
            return Err(format!(
                "\"{text}\" is in double quotes; strings take single quotes ('{text}') and \
                 column names backticks (`{text}`)"
            ));
        }
        E::Identifier(ident) => Expr::Column(ident.value),
        E::Nested(inner) => convert(*inner)?,
        E::Value(v) => Expr::Literal(literal(v.value)?),
        E::TypedString(t) => {
            let to = cast_type(&t.data_type)?;
            let text = t
                .value
                .into_string()
                .ok_or_else(|| format!("{} needs a quoted string", t.data_type))?;
            Expr::Cast {
                expr: Box::new(Expr::Literal(Literal::String(text))),
                to,
            }
        }
        E::UnaryOp { op, expr } => match op {
            UnaryOperator::Minus => match convert(*expr)? {
                Expr::Literal(Literal::Int(i)) => Expr::Literal(Literal::Int(-i)),
                Expr::Literal(Literal::Float(x)) => Expr::Literal(Literal::Float(-x)),
                other => Expr::Negate(Box::new(other)),
            },
            UnaryOperator::Plus => convert(*expr)?,
            UnaryOperator::Not => Expr::Not(boxed(*expr)?),
            other => return Err(format!("unsupported operator {other}")),
        },
        E::BinaryOp { left, op, right } => Expr::Binary {
            left: boxed(*left)?,
            op: binary_op(&op)?,
            right: boxed(*right)?,
        },
        // `x IS [NOT] TRUE|FALSE` is never NULL: coalesce(x, false).
        E::IsTrue(expr) => is_bool(*expr, true, false)?,
        E::IsNotTrue(expr) => is_bool(*expr, true, true)?,
        E::IsFalse(expr) => is_bool(*expr, false, false)?,
        E::IsNotFalse(expr) => is_bool(*expr, false, true)?,
        E::IsNull(expr) => Expr::IsNull {
            expr: boxed(*expr)?,
            negated: false,
        },
        E::IsNotNull(expr) => Expr::IsNull {
            expr: boxed(*expr)?,
            negated: true,
        },
        E::InList {
            expr,
            list,
            negated,
        } => Expr::InList {
            expr: boxed(*expr)?,
            list: list.into_iter().map(convert).collect::<Result<_, _>>()?,
            negated,
        },
        E::Between {
            expr,
            negated,
            low,
            high,
        } => Expr::Between {
            expr: boxed(*expr)?,
            low: boxed(*low)?,
            high: boxed(*high)?,
            negated,
        },
        E::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => match *pattern {
            E::Value(ast::ValueWithSpan {
                value: Value::SingleQuotedString(pattern),
                ..
            }) => Expr::Like {
                expr: boxed(*expr)?,
                pattern,
                negated,
            },
            other => return Err(format!("LIKE needs a quoted pattern, not {other}")),
        },
        E::Case {
            operand,
            conditions,
            else_result,
            ..
        } => case(operand, conditions, else_result)?,
        E::Cast {
            kind: ast::CastKind::Cast,
            expr,
            data_type,
            format: None,
            ..
        } => Expr::Cast {
            expr: boxed(*expr)?,
            to: cast_type(&data_type)?,
        },
        E::Function(f) => call(f)?,
        E::CompoundIdentifier(parts) => {
            let name: Vec<String> = parts.into_iter().map(|p| p.value).collect();
            return Err(format!(
                "{} names a field inside a column; expressions read top-level columns",
                name.join(".")
            ));
        }
        other => return Err(format!("unsupported expression {other}")),
    })
}

fn is_bool(expr: ast::Expr, value: bool, negated: bool) -> Result<Expr, String> {
    let expr = convert(expr)?;
    let matched = Expr::Call {
        function: Function::Coalesce,
        args: vec![
            if value {
                expr
            } else {
                Expr::Not(Box::new(expr))
            },
            Expr::Literal(Literal::Bool(false)),
        ],
    };
    Ok(if negated {
        Expr::Not(Box::new(matched))
    } else {
        matched
    })
}

fn case(
    operand: Option<Box<ast::Expr>>,
    conditions: Vec<ast::CaseWhen>,
    else_result: Option<Box<ast::Expr>>,
) -> Result<Expr, String> {
    let operand = operand.map(|o| convert(*o)).transpose()?;
    let branches = conditions
        .into_iter()
        .map(|w| {
            let condition = convert(w.condition)?;
            let when = match &operand {
                Some(x) => Expr::Binary {
                    left: Box::new(x.clone()),
                    op: BinaryOp::Eq,
                    right: Box::new(condition),
                },
                None => condition,
            };
            Ok((when, convert(w.result)?))
        })
        .collect::<Result<_, String>>()?;
    Ok(Expr::Case {
        branches,
        otherwise: else_result.map(|e| boxed(*e)).transpose()?,
    })
}

fn call(f: ast::Function) -> Result<Expr, String> {
    let name = f.name.to_string().to_ascii_lowercase();
    let Some(&(_, function, min, max)) = FUNCTIONS.iter().find(|(n, ..)| *n == name) else {
        let known: Vec<&str> = FUNCTIONS.iter().map(|(n, ..)| *n).collect();
        return Err(format!(
            "unknown function {name}; the functions are: {}",
            known.join(", ")
        ));
    };
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(format!(
            "{name}: FILTER, OVER and WITHIN GROUP are not supported"
        ));
    }
    let ast::FunctionArguments::List(list) = f.args else {
        return Err(format!("{name} needs its arguments in parentheses"));
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return Err(format!(
            "{name}: DISTINCT and argument clauses are not supported"
        ));
    }
    let args = list
        .args
        .into_iter()
        .map(|a| match a {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => convert(e),
            other => Err(format!("{name}: unsupported argument {other}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let arity_ok = args.len() >= min && max.is_none_or(|max| args.len() <= max);
    if !arity_ok {
        let wanted = match max {
            Some(max) if max == min => format!("{min}"),
            Some(max) => format!("{min} to {max}"),
            None => format!("at least {min}"),
        };
        return Err(format!(
            "{name} takes {wanted} argument(s), not {}",
            args.len()
        ));
    }
    Ok(Expr::Call { function, args })
}

fn literal(v: Value) -> Result<Literal, String> {
    Ok(match v {
        Value::Null => Literal::Null,
        Value::Boolean(b) => Literal::Bool(b),
        Value::SingleQuotedString(s) => Literal::String(s),
        Value::Number(n, _) => {
            if n.contains(['.', 'e', 'E']) {
                Literal::Float(n.parse().map_err(|_| format!("invalid number {n}"))?)
            } else {
                Literal::Int(
                    n.parse()
                        .map_err(|_| format!("{n} does not fit a 64-bit integer"))?,
                )
            }
        }
        Value::DoubleQuotedString(s) => {
            return Err(format!(
                "\"{s}\" is in double quotes; strings take single quotes ('{s}')"
            ));
        }
        other => return Err(format!("unsupported literal {other}")),
    })
}

fn binary_op(op: &BinaryOperator) -> Result<BinaryOp, String> {
    Ok(match op {
        BinaryOperator::Plus => BinaryOp::Add,
        BinaryOperator::Minus => BinaryOp::Subtract,
        BinaryOperator::Multiply => BinaryOp::Multiply,
        BinaryOperator::Divide => BinaryOp::Divide,
        BinaryOperator::Modulo => BinaryOp::Modulo,
        BinaryOperator::Eq => BinaryOp::Eq,
        BinaryOperator::NotEq => BinaryOp::NotEq,
        BinaryOperator::Lt => BinaryOp::Lt,
        BinaryOperator::LtEq => BinaryOp::LtEq,
        BinaryOperator::Gt => BinaryOp::Gt,
        BinaryOperator::GtEq => BinaryOp::GtEq,
        BinaryOperator::And => BinaryOp::And,
        BinaryOperator::Or => BinaryOp::Or,
        other => return Err(format!("unsupported operator {other}")),
    })
}

fn cast_type(t: &ast::DataType) -> Result<CastType, String> {
    let name = t.to_string().to_ascii_lowercase();
    Ok(match name.as_str() {
        "int" | "integer" => CastType::Int,
        "bigint" | "long" => CastType::Long,
        "double" | "float" | "real" | "double precision" => CastType::Double,
        "string" | "text" | "varchar" => CastType::String,
        "boolean" | "bool" => CastType::Boolean,
        "date" => CastType::Date,
        "timestamp" => CastType::Timestamp,
        _ => {
            return Err(format!(
                "cannot cast to {t}; the types are int, bigint, double, string, boolean, date, timestamp"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(c: &str) -> Box<Expr> {
        Box::new(Expr::Column(c.into()))
    }

    #[test]
    fn parses_the_filter_syntax_of_before() {
        let e = Expr::parse("flag = true and date >= '2026-01-01' or NOT n IS NULL").unwrap();
        let Expr::Binary {
            op: BinaryOp::Or,
            left,
            right,
        } = e
        else {
            panic!("OR binds loosest: {e:?}")
        };
        assert_eq!(left.columns(), ["flag", "date"]);
        assert_eq!(
            *right,
            Expr::Not(Box::new(Expr::IsNull {
                expr: col("n"),
                negated: false
            }))
        );
    }

    #[test]
    fn parses_arithmetic_case_cast_and_calls() {
        let e = Expr::parse(
            "coalesce(0.1 * tx_count + CASE tier WHEN 'high' THEN 2 ELSE -1 END, 0.0) > 5.0",
        )
        .unwrap();
        assert_eq!(e.columns(), ["tx_count", "tier"]);
        assert_eq!(Expr::parse("`my col` > 1").unwrap().columns(), ["my col"]);
        let e = Expr::parse("CAST(amount AS bigint) BETWEEN 1 AND 9").unwrap();
        assert!(matches!(e, Expr::Between { negated: false, .. }), "{e:?}");
        assert_eq!(
            Expr::parse("TIMESTAMP '2026-01-01 00:00:00'").unwrap(),
            Expr::Cast {
                expr: Box::new(Expr::Literal(Literal::String("2026-01-01 00:00:00".into()))),
                to: CastType::Timestamp
            }
        );
    }

    #[test]
    fn double_quotes_and_is_true() {
        let message = Expr::parse("merchant = \"casino\"").unwrap_err();
        assert!(message.contains("single quotes"), "{message}");
        assert_eq!(
            Expr::parse("flag IS NOT TRUE").unwrap(),
            Expr::Not(Box::new(Expr::Call {
                function: Function::Coalesce,
                args: vec![
                    Expr::Column("flag".into()),
                    Expr::Literal(Literal::Bool(false))
                ]
            }))
        );
    }

    #[test]
    fn refuses_what_it_cannot_evaluate() {
        for (text, expected) in [
            ("flag = = true", "Expected: an expression"),
            ("a = 1; drop table t", "after the expression"),
            ("sum(a)", "unknown function sum"),
            ("abs(a, b)", "abs takes 1 argument(s), not 2"),
            ("a = \"x\"", "strings take single quotes"),
            ("(SELECT 1)", "unsupported expression"),
            ("card.id = 1", "names a field inside a column"),
            ("CAST(a AS decimal(10, 2))", "cannot cast to"),
            ("99999999999999999999", "does not fit"),
        ] {
            let message = Expr::parse(text).unwrap_err();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
