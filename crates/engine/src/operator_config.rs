//! The operators' configuration, derived from a table spec: the Kafka
//! columns they need beside the table's, and the spec's event-time sections
//! in the operators' own terms (microseconds, no YAML types).

use std::sync::Arc;

use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use tributary_avro::RecordColumns;
use tributary_spec::{AggregationSpec, OutputMode, TableSpec, WindowKind, WindowSpec};
use tributary_stream::{Aggregation, Features, OperatorConfig, Window};

use crate::error::{EngineError, Result};

/// Columns the decoder adds for the operators only, left out of the table.
const HIDDEN_PARTITION: &str = "__tributary_partition";
const HIDDEN_OFFSET: &str = "__tributary_offset";
const HIDDEN_TIMESTAMP: &str = "__tributary_kafka_timestamp";

/// The Kafka columns an event-time pipeline needs: partition and offset
/// (a batch's canonical row order) and the Kafka timestamp when it is the
/// event time. The spec's own names are used when it has them; hidden
/// columns otherwise. Returns the columns to hide from the table.
pub(crate) fn add_operator_columns(spec: &TableSpec, columns: &mut RecordColumns) -> Vec<String> {
    let mut hidden = Vec::new();
    if !spec.is_stateful() {
        return hidden;
    }
    let mut need = |slot: &mut Option<String>, name: &str| {
        if slot.is_none() {
            *slot = Some(name.to_string());
            hidden.push(name.to_string());
        }
    };
    need(&mut columns.partition, HIDDEN_PARTITION);
    need(&mut columns.offset, HIDDEN_OFFSET);
    if spec.event_time.as_ref().is_some_and(|e| e.column.is_none()) {
        need(&mut columns.timestamp, HIDDEN_TIMESTAMP);
    }
    hidden
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The operators a spec describes, over rows with `columns`' names.
pub(crate) fn operator_config(
    spec: &TableSpec,
    columns: &RecordColumns,
    hidden: Vec<String>,
) -> Result<OperatorConfig> {
    let event_time = spec
        .event_time
        .as_ref()
        .ok_or_else(|| EngineError::Spec("event-time operators need event_time".into()))?;
    let kafka_column = |c: &Option<String>| {
        c.clone()
            .ok_or_else(|| EngineError::Internal("operator columns were not added".into()))
    };
    let time_column = match &event_time.column {
        Some(c) => c.clone(),
        None => kafka_column(&columns.timestamp)?,
    };
    Ok(OperatorConfig {
        time_column,
        partition_column: kafka_column(&columns.partition)?,
        offset_column: kafka_column(&columns.offset)?,
        hidden_columns: hidden,
        watermark_delay: micros(event_time.watermark_delay.0),
        dedup_keys: spec
            .dedup
            .as_ref()
            .map(|d| d.keys.clone())
            .unwrap_or_default(),
        window: spec
            .window
            .as_ref()
            .and_then(WindowSpec::kind)
            .map(|w| match w {
                WindowKind::Tumbling { size } => Window::Sliding {
                    size: micros(size),
                    slide: micros(size),
                },
                WindowKind::Sliding { size, slide } => Window::Sliding {
                    size: micros(size),
                    slide: micros(slide),
                },
                WindowKind::Session { gap } => Window::Session { gap: micros(gap) },
            }),
        group_by: spec.group_by.clone(),
        aggregations: spec.aggregations.iter().map(aggregation).collect(),
        output_mode: match spec.output_mode {
            OutputMode::Append => tributary_stream::OutputMode::Append,
            OutputMode::Update => tributary_stream::OutputMode::Update,
        },
        features: spec.features.as_ref().map(|f| Features {
            group_by: f.group_by.clone(),
            range: micros(f.range.0),
            aggregations: f.aggregations.iter().map(aggregation).collect(),
        }),
    })
}

/// The only columns the operators need of a row (see
/// `OperatorConfig::input_columns`), unless late rows go to their table,
/// which takes them whole.
pub(crate) fn operator_inputs(spec: &TableSpec, config: &OperatorConfig) -> Option<Vec<String>> {
    config
        .input_columns()
        .filter(|_| spec.late_rows_uri().is_none())
}

/// A spec's aggregate column in the operators' terms.
fn aggregation(spec: &AggregationSpec) -> Aggregation {
    use tributary_spec::AggregateFunction as Spec;
    use tributary_stream::AggregateFunction as Op;
    Aggregation {
        name: spec.name.clone(),
        function: match spec.function {
            Spec::Count => Op::Count,
            Spec::CountDistinct => Op::CountDistinct,
            Spec::Sum => Op::Sum,
            Spec::Min => Op::Min,
            Spec::Max => Op::Max,
            Spec::Avg => Op::Avg,
            Spec::First => Op::First,
            Spec::Last => Op::Last,
        },
        column: spec.column.clone(),
    }
}

/// `schema` with the columns `features` adds to each row, typed as the
/// operators type them (for checking what reads them before a run).
pub fn with_feature_columns(spec: &TableSpec, schema: &SchemaRef) -> SchemaRef {
    let Some(features) = &spec.features else {
        return schema.clone();
    };
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    for a in &features.aggregations {
        let input = a
            .column
            .as_ref()
            .and_then(|c| schema.field_with_name(c).ok())
            .map(|f| f.data_type().clone());
        let t = tributary_stream::output_type(&aggregation(a), input.as_ref());
        fields.push(Arc::new(Field::new(&a.name, t, true)));
    }
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}
