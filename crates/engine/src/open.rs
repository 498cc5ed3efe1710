//! Opening a group: its tables, offsets log and operator state, and what
//! its decoder fills. Nothing is read or written here.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::datatypes::{Schema, SchemaRef};
use tributary_avro::{
    FutureBound, KeyFormat, RecordColumns, RecordDecoder, RegistryClient, SchemaGate,
};
use tributary_core::{TOPIC_GROUP, app_id};
use tributary_delta::{DeltaTableSink, TableOptions};
use tributary_kafka::ReaderConfig;
use tributary_spec::{OnIncompatible, TableSpec};

use crate::contracts::{PlanLog, TableSink};
use crate::error::Result;
use crate::offset_log::OffsetLog;
use crate::operator_config::{add_operator_columns, operator_config, operator_inputs};
use crate::options::Components;
use crate::recovery::GroupTables;
use crate::stateful::GroupState;

/// Which records a group owns.
pub(crate) struct GroupScope {
    /// `topic`, or `p<partition>`: part of the Delta app id and checkpoint paths.
    pub name: String,
    /// The group's partitions; `None`: every partition of the topic.
    pub partitions: Option<Vec<i32>>,
}

impl GroupScope {
    pub(crate) fn topic() -> GroupScope {
        GroupScope {
            name: TOPIC_GROUP.to_string(),
            partitions: None,
        }
    }

    pub(crate) fn partition(p: i32) -> GroupScope {
        GroupScope {
            name: format!("p{p}"),
            partitions: Some(vec![p]),
        }
    }
}

/// Tables, offsets log and state of one group.
pub(crate) struct Group {
    /// `topic`, or `p<partition>`.
    pub name: String,
    pub app_id: String,
    pub data: Box<dyn TableSink>,
    pub dead_letters: Box<dyn TableSink>,
    /// The late-rows table, when late rows are kept.
    pub late: Option<Box<dyn TableSink>>,
    /// Event-time operators and their state, for stateful pipelines.
    pub state: Option<GroupState>,
    /// The Kafka columns the decoder fills, and those only operators see.
    pub columns: RecordColumns,
    pub hidden: Vec<String>,
    /// The only columns the operators need of a row, when their output
    /// holds no input rows and no late-rows table does either.
    pub operator_inputs: Option<Vec<String>>,
    pub log: Box<dyn PlanLog>,
    /// Offsets known to exist (with `available_now`, the high watermarks at start).
    pub known_latest: BTreeMap<i32, i64>,
}

impl Group {
    /// Opens the tables (created on their first commit), the offsets log
    /// and, for a stateful pipeline, the operator state of group `name`.
    pub(crate) async fn open(
        spec: &TableSpec,
        components: &Components,
        name: &str,
    ) -> Result<Group> {
        let mut columns = record_columns(spec);
        let hidden = add_operator_columns(spec, &mut columns);
        let (mut state, operator_inputs) = if spec.is_stateful() {
            let config = operator_config(spec, &columns, hidden.clone())?;
            let inputs = operator_inputs(spec, &config);
            let state = GroupState::open(spec, components, name, config).await?;
            (Some(state), inputs)
        } else {
            (None, None)
        };
        let table = |uri: &str, partition_columns: Vec<String>| TableOptions {
            storage_options: spec.table.storage_options.clone(),
            uri: uri.to_string(),
            partition_columns,
            target_file_size: spec.table.target_file_size.0,
        };
        let partitions = spec.partition_columns();
        let data = table(
            &spec.table.uri,
            partitions.iter().map(|p| p.name().to_string()).collect(),
        );
        let late: Option<Box<dyn TableSink>> = match spec.late_rows_uri() {
            Some(uri) => Some(Box::new(DeltaTableSink::open(table(uri, vec![])).await?)),
            None => None,
        };
        let log = OffsetLog::open(&components.checkpoint, name)?;
        let data = DeltaTableSink::open(data).await?;
        if let Some(state) = &mut state {
            state.follow_table(data.schema());
        }
        Ok(Group {
            name: name.to_string(),
            app_id: app_id(&spec.pipeline, name),
            data: Box::new(data),
            dead_letters: Box::new(
                DeltaTableSink::open(table(&spec.dead_letter_uri(), vec![])).await?,
            ),
            late,
            state,
            columns,
            hidden,
            operator_inputs,
            log: Box::new(log),
            known_latest: BTreeMap::new(),
        })
    }

    /// The group's tables as recovery reads them.
    pub(crate) fn tables<'a>(&'a self, spec: &'a TableSpec) -> GroupTables<'a> {
        GroupTables {
            app_id: &self.app_id,
            pipeline: &spec.pipeline,
            group: &self.name,
            data: self.data.as_ref(),
            dead_letters: self.dead_letters.as_ref(),
            checkpoint: &spec.checkpoint.location,
        }
    }

    /// The schema the records of a table have so far: the table's own,
    /// unless the table holds windows, whose records' schema starts afresh
    /// each run.
    pub(crate) fn records_schema(&self, spec: &TableSpec) -> Option<SchemaRef> {
        if spec.window.is_some() {
            None
        } else {
            self.data.schema()
        }
    }

    /// A decoder of the group's records, over `registry`.
    pub(crate) fn decoder(&self, spec: &TableSpec, registry: Arc<RegistryClient>) -> RecordDecoder {
        let decoder = RecordDecoder::new(registry, tokio::runtime::Handle::current())
            .with_record_columns(self.columns.clone());
        match schema_gate(spec, self.records_schema(spec)) {
            Some(gate) => decoder.with_schema_gate(gate),
            None => decoder,
        }
    }
}

/// The Kafka connection a spec describes.
pub fn reader_config(spec: &TableSpec) -> ReaderConfig {
    let kafka = &spec.source.kafka;
    ReaderConfig {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        topic: spec.table_topic().to_string(),
        group_id: kafka.group_id(&spec.pipeline),
        properties: kafka.properties.clone(),
    }
}

/// The Kafka columns (key, headers, position) a spec asks the decoder to fill.
pub(crate) fn record_columns(spec: &TableSpec) -> RecordColumns {
    let c = &spec.source.columns;
    RecordColumns {
        key: c.key.as_ref().map(|k| {
            let format = match k.format {
                tributary_spec::KeyFormatSpec::String => KeyFormat::String,
                tributary_spec::KeyFormatSpec::Bytes => KeyFormat::Bytes,
                tributary_spec::KeyFormatSpec::Avro => KeyFormat::Avro,
            };
            (k.name.clone(), format)
        }),
        headers: c.headers.clone(),
        topic: c
            .topic
            .clone()
            .map(|name| (name, spec.source.kafka.topic.clone())),
        partition: c.partition.clone(),
        offset: c.offset.clone(),
        timestamp: c.timestamp.clone(),
        future: spec.event_time.as_ref().and_then(|e| {
            Some(FutureBound {
                column: e.column.clone()?,
                max_future_ms: i64::try_from(e.max_future.0.as_millis()).unwrap_or(i64::MAX),
            })
        }),
    }
}

/// With `schema_evolution.on_incompatible: dead_letter`, refuses the writer
/// schemas the table cannot hold, so their records become dead letters: each
/// is checked against the table's schema as the run starts, evolved by every
/// schema accepted since.
fn schema_gate(spec: &TableSpec, table: Option<SchemaRef>) -> Option<SchemaGate> {
    if spec.schema_evolution.on_incompatible != OnIncompatible::DeadLetter {
        return None;
    }
    let subject = spec.value_subject();
    let mut current = table;
    // Only the fields that reach the table as they are can clash with it
    // (a SELECT may rename or recompute one; its errors surface elsewhere).
    let transform = crate::encode::transform_of(spec).ok().flatten();
    Some(Box::new(move |id, writer| {
        let mut incoming = tributary_avro::delta_schema(writer).map_err(|e| e.to_string())?;
        if let Some(t) = &transform {
            let fields: Vec<_> = incoming
                .fields()
                .iter()
                .filter(|f| t.passes_through(f.name()))
                .cloned()
                .collect();
            incoming = Arc::new(Schema::new_with_metadata(
                fields,
                incoming.metadata().clone(),
            ));
        }
        let Some(table) = &current else {
            current = Some(incoming);
            return Ok(());
        };
        match crate::evolve::evolve(table, &incoming) {
            Ok(Some(evolved)) => {
                current = Some(Arc::new(evolved));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(m) => Err(format!(
                "incompatible schema version (subject {subject}, schema id {id}): {m}; \
                 kept here by schema_evolution.on_incompatible: dead_letter"
            )),
        }
    }))
}
