//! The last step before the table: rows get their partition columns, and
//! the table's schema evolves to them or they are cast to it. Records are
//! shaped by the encoder; with `features`, the operators' output is shaped
//! by the group's state, after the transform that reads the features.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{DataType, Schema, SchemaRef};
use tributary_avro::to_delta_batch;
use tributary_delta::add_partition_columns;
use tributary_spec::{PartitionColumn, TableSpec};

use crate::error::{EngineError, Result};
use crate::evolve::evolve;

/// Shapes rows for one table, following its schema as it evolves.
pub(crate) struct TableShape {
    spec: TableSpec,
    partitions: Vec<PartitionColumn>,
    /// The table's schema when it exists: rows are reordered and cast to it.
    table_schema: Option<SchemaRef>,
    /// Schemas whose column references were checked.
    checked: HashSet<SchemaRef>,
}

impl TableShape {
    /// `table_schema`: the schema the rows have so far; `partitions`: the
    /// partition columns to derive (none for a windowed table's records).
    pub(crate) fn new(
        spec: &TableSpec,
        table_schema: Option<SchemaRef>,
        partitions: Vec<PartitionColumn>,
    ) -> TableShape {
        TableShape {
            spec: spec.clone(),
            partitions,
            table_schema,
            checked: HashSet::new(),
        }
    }

    /// Shapes rows to `table_schema` from now on (the table as opened).
    pub(crate) fn follow(&mut self, table_schema: Option<SchemaRef>) {
        self.table_schema = table_schema;
    }

    pub(crate) fn partition_names(&self) -> Vec<String> {
        self.partitions
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }

    /// Rows in the table's shape: partition columns derived, the schema
    /// evolved or cast to. `metadata`: the decoded rows' (their writer schema id).
    pub(crate) fn shape(
        &mut self,
        transformed: &RecordBatch,
        metadata: &HashMap<String, String>,
    ) -> Result<RecordBatch> {
        if self.checked.insert(transformed.schema()) {
            check_columns(&self.spec, &transformed.schema())?;
        }
        let row = add_partition_columns(transformed, &self.partitions)?;
        let Some(table) = &self.table_schema else {
            // A new table: its first rows define it, later versions evolve it.
            self.table_schema = Some(row.schema());
            return Ok(row);
        };
        let writer = metadata
            .get(tributary_avro::SCHEMA_ID_METADATA)
            .map(|id| format!(" (writer schema id {id})"))
            .unwrap_or_default();
        match evolve(table, &row.schema()).map_err(|m| {
            EngineError::Schema(format!(
                "subject {}{writer}: {m}. Nothing of this batch was written",
                self.spec.value_subject()
            ))
        })? {
            Some(evolved) => {
                let added: Vec<&str> = evolved
                    .fields()
                    .iter()
                    .filter(|f| table.field_with_name(f.name()).ok() != Some(f.as_ref()))
                    .map(|f| f.name().as_str())
                    .collect();
                tracing::info!(pipeline = %self.spec.pipeline, columns = ?added,
                    "a new writer schema adds columns: the table's schema evolves with this batch");
                let evolved = Arc::new(evolved);
                self.table_schema = Some(evolved.clone());
                Ok(to_delta_batch(&row, &evolved)?)
            }
            None => Ok(to_delta_batch(&row, table)?),
        }
    }
}

/// Column references of the spec against the decoded schema. The Kafka
/// columns the decoder appended are not the record's; a value field with one
/// of their names appears twice, a collision.
fn check_columns(spec: &TableSpec, schema: &Schema) -> Result<()> {
    let named: Vec<&str> = spec
        .source
        .columns
        .named()
        .into_iter()
        .map(|(_, name, _)| name)
        .collect();
    for name in &named {
        if schema.fields().iter().filter(|f| f.name() == name).count() > 1 {
            return Err(EngineError::Spec(format!(
                "source.columns: column {name:?} collides with a field of the record"
            )));
        }
    }
    let columns: Vec<(String, bool)> = schema
        .fields()
        .iter()
        .filter(|f| !named.contains(&f.name().as_str()))
        .map(|f| {
            (
                f.name().clone(),
                matches!(f.data_type(), DataType::Timestamp(..)),
            )
        })
        .collect();
    let problems = spec.check_columns(&columns);
    if problems.is_empty() {
        return Ok(());
    }
    Err(EngineError::Spec(
        problems
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}
