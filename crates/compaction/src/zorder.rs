//! Z-order: sorts rows along a Z-order (Morton) curve of some columns, so
//! each file (and row group) covers a small box of their values and readers
//! skip more by statistics than a sort on one column would allow.

use deltalake::arrow::array::{RecordBatch, UInt32Array};
use deltalake::arrow::compute::{SortOptions, sort_to_indices, take_record_batch};

use crate::error::{CompactionError, Result};

/// Sorts `batch` in Z-order of `columns`. Each column contributes its rows'
/// ranks (nulls first), scaled to `64 / columns` bits; the bits of all
/// columns are interleaved into one 64-bit key per row, most significant
/// first, and rows are sorted by that key (stable for equal keys).
pub fn z_order(batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    if columns.is_empty() || rows < 2 {
        return Ok(batch.clone());
    }
    let width = columns.len() as u32;
    let bits = (64 / width).min(32);
    let mut keys = vec![0u64; rows];
    for (position, name) in columns.iter().enumerate() {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| CompactionError::ZOrder(format!("the table has no column {name:?}")))?;
        let order = sort_to_indices(
            column,
            Some(SortOptions {
                descending: false,
                nulls_first: true,
            }),
            None,
        )?;
        for (rank, row) in order.values().iter().enumerate() {
            let scaled = ((rank as u128) << bits) / rows as u128;
            keys[*row as usize] |= spread(scaled as u64, bits, width, position as u32);
        }
    }
    let mut indices: Vec<u32> = (0..rows as u32).collect();
    indices.sort_by_key(|i| keys[*i as usize]);
    Ok(take_record_batch(batch, &UInt32Array::from(indices))?)
}

/// Moves bit `b` of `value` to bit `b * width + position`.
fn spread(value: u64, bits: u32, width: u32, position: u32) -> u64 {
    let mut out = 0;
    for b in 0..bits {
        if value >> b & 1 == 1 {
            out |= 1 << (b * width + position);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{AsArray, Int64Array};
    use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    fn grid(n: i64) -> RecordBatch {
        // Every (x, y) of an n x n grid, in row-major order.
        let xs: Vec<i64> = (0..n * n).map(|i| i / n).collect();
        let ys: Vec<i64> = (0..n * n).map(|i| i % n).collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("x", DataType::Int64, true),
                Field::new("y", DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(xs)),
                Arc::new(Int64Array::from(ys)),
            ],
        )
        .unwrap()
    }

    /// The widest range of `column` over any run of `chunk` consecutive rows.
    fn widest_range(batch: &RecordBatch, column: &str, chunk: usize) -> i64 {
        let values = batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Int64Type>();
        values
            .values()
            .chunks(chunk)
            .map(|c| c.iter().max().unwrap() - c.iter().min().unwrap())
            .max()
            .unwrap()
    }

    #[test]
    fn z_order_bounds_both_columns_in_every_block() {
        let n = 16;
        let sorted = z_order(&grid(n), &["x".into(), "y".into()]).unwrap();
        assert_eq!(sorted.num_rows(), (n * n) as usize);
        // Row-major order: a block of 16 rows spans all of y.
        assert_eq!(widest_range(&grid(n), "y", 16), n - 1);
        // Z-order: every block of 16 rows is a 4 x 4 square.
        assert_eq!(widest_range(&sorted, "x", 16), 3);
        assert_eq!(widest_range(&sorted, "y", 16), 3);
        // The same rows, each exactly once.
        let mut pairs: Vec<(i64, i64)> = (0..sorted.num_rows())
            .map(|i| {
                (
                    sorted.column(0).as_primitive::<Int64Type>().value(i),
                    sorted.column(1).as_primitive::<Int64Type>().value(i),
                )
            })
            .collect();
        pairs.sort();
        let expected: Vec<(i64, i64)> = (0..n).flat_map(|x| (0..n).map(move |y| (x, y))).collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn an_unknown_column_is_an_error() {
        let err = z_order(&grid(2), &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
