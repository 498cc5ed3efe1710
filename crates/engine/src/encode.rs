//! The encoder stage: converts decoded rows to the table's types and encodes
//! them into Parquet as they arrive, on its own thread, so decoding (reader
//! thread), encoding (this thread) and committing (async writer) overlap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use tributary_avro::{delta_schema, to_delta_batch};
use tributary_delta::{BatchEncoder, EncodedBatch};
use tributary_spec::TableSpec;
use tributary_transform::Transform;

use crate::contracts::ReadBatch;
use crate::enrich::{Dimensions, Pinned};
use crate::error::{EngineError, Result};
use crate::shape::TableShape;

/// What the reader hands to the encoder.
pub(crate) enum Chunk {
    /// Decoded rows of the batch being read.
    Rows(RecordBatch),
    /// The batch is complete.
    End(ReadBatch),
    /// Reading failed; the rows sent for this batch are void.
    Failed(EngineError),
}

/// A batch read, decoded and encoded, ready to be committed.
pub(crate) struct ReadyBatch {
    pub read: ReadBatch,
    pub payload: Payload,
    pub encode_time: Duration,
    /// Records `transform.where` or an inner `enrich` join dropped.
    pub filtered_rows: u64,
    /// The version of each `enrich` dimension the batch joined.
    pub dimension_versions: Option<Vec<u64>>,
}

/// What the encoder made of a batch's rows.
pub(crate) enum Payload {
    /// Parquet files of the rows, ready to upload.
    Encoded(EncodedBatch),
    /// Converted rows, in one schema, for the event-time operators: what
    /// reaches the table depends on the state, so they are encoded after.
    Rows(Vec<RecordBatch>),
}

/// Decoded rows to the table's columns and types.
pub(crate) struct Converter {
    spec: TableSpec,
    /// `None` with `features`: the operators add columns, and their output
    /// is transformed and shaped after them (see `stateful`).
    shape: Option<TableShape>,
    transform: Option<Transform>,
    dimensions: Option<Arc<Dimensions>>,
    /// Dimensions still loading (see `load_later`), received before rows
    /// are first joined.
    loading: Option<std::sync::mpsc::Receiver<Arc<Dimensions>>>,
    /// The dimensions the batch being converted joins.
    pinned: Option<Pinned>,
    /// Records the transform's filter dropped since the last `take_filtered`.
    filtered: u64,
    /// Kafka columns only the operators read: kept aside from conversion
    /// and schema evolution, and appended to the converted rows.
    hidden: Vec<String>,
    /// The only columns the operators read (see `Group::operator_inputs`):
    /// the rest of a row is dropped once converted, so a batch held for the
    /// operators costs only these.
    operator_inputs: Option<Vec<String>>,
}

impl Converter {
    /// `records_schema`: the schema the records have so far (see
    /// `records_schema` in the pipeline). A windowed table holds aggregates,
    /// not records: its partition columns are derived from the output.
    /// With `features`, rows leave enriched only: the transform and the
    /// table's shape come after the operators.
    pub(crate) fn new(
        spec: &TableSpec,
        records_schema: Option<SchemaRef>,
        hidden: Vec<String>,
        operator_inputs: Option<Vec<String>>,
        dimensions: Option<Arc<Dimensions>>,
    ) -> Result<Converter> {
        let after_operators = spec.features.is_some();
        let partitions = if spec.window.is_some() {
            Vec::new()
        } else {
            spec.partition_columns()
        };
        Ok(Converter {
            spec: spec.clone(),
            shape: (!after_operators).then(|| TableShape::new(spec, records_schema, partitions)),
            transform: if after_operators {
                None
            } else {
                transform_of(spec)?
            },
            dimensions,
            loading: None,
            pinned: None,
            filtered: 0,
            hidden,
            operator_inputs,
        })
    }

    /// Records the transform's filter dropped since the last call.
    pub(crate) fn take_filtered(&mut self) -> u64 {
        std::mem::take(&mut self.filtered)
    }

    /// Joins the dimensions `loading` will deliver (while they load, the
    /// first rows are read); with none delivered, conversion fails.
    pub(crate) fn load_later(&mut self, loading: std::sync::mpsc::Receiver<Arc<Dimensions>>) {
        self.loading = Some(loading);
    }

    /// Waits for dimensions still loading.
    fn wait_for_dimensions(&mut self) -> Result<()> {
        if let Some(loading) = self.loading.take() {
            let loaded = loading
                .recv()
                .map_err(|_| EngineError::Internal("the dimension tables did not load".into()))?;
            self.dimensions = Some(loaded);
        }
        Ok(())
    }

    /// Joins `pinned` (a re-run batch's recorded versions) from now on.
    pub(crate) fn pin(&mut self, pinned: Pinned) {
        self.pinned = Some(pinned);
    }

    /// Ends a batch: the dimension versions it joined (the current ones
    /// for a batch without rows); the next batch pins anew.
    pub(crate) fn take_dimension_versions(&mut self) -> Option<Vec<u64>> {
        // Dimensions that did not load fail the run before it plans a batch.
        self.wait_for_dimensions().ok()?;
        let dimensions = self.dimensions.as_ref()?;
        Some(
            self.pinned
                .take()
                .unwrap_or_else(|| dimensions.pin())
                .versions(),
        )
    }

    /// Whether the rows go to the event-time operators before the table.
    pub(crate) fn is_stateful(&self) -> bool {
        self.spec.is_stateful()
    }

    pub(crate) fn partition_names(&self) -> Vec<String> {
        self.shape
            .as_ref()
            .map(TableShape::partition_names)
            .unwrap_or_default()
    }

    pub(crate) fn convert(&mut self, decoded: &RecordBatch) -> Result<RecordBatch> {
        let schema = decoded.schema();
        let (visible, hidden) = split_hidden(&self.hidden, &schema);
        let record = decoded.project(&visible)?;
        let typed = to_delta_batch(&record, &delta_schema(&record.schema())?)?;
        // Joins and the filter change the rows: the Kafka columns kept
        // aside go through them too.
        let rows = self.per_row_steps(append(&typed, &decoded.project(&hidden)?)?)?;
        let Some(shape) = &mut self.shape else {
            return Ok(rows);
        };
        let (visible, hidden) = split_hidden(&self.hidden, &rows.schema());
        let converted = shape.shape(&rows.project(&visible)?, schema.metadata())?;
        let rows = append(&converted, &rows.project(&hidden)?)?;
        let Some(inputs) = &self.operator_inputs else {
            return Ok(rows);
        };
        let converted_schema = rows.schema();
        let read: Vec<usize> = (0..converted_schema.fields().len())
            .filter(|&i| inputs.contains(converted_schema.field(i).name()))
            .collect();
        Ok(rows.project(&read)?)
    }

    /// All rows of a batch in the schema of its last rows (a batch may
    /// span writer schema versions; the operators need one).
    pub(crate) fn unify(rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let Some(last) = rows.last().map(|r| r.schema()) else {
            return Ok(rows);
        };
        rows.into_iter()
            .map(|r| {
                if r.schema() == last {
                    Ok(r)
                } else {
                    Ok(to_delta_batch(&r, &last)?)
                }
            })
            .collect()
    }

    /// `enrich`, then `transform`: what changes the rows themselves.
    fn per_row_steps(&mut self, typed: RecordBatch) -> Result<RecordBatch> {
        let mut rows = typed;
        self.wait_for_dimensions()?;
        if let Some(dimensions) = &self.dimensions {
            let pinned = self.pinned.get_or_insert_with(|| dimensions.pin());
            let (joined, dropped) = pinned.join(&rows)?;
            self.filtered += dropped as u64;
            rows = joined;
        }
        if let Some(t) = &self.transform {
            let out = t.apply(&rows)?;
            self.filtered += out.filtered as u64;
            rows = out.rows;
        }
        Ok(rows)
    }

    /// Converts a whole batch's rows at once (replays): encoded, or for
    /// the operators.
    pub(crate) fn payload_of(
        &mut self,
        rows: &[RecordBatch],
        target_file_size: u64,
    ) -> Result<Payload> {
        if self.is_stateful() {
            let converted = rows
                .iter()
                .map(|r| self.convert(r))
                .collect::<Result<_>>()?;
            return Ok(Payload::Rows(Converter::unify(converted)?));
        }
        let mut encoder = BatchEncoder::new(self.partition_names(), target_file_size);
        for r in rows {
            encoder.push(&self.convert(r)?)?;
        }
        Ok(Payload::Encoded(encoder.finish()?))
    }
}

/// The transform of a spec, checked.
pub(crate) fn transform_of(spec: &TableSpec) -> Result<Option<Transform>> {
    Transform::of_spec(spec).map_err(|e| EngineError::Spec(format!("transform: {e}")))
}

/// The indices of the columns of `schema` that are the table's, and of
/// the Kafka columns only the operators read (`hidden`).
fn split_hidden(hidden: &[String], schema: &Schema) -> (Vec<usize>, Vec<usize>) {
    (0..schema.fields().len()).partition(|&i| !hidden.contains(schema.field(i).name()))
}

/// `rows` with the columns of `more` (the same rows) after its own.
fn append(rows: &RecordBatch, more: &RecordBatch) -> Result<RecordBatch> {
    if more.num_columns() == 0 {
        return Ok(rows.clone());
    }
    let mut fields: Vec<_> = rows.schema().fields().iter().cloned().collect();
    fields.extend(more.schema().fields().iter().cloned());
    let mut columns = rows.columns().to_vec();
    columns.extend(more.columns().iter().cloned());
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(
            fields,
            rows.schema().metadata().clone(),
        )),
        columns,
    )?)
}

/// The encoder thread: turns the reader's chunks into ready batches until
/// the reader stops or the writer goes away.
pub(crate) fn run_encoder(
    chunks: std::sync::mpsc::Receiver<Chunk>,
    ready: tokio::sync::mpsc::Sender<Result<ReadyBatch>>,
    mut converter: Converter,
    target_file_size: u64,
) {
    let new_encoder = |c: &Converter| BatchEncoder::new(c.partition_names(), target_file_size);
    let mut encoder = new_encoder(&converter);
    let stateful = converter.is_stateful();
    let mut converted: Vec<RecordBatch> = Vec::new();
    let mut busy = Duration::ZERO;
    for chunk in chunks {
        let result = match chunk {
            Chunk::Rows(rows) => {
                let started = Instant::now();
                let pushed = converter.convert(&rows).and_then(|r| {
                    if stateful {
                        converted.push(r);
                        Ok(())
                    } else {
                        Ok(encoder.push(&r)?)
                    }
                });
                busy += started.elapsed();
                match pushed {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                }
            }
            Chunk::End(read) => {
                let started = Instant::now();
                let finished = if stateful {
                    Converter::unify(std::mem::take(&mut converted)).map(Payload::Rows)
                } else {
                    std::mem::replace(&mut encoder, new_encoder(&converter))
                        .finish()
                        .map(Payload::Encoded)
                        .map_err(EngineError::from)
                };
                let encode_time = busy + started.elapsed();
                busy = Duration::ZERO;
                let filtered_rows = converter.take_filtered();
                let dimension_versions = converter.take_dimension_versions();
                finished.map(|payload| ReadyBatch {
                    read,
                    payload,
                    encode_time,
                    filtered_rows,
                    dimension_versions,
                })
            }
            Chunk::Failed(e) => {
                converted.clear();
                converter.take_filtered();
                converter.take_dimension_versions();
                Err(e)
            }
        };
        let failed = result.is_err();
        if ready.blocking_send(result).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
