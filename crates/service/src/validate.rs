//! `tributary validate`: the spec's own checks, then, when the registry
//! knows the subject, its column references and transform expressions
//! against the latest value schema (plus the Kafka columns it asks for).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tributary_spec::{KeyFormatSpec, TableSpec, parse_spec_file};
use tributary_transform::{Transform, check_condition};

use crate::{components, exit_code, spec_files};

pub(crate) async fn validate(paths: Vec<PathBuf>, offline: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for f in &spec_files(&paths)? {
        let spec = match parse_spec_file(f) {
            Ok(s) => s,
            Err(e) => {
                failed = true;
                for line in e.report() {
                    println!("{line}");
                }
                continue;
            }
        };
        if !offline {
            match registry_schema(&spec).await {
                Ok(Some((schema, kafka))) => {
                    let (schema, mut problems) = with_dimensions(&spec, &schema, f).await;
                    problems.extend(column_problems(&spec, &schema, &kafka));
                    if !problems.is_empty() {
                        failed = true;
                        let source = std::fs::read_to_string(f).unwrap_or_default();
                        for line in
                            tributary_spec::problems_at(&f.display().to_string(), &source, problems)
                                .report()
                        {
                            println!("{line}");
                        }
                        continue;
                    }
                }
                Ok(None) => eprintln!(
                    "{}: note: subject {} not in the registry; column references not checked",
                    f.display(),
                    spec.value_subject()
                ),
                Err(e) => eprintln!(
                    "{}: note: registry not reachable ({e}); column references not checked",
                    f.display()
                ),
            }
        }
        println!("{}: ok", f.display());
    }
    Ok(exit_code(failed))
}

/// The records' schema with the columns `enrich` adds, and the problems of
/// `enrich` itself (key columns the record lacks, columns the dimension
/// lacks). A dimension that cannot be read is a note: its columns are
/// then typed NULL, which expressions accept wherever a value may be NULL.
async fn with_dimensions(
    spec: &TableSpec,
    record: &SchemaRef,
    file: &std::path::Path,
) -> (SchemaRef, Vec<(String, String)>) {
    let mut fields: Vec<Field> = record.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut problems = Vec::new();
    for (i, entry) in spec.enrich.iter().enumerate() {
        for (k, key) in entry.on.iter().enumerate() {
            if record.column_with_name(key).is_none() {
                problems.push((
                    format!("enrich[{i}].on[{k}]"),
                    format!("the record has no column {key:?}"),
                ));
            }
        }
        let table = tributary_engine::open_dimension(spec, entry).await;
        let schema = match &table {
            Ok(t) => t.arrow_schema(),
            Err(e) => {
                eprintln!(
                    "{}: note: enrich[{i}]: cannot read {} ({e})",
                    file.display(),
                    entry.table
                );
                None
            }
        };
        if table.is_ok() && schema.is_none() {
            problems.push((
                format!("enrich[{i}].table"),
                format!("there is no Delta table at {}", entry.table),
            ));
        }
        for (c, column) in entry.columns.iter().enumerate() {
            match schema.as_ref().map(|s| s.field_with_name(column)) {
                Some(Ok(field)) => fields.push(field.as_ref().clone().with_nullable(true)),
                Some(Err(_)) => problems.push((
                    format!("enrich[{i}].columns[{c}]"),
                    format!("the dimension table has no column {column:?}"),
                )),
                None => fields.push(Field::new(column, DataType::Null, true)),
            }
        }
    }
    (
        Arc::new(Schema::new_with_metadata(fields, record.metadata().clone())),
        problems,
    )
}

/// The problems of the spec's column references and expressions over
/// records of `schema` (the table's types, with the `kafka` columns
/// appended).
fn column_problems(
    spec: &TableSpec,
    schema: &SchemaRef,
    kafka: &[String],
) -> Vec<(String, String)> {
    // With features, the transform reads the columns they add.
    let schema = &tributary_engine::with_feature_columns(spec, schema);
    let (transformed, mut problems, failed) = match Transform::of_spec(spec) {
        Err(e) => return vec![("transform".into(), e.to_string())],
        Ok(None) => (schema.clone(), Vec::new(), Vec::new()),
        Ok(Some(t)) => {
            let checked = t.check(schema);
            (checked.schema, checked.problems, checked.failed)
        }
    };
    let mut record: Vec<(String, bool)> = transformed
        .fields()
        .iter()
        .filter(|f| !kafka.contains(f.name()))
        .map(|f| {
            (
                f.name().clone(),
                matches!(f.data_type(), DataType::Timestamp(..)),
            )
        })
        .collect();
    // A column whose expression failed is reported once, not again where used.
    record.extend(failed.into_iter().map(|name| (name, false)));
    let transform_failed = !problems.is_empty();
    problems.extend(spec.check_columns(&record));
    // The republish filter reads the table; of a record table, its types
    // are the transformed records' (partition columns aside).
    if let Some(filter) = spec.republish.as_ref().and_then(|r| r.filter.as_deref())
        && !transform_failed
        && spec.window.is_none()
        && let Ok(condition) = tributary_spec::Expr::parse(filter)
        && condition
            .columns()
            .iter()
            .all(|c| transformed.column_with_name(c).is_some())
        && let Err(e) = check_condition(&condition, &transformed)
    {
        problems.push(("republish.filter".into(), e.to_string()));
    }
    problems
}

/// The latest value schema in the table's types, with the Kafka columns
/// the spec asks for appended, as the engine's rows have them (a Kafka
/// column whose name the record has is left to `check_columns` to report),
/// and the names appended.
async fn registry_schema(spec: &TableSpec) -> anyhow::Result<Option<(SchemaRef, Vec<String>)>> {
    let client = tributary_avro::RegistryClient::new(tributary_avro::RegistryConfig {
        timeout: Duration::from_secs(3),
        max_retries: 0,
        ..components::registry_config(&spec.source.schema_registry)?
    })?;
    let Some(latest) = client.latest(&spec.value_subject()).await? else {
        return Ok(None);
    };
    let decoded = tributary_avro::arrow_schema_of(&latest.schema)?;
    let mut fields: Vec<Field> = decoded
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let c = &spec.source.columns;
    let utc_millis = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let kafka = [
        (c.topic.as_ref(), DataType::Utf8),
        (c.partition.as_ref(), DataType::Int32),
        (c.offset.as_ref(), DataType::Int64),
        (c.timestamp.as_ref(), utc_millis),
        // Expressions cannot look inside headers; their type only names them.
        (c.headers.as_ref(), DataType::Binary),
    ];
    let key = c.key.as_ref().map(|key| {
        let data_type = match key.format {
            KeyFormatSpec::String => DataType::Utf8,
            KeyFormatSpec::Bytes | KeyFormatSpec::Avro => DataType::Binary,
        };
        (&key.name, data_type)
    });
    let mut appended = Vec::new();
    let wanted = kafka
        .into_iter()
        .map(|(n, t)| n.map(|n| (n, t)))
        .chain([key]);
    for (name, data_type) in wanted.flatten() {
        if decoded.column_with_name(name).is_none() {
            fields.push(Field::new(name.as_str(), data_type, true));
            appended.push(name.to_string());
        }
    }
    let schema = Arc::new(Schema::new(fields));
    Ok(Some((tributary_avro::delta_schema(&schema)?, appended)))
}
