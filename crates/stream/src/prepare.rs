//! Turning a batch's Arrow columns into what the operators need: event
//! times, keys in Arrow's row format, numeric aggregate inputs.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{SortColumn, cast, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};

use crate::aggregate::{Acc, Arrival, Input};
use crate::config::{AggregateFunction, Aggregation, OperatorConfig};
use crate::error::{Result, StreamError};

pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        StreamError::Spec(format!(
            "column {name:?} is not in the records; they have: {}",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The batch's rows in one RecordBatch, in Kafka order: by partition, then
/// offset. A replay reads the same records in another interleaving; this
/// order is the same every time.
pub(crate) fn canonical(
    input: &[RecordBatch],
    partition: &str,
    offset: &str,
) -> Result<Option<RecordBatch>> {
    let Some(first) = input.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let all = arrow::compute::concat_batches(&first.schema(), input)?;
    if in_kafka_order(column(&all, partition)?, column(&all, offset)?)? {
        return Ok(Some(all));
    }
    let sort = [column(&all, partition)?, column(&all, offset)?].map(|values| SortColumn {
        values: values.clone(),
        options: None,
    });
    let order = lexsort_to_indices(&sort, None)?;
    Ok(Some(take_record_batch(&all, &order)?))
}

/// Whether rows are sorted by (partition, offset) already (one partition
/// read in order: no sort needed).
fn in_kafka_order(partitions: &ArrayRef, offsets: &ArrayRef) -> Result<bool> {
    let p = cast(partitions, &DataType::Int64)?;
    let o = cast(offsets, &DataType::Int64)?;
    let (p, o) = (p.as_primitive::<Int64Type>(), o.as_primitive::<Int64Type>());
    if p.null_count() > 0 || o.null_count() > 0 {
        return Ok(false);
    }
    let (p, o) = (p.values(), o.values());
    Ok((1..p.len()).all(|i| (p[i - 1], o[i - 1]) <= (p[i], o[i])))
}

/// Event times in microseconds; `None` for nulls.
pub(crate) fn event_times(batch: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>> {
    let array = column(batch, name)?;
    let (values, to_micros): (ArrayRef, fn(i64) -> i64) = match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let scale: fn(i64) -> i64 = match unit {
                TimeUnit::Second => |v| v.saturating_mul(1_000_000),
                TimeUnit::Millisecond => |v| v.saturating_mul(1_000),
                TimeUnit::Microsecond => |v| v,
                TimeUnit::Nanosecond => |v| v.div_euclid(1_000),
            };
            (cast(array, &DataType::Int64)?, scale)
        }
        DataType::Int64 => (array.clone(), |v| v.saturating_mul(1_000)),
        other => {
            return Err(StreamError::Spec(format!(
                "event_time.column {name:?} is {other}; it must be a timestamp or a long of \
                 epoch milliseconds"
            )));
        }
    };
    let values = values.as_primitive::<Int64Type>();
    Ok((0..values.len())
        .map(|i| values.is_valid(i).then(|| to_micros(values.value(i))))
        .collect())
}

/// Converts columns to and from Arrow's row format, whose bytes compare
/// like the values and identify them exactly.
pub(crate) struct KeyCodec {
    converter: Option<RowConverter>,
}

impl KeyCodec {
    pub(crate) fn new(types: &[DataType]) -> Result<KeyCodec> {
        if types.is_empty() {
            return Ok(KeyCodec { converter: None });
        }
        let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
        Ok(KeyCodec {
            converter: Some(RowConverter::new(fields)?),
        })
    }

    /// One key per row; empty keys when there are no columns.
    pub(crate) fn encode(&self, columns: &[ArrayRef]) -> Result<EncodedKeys> {
        match &self.converter {
            None => Ok(EncodedKeys::Empty),
            Some(c) => Ok(EncodedKeys::Rows(c.convert_columns(columns)?)),
        }
    }

    /// Arrays back from keys.
    pub(crate) fn decode(&self, keys: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        let Some(c) = &self.converter else {
            return Ok(Vec::new());
        };
        let parser = c.parser();
        let rows = keys.iter().map(|k| parser.parse(k));
        Ok(c.convert_rows(rows)?)
    }
}

pub(crate) enum EncodedKeys {
    Empty,
    Rows(Rows),
}

impl EncodedKeys {
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        match self {
            EncodedKeys::Empty => &[],
            EncodedKeys::Rows(r) => r.row(i).data(),
        }
    }
}

/// One aggregate's input column, ready to feed accumulators.
pub(crate) enum AggInput {
    /// `count` of rows.
    Rows,
    Ints(ArrayRef),
    Floats(ArrayRef),
    /// Values in row format, with their validity.
    Values {
        rows: Rows,
        array: ArrayRef,
    },
}

impl AggInput {
    pub(crate) fn prepare(spec: &Aggregation, batch: &RecordBatch) -> Result<AggInput> {
        use AggregateFunction as F;
        let Some(name) = &spec.column else {
            return Ok(AggInput::Rows);
        };
        let array = column(batch, name)?;
        let numeric = |float: bool| -> Result<ArrayRef> {
            let t = array.data_type();
            if !(t.is_integer() || t.is_floating()) {
                return Err(StreamError::Spec(format!(
                    "aggregation {:?}: {} needs a numeric column; {name:?} is {t}",
                    spec.name,
                    spec.function.name()
                )));
            }
            Ok(cast(
                array,
                if float {
                    &DataType::Float64
                } else {
                    &DataType::Int64
                },
            )?)
        };
        Ok(match spec.function {
            F::Sum if array.data_type().is_floating() => AggInput::Floats(numeric(true)?),
            F::Sum => AggInput::Ints(numeric(false)?),
            F::Avg => AggInput::Floats(numeric(true)?),
            _ => {
                let converter = RowConverter::new(vec![SortField::new(array.data_type().clone())])?;
                AggInput::Values {
                    rows: converter.convert_columns(std::slice::from_ref(array))?,
                    array: array.clone(),
                }
            }
        })
    }

    pub(crate) fn at(&self, i: usize) -> Input<'_> {
        match self {
            AggInput::Rows => Input::Row,
            AggInput::Ints(a) if a.is_valid(i) => {
                Input::Int(a.as_primitive::<Int64Type>().value(i))
            }
            AggInput::Floats(a) if a.is_valid(i) => {
                Input::Float(a.as_primitive::<Float64Type>().value(i))
            }
            AggInput::Values { rows, array } if array.is_valid(i) => {
                Input::Value(rows.row(i).data())
            }
            AggInput::Values { rows, .. } => Input::Null(rows.row(i).data()),
            AggInput::Ints(_) | AggInput::Floats(_) => Input::Null(&[]),
        }
    }
}

/// The rows' keys of the `names` columns in row format, and the columns'
/// types.
pub(crate) fn group_keys(
    batch: &RecordBatch,
    names: &[String],
) -> Result<(Vec<DataType>, EncodedKeys)> {
    let columns = names
        .iter()
        .map(|g| column(batch, g).cloned())
        .collect::<Result<Vec<_>>>()?;
    let types: Vec<DataType> = columns.iter().map(|a| a.data_type().clone()).collect();
    let keys = KeyCodec::new(&types)?.encode(&columns)?;
    Ok((types, keys))
}

/// Each aggregation's input over `batch`, and its column's type.
pub(crate) fn agg_inputs(
    aggregations: &[Aggregation],
    batch: &RecordBatch,
) -> Result<(Vec<AggInput>, Vec<Option<DataType>>)> {
    let inputs = aggregations
        .iter()
        .map(|a| AggInput::prepare(a, batch))
        .collect::<Result<Vec<_>>>()?;
    let types = aggregations
        .iter()
        .map(|a| {
            a.column
                .as_ref()
                .and_then(|n| batch.column_by_name(n))
                .map(|a| a.data_type().clone())
        })
        .collect();
    Ok((inputs, types))
}

/// The output type of an aggregate over a column of `input` type.
pub fn output_type(spec: &Aggregation, input: Option<&DataType>) -> DataType {
    use AggregateFunction as F;
    match (spec.function, input) {
        (F::Count | F::CountDistinct, _) => DataType::Int64,
        (F::Sum, Some(t)) if t.is_floating() => DataType::Float64,
        (F::Sum, _) => DataType::Int64,
        (F::Avg, _) => DataType::Float64,
        (_, Some(t)) => t.clone(),
        (_, None) => DataType::Null,
    }
}

/// The batch without the columns only the operators need.
pub(crate) fn without(batch: &RecordBatch, hidden: &[String]) -> Result<RecordBatch> {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !hidden.contains(f.name()))
        .map(|(i, _)| i)
        .collect();
    Ok(batch.project(&keep)?)
}

/// The types of a windowed pipeline's group keys and aggregate inputs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Types {
    pub groups: Vec<DataType>,
    pub inputs: Vec<Option<DataType>>,
}

/// A batch's rows ready for the windows.
pub(crate) struct Prepared {
    pub times: Vec<i64>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    pub groups: EncodedKeys,
    inputs: Vec<AggInput>,
    pub types: Types,
}

impl Prepared {
    /// `times`: the rows' event times (every row has one: late rows and
    /// rows without one never reach the windows).
    pub(crate) fn new(
        c: &OperatorConfig,
        batch: &RecordBatch,
        times: Vec<i64>,
    ) -> Result<Prepared> {
        let (group_types, groups) = group_keys(batch, &c.group_by)?;
        let (inputs, input_types) = agg_inputs(&c.aggregations, batch)?;
        let partitions = cast_values::<Int32Type>(column(batch, &c.partition_column)?)?;
        let offsets = cast_values::<Int64Type>(column(batch, &c.offset_column)?)?;
        Ok(Prepared {
            times,
            partitions,
            offsets,
            groups,
            inputs,
            types: Types {
                groups: group_types,
                inputs: input_types,
            },
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    pub(crate) fn feed(&self, accs: &mut [Acc], i: usize, batch_id: u64) {
        let arrival: Arrival = (batch_id, self.partitions[i], self.offsets[i]);
        for (acc, input) in accs.iter_mut().zip(&self.inputs) {
            acc.add(&input.at(i), self.times[i], arrival);
        }
    }
}

fn cast_values<T: arrow::datatypes::ArrowPrimitiveType>(array: &ArrayRef) -> Result<Vec<T::Native>>
where
    T::Native: Default,
{
    let converted = cast(array, &T::DATA_TYPE)?;
    let values = converted.as_primitive::<T>();
    Ok((0..values.len()).map(|i| values.value(i)).collect())
}
