//! The `transform` section: computed columns and a row filter over each
//! batch's records, in the expression language of `expression.rs`.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use std::collections::BTreeMap;

use crate::expression::Expr;
use crate::select::Select;
use crate::units::{ByteSize, HumanDuration};

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
    /// A SELECT over the rows (named `batch`), after `columns` and
    /// `where`: `SELECT tx_id, amount / 100.0 AS amount_eur, * EXCEPT
    /// (tx_id, amount, note) FROM batch WHERE amount > 0`. It chooses,
    /// renames and orders the columns the table gets; the Kafka columns
    /// named in `source.columns` stay even when it leaves them out. Its
    /// WHERE reads the rows' columns, not the SELECT's names. No GROUP BY,
    /// DISTINCT, ORDER BY, LIMIT or JOIN: they would depend on how the
    /// stream is cut into batches (docs/transform.md).
    #[serde(default)]
    pub sql: Option<String>,
}

/// A stream-static join: each record looks up its key in a Delta table
/// held in memory (Spark's broadcast join of a stream with a static table).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichSpec {
    /// URI of the dimension table (a Delta table, `file://`, `s3://` or an
    /// absolute path). It is read whole at start, and again when a new
    /// version of it is committed; each batch joins the one version it
    /// started with, recorded in its plan and commit, so a replay joins the
    /// same version.
    pub table: String,
    /// Columns the record and the dimension share, matched by equality. A
    /// record whose key is NULL matches nothing, as in SQL.
    pub on: Vec<String>,
    /// The dimension's columns added to each record, after its own.
    pub columns: Vec<String>,
    /// `left`: a record without a match keeps NULLs in the added columns.
    /// `inner`: it is dropped (counted in `numFilteredRows`). A key the
    /// dimension holds twice yields one row per match, as a join does.
    #[serde(default)]
    pub how: JoinKind,
    /// The most memory the loaded dimension may take; a larger one is
    /// refused at start or when a new version is read (the batches keep
    /// the version before it).
    #[serde(default = "default_max_dimension_size")]
    #[schemars(default = "default_max_dimension_size")]
    pub max_size: ByteSize,
    /// Storage options of the dimension's store. Default: `table.storage_options`.
    #[serde(default)]
    pub storage_options: Option<BTreeMap<String, String>>,
    /// How often a new version of the dimension is looked for.
    #[serde(default = "default_refresh_interval")]
    #[schemars(default = "default_refresh_interval")]
    pub refresh_interval: HumanDuration,
}

/// The kind of join of `enrich`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    #[default]
    Left,
    Inner,
}

fn default_max_dimension_size() -> ByteSize {
    ByteSize(256 << 20)
}

fn default_refresh_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
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
    pub select: Option<Select>,
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
        let select = self.sql.as_deref().map(Select::parse).transpose()?;
        Ok(ParsedTransform {
            columns,
            filter,
            select,
        })
    }
}
