//! Accumulators of the aggregate functions, their byte encoding in the
//! state store, and how two of them merge (sessions).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, new_null_array};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};

use crate::config::{AggregateFunction, Aggregation};

use crate::error::{Result, StreamError};

/// Where a row was read: batch, then Kafka partition and offset. Ties of
/// `first` / `last` on event time go to the row read first / last.
pub(crate) type Arrival = (u64, i32, i64);

/// A value seen at an event time, for `first` and `last`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamped {
    pub time: i64,
    pub arrival: Arrival,
    /// The value in Arrow's row format (nulls included).
    pub value: Vec<u8>,
}

/// The running state of one aggregate of one window and group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Acc {
    Count(i64),
    /// The distinct values themselves, so that panes and sessions merge
    /// exactly.
    DistinctSet(BTreeSet<Vec<u8>>),
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    /// Values in Arrow's row format, whose byte order is the value order.
    Min(Option<Vec<u8>>),
    Max(Option<Vec<u8>>),
    Avg {
        sum: f64,
        count: i64,
    },
    /// Boxed: inline, the stamp made every accumulator 64 bytes instead
    /// of 32, and a batch's features hold one per row and aggregation.
    First(Option<Box<Stamped>>),
    Last(Option<Box<Stamped>>),
}

/// What a row contributes to one aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Input<'a> {
    /// A row, for `count` without a column.
    Row,
    /// A null value: ignored, except by `first` / `last`.
    Null(&'a [u8]),
    Int(i64),
    Float(f64),
    /// A value in row format.
    Value(&'a [u8]),
}

impl Acc {
    /// An empty accumulator; `float` says whether a sum is of floats.
    pub(crate) fn new(function: AggregateFunction, float: bool) -> Acc {
        use AggregateFunction as F;
        match function {
            F::Count => Acc::Count(0),
            F::CountDistinct => Acc::DistinctSet(BTreeSet::new()),
            F::Sum if float => Acc::SumFloat(None),
            F::Sum => Acc::SumInt(None),
            F::Min => Acc::Min(None),
            F::Max => Acc::Max(None),
            F::Avg => Acc::Avg { sum: 0.0, count: 0 },
            F::First => Acc::First(None),
            F::Last => Acc::Last(None),
        }
    }

    /// Adds one row's input. `time` and `arrival` order `first` / `last`.
    /// Distinct counts of windows are counted by the caller, which knows
    /// whether the value is new.
    pub(crate) fn add(&mut self, input: &Input<'_>, time: i64, arrival: Arrival) {
        match (self, input) {
            (Acc::Count(n), Input::Row | Input::Int(_) | Input::Float(_) | Input::Value(_)) => {
                *n += 1
            }
            (Acc::DistinctSet(set), Input::Value(v)) => {
                set.insert(v.to_vec());
            }
            (Acc::SumInt(s), Input::Int(v)) => *s = Some(s.unwrap_or(0).wrapping_add(*v)),
            (Acc::SumFloat(s), Input::Float(v)) => *s = Some(s.unwrap_or(0.0) + v),
            (Acc::Avg { sum, count }, Input::Float(v)) => {
                *sum += v;
                *count += 1;
            }
            (Acc::Min(m), Input::Value(v)) if m.as_deref().is_none_or(|cur| *v < cur) => {
                *m = Some(v.to_vec())
            }
            (Acc::Max(m), Input::Value(v)) if m.as_deref().is_none_or(|cur| *v > cur) => {
                *m = Some(v.to_vec())
            }
            (Acc::First(f), Input::Value(v) | Input::Null(v)) => {
                let new = Stamped {
                    time,
                    arrival,
                    value: v.to_vec(),
                };
                if f.as_ref().is_none_or(|cur| earlier(&new, cur)) {
                    *f = Some(Box::new(new));
                }
            }
            (Acc::Last(l), Input::Value(v) | Input::Null(v)) => {
                let new = Stamped {
                    time,
                    arrival,
                    value: v.to_vec(),
                };
                if l.as_ref().is_none_or(|cur| earlier(cur, &new)) {
                    *l = Some(Box::new(new));
                }
            }
            _ => {}
        }
    }

    /// [`Acc::merge`] for an accumulator that is not needed after: the
    /// larger distinct set takes in the other's values without copies.
    pub(crate) fn absorb(&mut self, other: Acc) {
        match (self, other) {
            (Acc::DistinctSet(a), Acc::DistinctSet(mut b)) => {
                if a.len() < b.len() {
                    std::mem::swap(a, &mut b);
                }
                a.extend(b);
            }
            (acc, other) => acc.merge(&other),
        }
    }

    /// Folds another accumulator of the same function into this one,
    /// copying only the values it keeps: a window merges each of its panes.
    pub(crate) fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::DistinctSet(a), Acc::DistinctSet(b)) => {
                for value in b {
                    if !a.contains(value) {
                        a.insert(value.clone());
                    }
                }
            }
            (Acc::SumInt(a), Acc::SumInt(Some(b))) => *a = Some(a.unwrap_or(0).wrapping_add(*b)),
            (Acc::SumFloat(a), Acc::SumFloat(Some(b))) => *a = Some(a.unwrap_or(0.0) + b),
            (Acc::Avg { sum, count }, Acc::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Acc::Min(a), Acc::Min(Some(b))) if a.as_ref().is_none_or(|cur| b < cur) => {
                *a = Some(b.clone())
            }
            (Acc::Max(a), Acc::Max(Some(b))) if a.as_ref().is_none_or(|cur| b > cur) => {
                *a = Some(b.clone())
            }
            (Acc::First(a), Acc::First(Some(b)))
                if a.as_ref().is_none_or(|cur| earlier(b, cur)) =>
            {
                *a = Some(b.clone())
            }
            (Acc::Last(a), Acc::Last(Some(b))) if a.as_ref().is_none_or(|cur| earlier(cur, b)) => {
                *a = Some(b.clone())
            }
            _ => {}
        }
    }
}

fn earlier(a: &Stamped, b: &Stamped) -> bool {
    (a.time, a.arrival) < (b.time, b.arrival)
}

/// The output column of aggregate `spec`, of type `output` (see
/// `prepare::output_type`), from each output row's accumulator.
pub(crate) fn aggregate_column(
    spec: &Aggregation,
    output: &DataType,
    accs: &[&Acc],
) -> Result<ArrayRef> {
    use AggregateFunction as F;
    Ok(match output {
        DataType::Int64 => Arc::new(Int64Array::from_iter(accs.iter().map(|acc| match acc {
            Acc::Count(n) => Some(*n),
            Acc::DistinctSet(s) => Some(s.len() as i64),
            Acc::SumInt(s) => *s,
            _ => None,
        }))),
        DataType::Float64 if !matches!(spec.function, F::Min | F::Max | F::First | F::Last) => {
            Arc::new(Float64Array::from_iter(accs.iter().map(|acc| match acc {
                Acc::SumFloat(s) => *s,
                Acc::SumInt(s) => s.map(|v| v as f64),
                Acc::Avg { sum, count } => (*count > 0).then(|| sum / *count as f64),
                _ => None,
            })))
        }
        value_type => {
            let converter = RowConverter::new(vec![SortField::new(value_type.clone())])?;
            let null = converter
                .convert_columns(&[new_null_array(value_type, 1)])?
                .row(0)
                .data()
                .to_vec();
            let values: Vec<&[u8]> = accs
                .iter()
                .map(|acc| match acc {
                    Acc::Min(Some(v)) | Acc::Max(Some(v)) => v.as_slice(),
                    Acc::First(Some(s)) | Acc::Last(Some(s)) => s.value.as_slice(),
                    _ => null.as_slice(),
                })
                .collect();
            let parser = converter.parser();
            converter
                .convert_rows(values.iter().map(|v| parser.parse(v)))?
                .remove(0)
        }
    })
}

/// Appends accumulators to `out` in the state's byte format.
pub(crate) fn encode_accs(accs: &[Acc], out: &mut Vec<u8>) {
    for acc in accs {
        match acc {
            Acc::Count(n) => out.extend_from_slice(&n.to_be_bytes()),
            Acc::DistinctSet(set) => {
                out.extend_from_slice(&(set.len() as u32).to_be_bytes());
                for v in set {
                    put_bytes(out, v);
                }
            }
            Acc::SumInt(s) => put_opt(out, s.map(|v| v.to_be_bytes())),
            Acc::SumFloat(s) => put_opt(out, s.map(|v| v.to_be_bytes())),
            Acc::Min(v) | Acc::Max(v) => match v {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_bytes(out, v);
                }
            },
            Acc::Avg { sum, count } => {
                out.extend_from_slice(&sum.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Acc::First(s) | Acc::Last(s) => match s {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(&s.time.to_be_bytes());
                    out.extend_from_slice(&s.arrival.0.to_be_bytes());
                    out.extend_from_slice(&s.arrival.1.to_be_bytes());
                    out.extend_from_slice(&s.arrival.2.to_be_bytes());
                    put_bytes(out, &s.value);
                }
            },
        }
    }
}

fn put_opt(out: &mut Vec<u8>, v: Option<[u8; 8]>) {
    match v {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&b);
        }
    }
}

/// `v`, prefixed by its length (what [`Reader::slice`] reads).
pub(crate) fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// Reads what [`encode_accs`] wrote.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(StreamError::Corrupt("an accumulator is truncated".into()));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    pub(crate) fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>> {
        Ok(self.slice()?.to_vec())
    }

    /// What [`Reader::bytes`] reads, borrowed.
    pub(crate) fn slice(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Reads accumulators shaped like `template`.
    pub(crate) fn accs(&mut self, template: &[Acc]) -> Result<Vec<Acc>> {
        template.iter().map(|t| self.acc(t)).collect()
    }

    fn acc(&mut self, template: &Acc) -> Result<Acc> {
        Ok(match template {
            Acc::Count(_) => Acc::Count(self.i64()?),
            Acc::DistinctSet(_) => {
                let n = self.u32()?;
                let mut set = BTreeSet::new();
                for _ in 0..n {
                    set.insert(self.bytes()?);
                }
                Acc::DistinctSet(set)
            }
            Acc::SumInt(_) => Acc::SumInt(match self.u8()? {
                0 => None,
                _ => Some(self.i64()?),
            }),
            Acc::SumFloat(_) => Acc::SumFloat(match self.u8()? {
                0 => None,
                _ => Some(self.f64()?),
            }),
            Acc::Min(_) | Acc::Max(_) => {
                let v = match self.u8()? {
                    0 => None,
                    _ => Some(self.bytes()?),
                };
                if matches!(template, Acc::Min(_)) {
                    Acc::Min(v)
                } else {
                    Acc::Max(v)
                }
            }
            Acc::Avg { .. } => Acc::Avg {
                sum: self.f64()?,
                count: self.i64()?,
            },
            Acc::First(_) | Acc::Last(_) => {
                let s = match self.u8()? {
                    0 => None,
                    _ => Some(Box::new(Stamped {
                        time: self.i64()?,
                        arrival: (self.u64()?, self.i32()?, self.i64()?),
                        value: self.bytes()?,
                    })),
                };
                if matches!(template, Acc::First(_)) {
                    Acc::First(s)
                } else {
                    Acc::Last(s)
                }
            }
        })
    }
}

/// A window's result, ready to become an output row.
pub(crate) struct WindowRow {
    pub start: i64,
    pub end: i64,
    pub group: Vec<u8>,
    pub accs: Vec<Acc>,
}

pub(crate) fn read_accs(bytes: &[u8], template: &[Acc]) -> Result<Vec<Acc>> {
    let mut r = Reader::new(bytes);
    let accs = r.accs(template)?;
    if !r.is_done() {
        return Err(StreamError::Corrupt(
            "a window's accumulators do not match the spec's aggregations".into(),
        ));
    }
    Ok(accs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulators_round_trip_through_bytes() {
        let mut set = BTreeSet::new();
        set.insert(b"a".to_vec());
        set.insert(vec![]);
        let accs = vec![
            Acc::Count(3),
            Acc::Count(-1),
            Acc::DistinctSet(set),
            Acc::SumInt(None),
            Acc::SumInt(Some(i64::MIN)),
            Acc::SumFloat(Some(1.5)),
            Acc::Min(Some(vec![1, 2])),
            Acc::Max(None),
            Acc::Avg { sum: 2.5, count: 2 },
            Acc::First(Some(Box::new(Stamped {
                time: -5,
                arrival: (1, 2, 3),
                value: vec![9],
            }))),
            Acc::Last(None),
        ];
        let mut bytes = Vec::new();
        encode_accs(&accs, &mut bytes);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.accs(&accs).unwrap(), accs);
        assert!(r.is_done());
        // A truncated value is an error, not a panic.
        let mut short = Reader::new(&bytes[..bytes.len() - 1]);
        assert!(short.accs(&accs).is_err());
    }

    #[test]
    fn an_accumulator_takes_32_bytes() {
        // Features hold one per row and aggregation of a batch.
        assert!(
            std::mem::size_of::<Acc>() <= 32,
            "{}",
            std::mem::size_of::<Acc>()
        );
    }

    #[test]
    fn first_and_last_break_time_ties_by_arrival() {
        let mut first = Acc::First(None);
        let mut last = Acc::Last(None);
        for (arrival, v) in [((0, 1, 5), b"x"), ((0, 0, 9), b"y"), ((1, 0, 0), b"z")] {
            first.add(&Input::Value(v), 10, arrival);
            last.add(&Input::Value(v), 10, arrival);
        }
        let value = |a: &Acc| match a {
            Acc::First(Some(s)) | Acc::Last(Some(s)) => s.value.clone(),
            _ => panic!("empty"),
        };
        assert_eq!(value(&first), b"y");
        assert_eq!(value(&last), b"z");
    }
}
