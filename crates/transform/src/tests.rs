use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use tributary_spec::{ComputedColumns, Expr, TransformSpec};

use super::*;

/// Card transactions: amount (int), tier (string), score (double), ts.
fn rows() -> RecordBatch {
    let ts = TimestampMicrosecondArray::from(vec![
        Some(1_767_225_600_000_000), // 2026-01-01T00:00:00Z
        Some(1_767_232_800_000_000), // 02:00
        None,
        Some(1_767_315_600_000_000), // 2026-01-02T01:00
    ])
    .with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![Some(10), Some(0), Some(7), None])),
        Arc::new(StringArray::from(vec![
            Some("high"),
            Some("low"),
            None,
            Some("mid"),
        ])),
        Arc::new(Float64Array::from(vec![
            Some(1.5),
            None,
            Some(-2.25),
            Some(4.0),
        ])),
        Arc::new(ts),
    ];
    let schema = Schema::new(vec![
        Field::new("amount", DataType::Int32, true),
        Field::new("tier", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("ts", columns[3].data_type().clone(), true),
    ]);
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

fn transform(columns: &[(&str, &str)], filter: Option<&str>) -> Transform {
    transform_with_sql(columns, filter, None)
}

fn transform_with_sql(
    columns: &[(&str, &str)],
    filter: Option<&str>,
    sql: Option<&str>,
) -> Transform {
    Transform::new(&TransformSpec {
        columns: ComputedColumns(
            columns
                .iter()
                .map(|(n, e)| (n.to_string(), e.to_string()))
                .collect(),
        ),
        filter: filter.map(str::to_string),
        sql: sql.map(str::to_string),
    })
    .unwrap()
}

fn column(expr: &str) -> ArrayRef {
    let t = transform(&[("out", expr)], None);
    let out = t.apply(&rows()).unwrap().rows;
    out.column_by_name("out").unwrap().clone()
}

fn ints(a: &ArrayRef) -> Vec<Option<i64>> {
    a.as_primitive::<Int64Type>().iter().collect()
}

fn floats(a: &ArrayRef) -> Vec<Option<f64>> {
    a.as_primitive::<Float64Type>().iter().collect()
}

fn bools(a: &ArrayRef) -> Vec<Option<bool>> {
    a.as_boolean().iter().collect()
}

fn strings(a: &ArrayRef) -> Vec<Option<String>> {
    a.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

#[test]
fn arithmetic_is_spark_typed() {
    assert_eq!(
        ints(&column("amount * 2 + 1")),
        [Some(21), Some(1), Some(15), None]
    );
    // `/` gives a double; a zero divisor gives NULL.
    assert_eq!(
        floats(&column("10 / amount")),
        [Some(1.0), None, Some(10.0 / 7.0), None]
    );
    assert_eq!(
        ints(&column("amount % 4")),
        [Some(2), Some(0), Some(3), None]
    );
    assert_eq!(ints(&column("amount % 0")), [None, None, None, None]);
    assert_eq!(
        floats(&column("amount + score")),
        [Some(11.5), None, Some(4.75), None]
    );
    assert_eq!(
        ints(&column("-amount")),
        [Some(-10), Some(0), Some(-7), None]
    );
    let overflow = transform(&[("out", "9223372036854775807 + amount")], None)
        .apply(&rows())
        .err()
        .unwrap()
        .to_string();
    assert!(
        overflow.contains("transform.columns.out") && overflow.contains("overflow"),
        "{overflow}"
    );
}

#[test]
fn comparisons_and_logic_follow_sql_nulls() {
    assert_eq!(
        bools(&column("amount > 5 AND tier <> 'low'")),
        [Some(true), Some(false), None, None]
    );
    assert_eq!(
        bools(&column("amount > 5 OR score > 3")),
        [Some(true), None, Some(true), Some(true)]
    );
    assert_eq!(
        bools(&column("tier IN ('high', 'mid')")),
        [Some(true), Some(false), None, Some(true)]
    );
    assert_eq!(
        bools(&column("amount NOT BETWEEN 1 AND 8")),
        [Some(true), Some(true), Some(false), None]
    );
    assert_eq!(
        bools(&column("tier LIKE 'h%'")),
        [Some(true), Some(false), None, Some(false)]
    );
    assert_eq!(
        bools(&column("score IS NULL")),
        [Some(false), Some(true), Some(false), Some(false)]
    );
    // Integers meet doubles as doubles; timestamps meet strings as timestamps.
    assert_eq!(
        bools(&column("amount >= 7.5")),
        [Some(true), Some(false), Some(false), None]
    );
    assert_eq!(
        bools(&column("ts >= '2026-01-01T01:00:00Z'")),
        [Some(false), Some(true), None, Some(true)]
    );
    assert_eq!(
        bools(&column("date(ts) = DATE '2026-01-02'")),
        [Some(false), Some(false), None, Some(true)]
    );
}

#[test]
fn case_coalesce_and_functions() {
    assert_eq!(
        floats(&column(
            "CASE tier WHEN 'high' THEN 2 WHEN 'mid' THEN 1.5 ELSE 0 END"
        )),
        [Some(2.0), Some(0.0), Some(0.0), Some(1.5)]
    );
    assert_eq!(
        floats(&column("coalesce(score, amount, -1)")),
        [Some(1.5), Some(0.0), Some(-2.25), Some(4.0)]
    );
    assert_eq!(
        ints(&column("greatest(amount, 5)")),
        [Some(10), Some(5), Some(7), Some(5)]
    );
    assert_eq!(
        ints(&column("least(amount, NULL)")),
        [Some(10), Some(0), Some(7), None]
    );
    assert_eq!(
        floats(&column("abs(score)")),
        [Some(1.5), None, Some(2.25), Some(4.0)]
    );
    assert_eq!(
        floats(&column("round(score * 1.01, 1)")),
        [Some(1.5), None, Some(-2.3), Some(4.0)]
    );
    assert_eq!(
        strings(&column("concat(upper(tier), '-', CAST(amount AS string))")),
        [Some("HIGH-10".into()), Some("LOW-0".into()), None, None]
    );
    let hours = column("hour(ts)");
    let hours: Vec<Option<i32>> = hours
        .as_primitive::<arrow::datatypes::Int32Type>()
        .iter()
        .collect();
    assert_eq!(hours, [Some(0), Some(2), None, Some(1)]);
    // A record's value that does not convert is NULL, as Spark's CAST.
    assert_eq!(
        column("CAST(tier AS bigint)").null_count(),
        4,
        "no tier is a number"
    );
}

#[test]
fn later_columns_read_earlier_ones_and_the_filter_reads_both() {
    let t = transform(
        &[
            ("risk", "coalesce(amount * 0.5, 0.0)"),
            ("suspicious", "risk > 3"),
        ],
        Some("suspicious AND tier IS NOT NULL"),
    );
    let out = t.apply(&rows()).unwrap();
    assert_eq!(out.filtered, 3);
    assert_eq!(out.rows.num_rows(), 1);
    assert_eq!(
        floats(out.rows.column_by_name("risk").unwrap()),
        [Some(5.0)]
    );
    let checked = t.check(&rows().schema());
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    let schema = checked.schema;
    assert_eq!(schema.as_ref(), out.rows.schema().as_ref());
    assert_eq!(
        schema.field_with_name("suspicious").unwrap().data_type(),
        &DataType::Boolean
    );
}

#[test]
fn check_names_every_problem_with_its_path() {
    let t = transform(
        &[
            ("a", "amount + tier"),
            ("b", "nope * 2"),
            ("c", "ts > 'not a time'"),
            ("amount", "1"),
            ("d", "NULL"),
            ("e", "NOT amount"),
        ],
        Some("score + 1"),
    );
    let checked = t.check(&rows().schema());
    assert_eq!(checked.failed, ["a", "b", "c", "amount", "d", "e"]);
    let problems = checked.problems;
    let expected = [
        ("transform.columns.a", "+ needs a number, not a string"),
        ("transform.columns.b", "unknown column \"nope\""),
        (
            "transform.columns.c",
            "the constant 'not a time' is not a timestamp",
        ),
        ("transform.columns.amount", "already a column"),
        ("transform.columns.d", "always NULL"),
        ("transform.columns.e", "NOT needs a boolean, not an integer"),
        ("transform.where", "must be true or false, not a double"),
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:?}");
    for ((path, message), (want_path, want)) in problems.iter().zip(expected) {
        assert_eq!(path, want_path);
        assert!(message.contains(want), "{path}: {message}");
    }
}

#[test]
fn select_keeps_rows_where_the_condition_is_true() {
    let condition = Expr::parse("score > 0 OR tier = 'mid'").unwrap();
    let kept = select(&condition, &rows()).unwrap();
    let amounts: Vec<Option<i32>> = kept
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int32Type>()
        .iter()
        .collect();
    assert_eq!(amounts, [Some(10), None]);
    let wrong = Expr::parse("tier > 1").unwrap();
    let message = check_condition(&wrong, &rows().schema())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("cannot compare a string with an integer"),
        "{message}"
    );
}

/// The republish filters written before the expression language (column,
/// comparison, literal) select what they selected then.
#[test]
fn the_republish_filters_of_before_keep_their_meaning() {
    use arrow::array::{BooleanArray, Int64Array};
    let ts = TimestampMicrosecondArray::from(vec![0, 86_400_000_000, 172_800_000_000, 0])
        .with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None])),
        Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
        ])),
        Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b'c"),
            None,
            Some("a"),
        ])),
        Arc::new(ts),
    ];
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("ts", columns[3].data_type().clone(), true),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
    let ids = |text: &str| -> Vec<Option<i64>> {
        let kept = select(&Expr::parse(text).unwrap(), &batch).unwrap();
        kept.column(0).as_primitive::<Int64Type>().iter().collect()
    };
    assert_eq!(ids("flag = true"), [Some(1), None]);
    // NULL never compares true, not even under NOT.
    assert_eq!(ids("NOT flag = true"), [Some(2)]);
    assert_eq!(ids("id > 1.5"), [Some(2), Some(3)]);
    assert_eq!(ids("id >= 2 AND name IS NOT NULL"), [Some(2)]);
    assert_eq!(ids("name = 'b''c' OR id IS NULL"), [Some(2), None]);
    assert_eq!(ids("ts >= '1970-01-02T00:00:00Z'"), [Some(2), Some(3)]);
    assert_eq!(ids("id <> 1"), [Some(2), Some(3)]);
    for (text, message) in [
        ("flag = 'maybe'", "cannot compare a boolean with a string"),
        ("nope = 1", "unknown column \"nope\""),
    ] {
        let err = select(&Expr::parse(text).unwrap(), &batch).unwrap_err();
        assert!(err.to_string().contains(message), "{text}: {err}");
    }
}

#[test]
fn a_select_chooses_renames_and_orders_the_columns_after_columns_and_where() {
    let t = transform_with_sql(
        &[("doubled", "amount * 2")],
        Some("amount IS NOT NULL"),
        Some(
            "SELECT doubled AS twice, upper(tier) AS tier, * EXCEPT (tier, doubled, score) \
             FROM batch WHERE doubled > 0",
        ),
    );
    let mut input = rows().schema().as_ref().clone();
    // `ts` is declared NOT NULL: taken as it is, it stays so; computed columns may be NULL.
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[3] = fields[3].clone().with_nullable(false);
    input = Schema::new(fields);
    let checked = t.check(&input);
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    let names: Vec<&str> = checked
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["twice", "tier", "amount", "ts"]);
    assert_eq!(checked.schema.field(0).data_type(), &DataType::Int64);
    assert!(!checked.schema.field(3).is_nullable());
    assert!(checked.schema.field(1).is_nullable());

    // amount 10, 0, 7, NULL: `where` drops NULL, the SELECT's WHERE drops 0.
    let out = t.apply(&rows()).unwrap();
    assert_eq!(out.filtered, 2);
    assert_eq!(ints(out.rows.column(0)), [Some(20), Some(14)]);
    let tiers: Vec<Option<&str>> = out.rows.column(1).as_string::<i32>().iter().collect();
    assert_eq!(tiers, [Some("HIGH"), None]);
    assert_eq!(out.rows.schema().field(2).name(), "amount");
    assert_eq!(out.rows.num_columns(), 4);
}

#[test]
fn a_select_is_checked_against_the_rows() {
    for (sql, expected) in [
        ("SELECT nope FROM batch", "unknown column \"nope\""),
        (
            "SELECT amount + tier AS x FROM batch",
            "x: + needs a number, not a string",
        ),
        (
            "SELECT amount, amount FROM batch",
            "names column \"amount\" twice",
        ),
        ("SELECT * EXCEPT (nope) FROM batch", "leaves out \"nope\""),
        (
            "SELECT * EXCEPT (amount, tier, score, ts) FROM batch",
            "keeps no column",
        ),
        ("SELECT NULL AS n FROM batch", "always NULL"),
        ("SELECT * FROM batch WHERE score", "must be true or false"),
        (
            "SELECT amount AS a, tier AS A FROM batch",
            "names column \"A\" twice",
        ),
        // Typed over every row, not over the rows the WHERE keeps.
        (
            "SELECT ts > 'yesterday' AS recent FROM batch WHERE amount > 0",
            "recent: the constant 'yesterday' is not a timestamp",
        ),
    ] {
        let t = transform_with_sql(&[], None, Some(sql));
        let problems = t.check(&rows().schema()).problems;
        assert_eq!(problems.len(), 1, "{sql}: {problems:?}");
        assert_eq!(problems[0].0, "transform.sql");
        assert!(problems[0].1.contains(expected), "{sql}: {}", problems[0].1);
    }
    // A computed column that failed is reported once, not again by the SELECT.
    let t = transform_with_sql(&[("bad", "nope + 1")], None, Some("SELECT bad FROM batch"));
    let problems = t.check(&rows().schema()).problems;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, "transform.columns.bad");
}

#[test]
fn a_select_keeps_the_kafka_and_internal_columns_it_leaves_out() {
    let base = rows();
    let mut fields: Vec<Field> = base
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = base.columns().to_vec();
    for name in ["kafka_partition", "__tributary_offset"] {
        fields.push(Field::new(name, DataType::Int64, false));
        columns.push(Arc::new(arrow::array::Int64Array::from(vec![
            0i64, 1, 2, 3,
        ])));
    }
    let input = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let mut t = transform_with_sql(
        &[],
        None,
        Some("SELECT amount * 2 AS twice FROM batch WHERE amount > 5"),
    );
    t.keep = vec!["kafka_partition".into()];
    let out = t.apply(&input).unwrap();
    let names: Vec<String> = out
        .rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["twice", "kafka_partition", "__tributary_offset"]);
    // amount 10, 0, 7, NULL: the kept columns follow the WHERE too.
    assert_eq!(ints(out.rows.column(0)), [Some(20), Some(14)]);
    assert_eq!(ints(out.rows.column(2)), [Some(0), Some(2)]);
    assert_eq!(out.filtered, 2);
    // Checked alike, and a NOT NULL column taken as it is is no problem.
    let checked = t.check(&input.schema());
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    assert_eq!(checked.schema.fields().len(), 3);
    assert!(!checked.schema.field(1).is_nullable());
}

#[test]
fn passes_through_tells_which_record_columns_reach_the_table_as_they_are() {
    let t = transform_with_sql(
        &[],
        None,
        Some(
            "SELECT amount / 100.0 AS amount, tier AS level, score, * EXCLUDE (amount, tier, score) FROM batch",
        ),
    );
    assert!(!t.passes_through("amount"), "recomputed under its name");
    assert!(!t.passes_through("tier"), "renamed");
    assert!(t.passes_through("score"));
    assert!(t.passes_through("ts"), "by *");
    let listed = transform_with_sql(&[], None, Some("SELECT score FROM batch"));
    assert!(listed.passes_through("score") && !listed.passes_through("ts"));
    assert!(transform(&[("x", "amount + 1")], None).passes_through("amount"));
}
