//! What the converter hands the operators.

use std::sync::Arc;

use deltalake::arrow::array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, TimeUnit};
use tributary_avro::RecordColumns;

use super::*;
use crate::operator_config::{add_operator_columns, operator_config, operator_inputs};

fn spec(extra: &str) -> TableSpec {
    let text = format!(
        "pipeline: p
source:
  kafka: {{bootstrap_servers: 'localhost:1', topic: t}}
  schema_registry: {{url: 'http://localhost:1'}}
table: {{uri: 'file:///tmp/lake/t'}}
checkpoint: {{location: 'file:///tmp/checkpoint'}}
event_time: {{column: ts, watermark_delay: 1m}}
{extra}"
    );
    tributary_spec::parse_spec("p.yaml", &text).unwrap()
}

const WINDOWS: &str = "window: {tumbling: {size: 1m}}
group_by: [user]
aggregations:
  - {name: pages, function: count_distinct, column: url}
";

/// The converter of `spec`'s group, as the group opens it, and what it
/// makes of three decoded records.
fn converted(spec: &TableSpec) -> Vec<String> {
    let mut columns = RecordColumns::default();
    let hidden = add_operator_columns(spec, &mut columns);
    let config = operator_config(spec, &columns, hidden.clone()).unwrap();
    let inputs = operator_inputs(spec, &config);
    let mut converter = Converter::new(spec, None, hidden.clone(), inputs, None).unwrap();
    let utc = Some(Arc::from("UTC"));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("user", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("referrer", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, utc.clone()),
            true,
        ),
        Field::new(&hidden[0], DataType::Int32, true),
        Field::new(&hidden[1], DataType::Int64, true),
    ]);
    let text = |v: [&str; 3]| Arc::new(StringArray::from(v.to_vec())) as _;
    let decoded = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            text(["a", "b", "c"]),
            text(["u1", "u2", "u1"]),
            text(["/x", "/y", "/z"]),
            text(["r", "r", "r"]),
            Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3]).with_timezone_opt(utc)),
            Arc::new(Int32Array::from(vec![0, 0, 0])),
            Arc::new(Int64Array::from(vec![0, 1, 2])),
        ],
    )
    .unwrap();
    let rows = converter.convert(&decoded).unwrap();
    assert_eq!(rows.num_rows(), 3);
    let mut names: Vec<String> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    names.sort();
    names
}

#[test]
fn windows_get_only_the_columns_they_read() {
    let mut expected = vec![
        "__tributary_offset",
        "__tributary_partition",
        "ts",
        "url",
        "user",
    ];
    assert_eq!(converted(&spec(WINDOWS)), expected);
    // With dedup, its keys too.
    expected.insert(2, "id");
    assert_eq!(
        converted(&spec(&format!("{WINDOWS}dedup: {{keys: [id]}}\n"))),
        expected
    );
}

#[test]
fn rows_that_reach_a_table_keep_every_column() {
    let all = [
        "__tributary_offset",
        "__tributary_partition",
        "id",
        "referrer",
        "ts",
        "url",
        "user",
    ];
    // Late rows go to their table whole.
    let late = format!("{WINDOWS}late_rows: 'file:///tmp/lake/late'\n");
    assert_eq!(converted(&spec(&late)), all);
    // Dedup's output is the rows themselves.
    assert_eq!(converted(&spec("dedup: {keys: [id]}\n")), all);
}
