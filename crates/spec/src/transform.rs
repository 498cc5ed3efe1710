//! The `transform` section: computed columns and a row filter over each
//! batch's records, in the expression language of `expression.rs`.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::expression::Expr;
use crate::model::is_identifier;

/// Computed columns and a row filter, applied to every record before the
/// event-time operators and the table (Spark's `withColumn` and `where` on
/// the stream). See docs/transform.md for the expression language.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// New columns, in this order: `name: "expression"`. An expression may
    /// read the record's columns and the computed columns above it
    /// (`amount_eur: "amount * 0.92"`, `is_big: "amount_eur > 1000"`). The
    /// columns are added after the record's.
    #[serde(default)]
    pub columns: ComputedColumns,
    /// Only records for which this condition is true are kept (`status <>
    /// 'test' AND amount > 0`); it may read the computed columns. Records
    /// it drops are counted in the progress events (`filtered_rows`).
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

/// Named expressions in the order written (a YAML map keeps its order here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComputedColumns(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for ComputedColumns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = ComputedColumns;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of column name to expression")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<ComputedColumns, M::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((name, expression)) = map.next_entry::<String, String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "column {name:?} is computed twice"
                        )));
                    }
                    out.push((name, expression));
                }
                Ok(ComputedColumns(out))
            }
        }
        d.deserialize_map(InOrder)
    }
}

impl Serialize for ComputedColumns {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(n, e)| (n, e)))
    }
}

impl JsonSchema for ComputedColumns {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ComputedColumns".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "Column name to SQL expression, evaluated in the order written.",
            "additionalProperties": { "type": "string" }
        })
    }
}

/// A `transform` section, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTransform {
    /// (name, expression), in the order written.
    pub columns: Vec<(String, Expr)>,
    pub filter: Option<Expr>,
}

impl TransformSpec {
    /// The parsed computed columns and filter; valid after `validate()`.
    pub fn parsed(&self) -> Result<ParsedTransform, String> {
        let columns = self
            .columns
            .0
            .iter()
            .map(|(name, text)| Ok((name.clone(), Expr::parse(text)?)))
            .collect::<Result<_, String>>()?;
        let filter = self.filter.as_deref().map(Expr::parse).transpose()?;
        Ok(ParsedTransform { columns, filter })
    }

    pub(crate) fn validate(&self, out: &mut Vec<(String, String)>) {
        for (name, text) in &self.columns.0 {
            let path = format!("transform.columns.{name}");
            if !is_identifier(name) {
                out.push((
                    path.clone(),
                    format!("invalid column name {name:?}: use letters, digits and '_'"),
                ));
            }
            if let Err(m) = Expr::parse(text) {
                out.push((path, format!("invalid expression {text:?}: {m}")));
            }
        }
        if let Some(text) = &self.filter
            && let Err(m) = Expr::parse(text)
        {
            out.push((
                "transform.where".into(),
                format!("invalid condition {text:?}: {m}"),
            ));
        }
    }
}
