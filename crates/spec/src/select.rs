//! `transform.sql`: one SELECT over each batch's rows (named `batch`), for
//! what computed columns and a filter cannot say: choosing, renaming and
//! reordering the columns. Its expressions are those of `expression.rs`.

use sqlparser::ast::{self, GroupByExpr, SetExpr, Statement, TableFactor};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::expression::{Expr, clean, convert};

/// The name a SELECT reads the batch's rows by.
const BATCH: &str = "batch";

/// The start of the names of Tributary's own columns (the Kafka positions
/// the operators read); a SELECT keeps them without naming them.
pub const INTERNAL_COLUMN_PREFIX: &str = "__tributary_";

/// A `transform.sql` SELECT, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// The output columns, in order.
    pub items: Vec<SelectItem>,
    /// The WHERE condition, over the batch's columns (not the aliases).
    pub filter: Option<Expr>,
}

/// One entry of the select list.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `expr AS name`, or a bare column (named after it).
    Column { name: String, expr: Expr },
    /// `*`, with the columns named by `EXCEPT (...)` / `EXCLUDE (...)` left out.
    All { except: Vec<String> },
}

impl Select {
    /// Parses `SELECT <items> FROM batch [WHERE <condition>]`, refusing
    /// anything else with what to use instead.
    pub fn parse(text: &str) -> Result<Select, String> {
        let statements =
            Parser::parse_sql(&GenericDialect {}, text).map_err(|e| clean(&e.to_string()))?;
        let query = match statements.as_slice() {
            [Statement::Query(query)] => query,
            [_] => return Err("only a SELECT is allowed here".into()),
            _ => return Err("write one SELECT statement".into()),
        };
        if query.with.is_some() {
            return Err("WITH is not supported: select from `batch` directly".into());
        }
        if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
            return Err(
                "ORDER BY, LIMIT and FETCH would depend on how the stream is cut into \
                 batches; select every row (a table has no order)"
                    .into(),
            );
        }
        let SetExpr::Select(select) = query.body.as_ref() else {
            return Err("UNION, INTERSECT, EXCEPT, VALUES and subqueries are not supported".into());
        };
        if select.distinct.is_some() {
            return Err(
                "DISTINCT over a batch depends on how the stream is cut into batches; \
                 use `dedup` (docs/event-time.md)"
                    .into(),
            );
        }
        let grouped = match &select.group_by {
            GroupByExpr::All(_) => true,
            GroupByExpr::Expressions(e, _) => !e.is_empty(),
        };
        if grouped || select.having.is_some() {
            return Err(
                "GROUP BY over a batch depends on how the stream is cut into batches; \
                 aggregate with `window` and `aggregations` (docs/event-time.md)"
                    .into(),
            );
        }
        check_from(&select.from)?;
        let items = select
            .projection
            .iter()
            .map(item)
            .collect::<Result<Vec<_>, _>>()?;
        let filter = select.selection.clone().map(convert).transpose()?;
        // Whatever clause is left (QUALIFY, LATERAL VIEW, INTO, ...) shows as
        // a difference from the query rebuilt of the parts understood.
        let understood = format!(
            "SELECT {} FROM {BATCH}{}",
            select
                .projection
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            select
                .selection
                .as_ref()
                .map_or(String::new(), |w| format!(" WHERE {w}"))
        );
        if query.to_string() != understood {
            return Err(format!(
                "only `SELECT <columns> FROM {BATCH} [WHERE <condition>]` is supported, not {query}"
            ));
        }
        Ok(Select { items, filter })
    }
}

fn check_from(from: &[ast::TableWithJoins]) -> Result<(), String> {
    let [table] = from else {
        return Err(format!(
            "select FROM {BATCH}, the batch's rows, and nothing else"
        ));
    };
    if !table.joins.is_empty() {
        return Err(
            "JOIN is not supported: join dimension tables with `enrich` (docs/transform.md)".into(),
        );
    }
    match &table.relation {
        TableFactor::Table {
            name, alias: None, ..
        } if name.to_string() == BATCH => Ok(()),
        TableFactor::Table { name, .. } if name.to_string() == BATCH => {
            Err(format!("{BATCH} takes no alias here"))
        }
        other => Err(format!(
            "select FROM {BATCH}, the batch's rows, not FROM {other}"
        )),
    }
}

fn item(item: &ast::SelectItem) -> Result<SelectItem, String> {
    match item {
        ast::SelectItem::UnnamedExpr(expr) => match convert(expr.clone())? {
            Expr::Column(name) => Ok(SelectItem::Column {
                name: name.clone(),
                expr: Expr::Column(name),
            }),
            _ => Err(format!("name the column {expr} with AS")),
        },
        ast::SelectItem::ExprWithAlias { expr, alias } => Ok(SelectItem::Column {
            name: alias.value.clone(),
            expr: convert(expr.clone())?,
        }),
        ast::SelectItem::Wildcard(options) => {
            if options.opt_ilike.is_some()
                || options.opt_replace.is_some()
                || options.opt_rename.is_some()
                || options.opt_alias.is_some()
            {
                return Err(format!(
                    "{item}: of the options of *, only EXCEPT and EXCLUDE are supported"
                ));
            }
            let mut except: Vec<String> = Vec::new();
            if let Some(e) = &options.opt_except {
                except.push(e.first_element.value.clone());
                except.extend(e.additional_elements.iter().map(|i| i.value.clone()));
            }
            match &options.opt_exclude {
                Some(ast::ExcludeSelectItem::Single(name)) => except.push(column_name(name)?),
                Some(ast::ExcludeSelectItem::Multiple(names)) => {
                    for name in names {
                        except.push(column_name(name)?);
                    }
                }
                None => {}
            }
            Ok(SelectItem::All { except })
        }
        ast::SelectItem::QualifiedWildcard(..) => Err(format!("{item}: write * alone")),
        ast::SelectItem::ExprWithAliases { .. } => Err(format!("{item}: one name per column")),
    }
}

/// The column an EXCLUDE names (one identifier, unquoted).
fn column_name(name: &ast::ObjectName) -> Result<String, String> {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .map(|ident| ident.value.clone())
            .ok_or_else(|| format!("{name} is not a column name")),
        _ => Err(format!(
            "{name} names a field inside a column; name a column"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{Select, SelectItem};
    use crate::expression::Expr;

    #[test]
    fn a_select_over_the_batch_is_its_columns_and_condition() {
        let s = Select::parse(
            "SELECT tx_id, amount_cents / 100.0 AS amount, * EXCEPT (note, ts) \
             FROM batch WHERE amount_cents > 0",
        )
        .unwrap();
        assert_eq!(s.items.len(), 3);
        assert_eq!(
            s.items[0],
            SelectItem::Column {
                name: "tx_id".into(),
                expr: Expr::Column("tx_id".into())
            }
        );
        assert!(matches!(&s.items[1], SelectItem::Column { name, .. } if name == "amount"));
        assert_eq!(
            s.items[2],
            SelectItem::All {
                except: vec!["note".into(), "ts".into()]
            }
        );
        assert_eq!(s.filter, Some(Expr::parse("amount_cents > 0").unwrap()));
        let duck = Select::parse("select * exclude (note, `odd name`) from batch").unwrap();
        assert_eq!(
            duck.items,
            [SelectItem::All {
                except: vec!["note".into(), "odd name".into()]
            }]
        );
    }

    #[test]
    fn what_a_batch_cannot_answer_is_refused_with_what_to_use() {
        for (sql, expected) in [
            (
                "SELECT card_id, count(*) AS n FROM batch GROUP BY card_id",
                "window",
            ),
            ("SELECT DISTINCT card_id FROM batch", "dedup"),
            ("SELECT * FROM batch ORDER BY ts", "ORDER BY"),
            ("SELECT * FROM batch LIMIT 10", "LIMIT"),
            ("SELECT * FROM batch JOIN tiers USING (card_id)", "enrich"),
            ("SELECT * FROM transactions", "FROM batch"),
            ("SELECT * FROM batch b", "alias"),
            ("SELECT * FROM batch UNION ALL SELECT * FROM batch", "UNION"),
            (
                "SELECT amount * 2 FROM batch",
                "name the column amount * 2 with AS",
            ),
            (
                "SELECT coalesce(amount, 0) OVER (PARTITION BY card_id) AS n FROM batch",
                "OVER",
            ),
            ("SELECT * FROM batch; SELECT * FROM batch", "one SELECT"),
            ("DELETE FROM batch", "only a SELECT"),
            ("SELECT * FROM batch QUALIFY ts > 0", "only `SELECT"),
            ("SELECT b.* FROM batch", "write * alone"),
            ("SELECT amount FROM batch WHERE", "Expected"),
        ] {
            let err = Select::parse(sql).unwrap_err();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }
}
