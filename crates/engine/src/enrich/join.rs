//! One version of a dimension table in memory, and the hash join of a
//! batch's records with it.

use std::hash::BuildHasher;
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{cast, take};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;
use tributary_spec::{EnrichSpec, JoinKind};

/// One version of a dimension table in memory.
pub(crate) struct Dimension {
    pub(super) version: u64,
    key_types: Vec<DataType>,
    keys: RowConverter,
    /// The columns it adds, one row per dimension row.
    rows: RecordBatch,
    /// Each row's key, in `keys`' row format.
    encoded: Rows,
    /// The first row of each key, found by the hash of its encoded key
    /// (one table of row numbers: no allocation per key); a NULL key is
    /// in none.
    first: HashTable<u32>,
    /// The next row with the same key as each row ([`NO_ROW`]: none).
    next: Vec<u32>,
    hasher: foldhash::fast::RandomState,
}

const NO_ROW: u32 = u32::MAX;

impl Dimension {
    /// The first row whose key is `key` (in `keys`' row format).
    fn first_row(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let same = |&r: &u32| self.encoded.row(r as usize).as_ref() == key;
        self.first.find(hash, same).copied()
    }

    pub(super) fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    /// The row after `row` with its key.
    fn next_row(&self, row: u32) -> Option<u32> {
        Some(self.next[row as usize]).filter(|&n| n != NO_ROW)
    }
}

/// Indexes `all` (the `on` columns, then the added ones) by its key.
pub(super) fn index(
    entry: &EnrichSpec,
    all: RecordBatch,
    version: u64,
) -> deltalake::arrow::error::Result<Dimension> {
    let key_count = entry.on.len();
    let key_columns: Vec<ArrayRef> = all.columns()[..key_count].to_vec();
    let key_types: Vec<DataType> = key_columns.iter().map(|c| c.data_type().clone()).collect();
    let keys = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
    let encoded = keys.convert_columns(&key_columns)?;
    let rows = u32::try_from(all.num_rows()).map_err(|_| {
        ArrowError::InvalidArgumentError("more than 4 billion dimension rows".into())
    })?;
    let hasher = foldhash::fast::RandomState::default();
    let hash_of = |r: &u32| hasher.hash_one(encoded.row(*r as usize).as_ref());
    let mut first: HashTable<u32> = HashTable::with_capacity(rows as usize);
    let mut next = vec![NO_ROW; rows as usize];
    // From the last row back, each row put before the rows of its key
    // already filed: a key's rows chain in table order.
    for row in (0..rows).rev() {
        // A NULL key matches nothing, as in SQL.
        if key_columns.iter().any(|k| k.is_null(row as usize)) {
            continue;
        }
        let key = encoded.row(row as usize);
        let same = |r: &u32| encoded.row(*r as usize).as_ref() == key.as_ref();
        match first.entry(hasher.hash_one(key.as_ref()), same, hash_of) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                next[row as usize] = std::mem::replace(o.get_mut(), row);
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(row);
            }
        }
    }
    let added = all.project(&(key_count..all.num_columns()).collect::<Vec<_>>())?;
    Ok(Dimension {
        version,
        key_types,
        keys,
        rows: added,
        encoded,
        first,
        next,
        hasher,
    })
}

/// `rows` with the dimension's columns added (each record once per row of
/// its key, in table order), and how many records an inner join dropped.
pub(super) fn join_one(
    entry: &EnrichSpec,
    dimension: &Dimension,
    rows: &RecordBatch,
) -> std::result::Result<(RecordBatch, usize), String> {
    let keys = entry
        .on
        .iter()
        .zip(&dimension.key_types)
        .map(|(name, to)| {
            let column = rows
                .column_by_name(name)
                .ok_or_else(|| format!("the records have no key column {name:?}"))?;
            cast(column, to).map_err(|e| {
                format!(
                    "key column {name:?} ({}) does not convert to the dimension's {to}: {e}",
                    column.data_type()
                )
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let probe = dimension
        .keys
        .convert_columns(&keys)
        .map_err(|e| e.to_string())?;
    let mut left = Vec::with_capacity(rows.num_rows());
    let mut right: Vec<Option<u32>> = Vec::with_capacity(rows.num_rows());
    let mut dropped = 0;
    for row in 0..rows.num_rows() {
        let mut found = if keys.iter().any(|k| k.is_null(row)) {
            None
        } else {
            dimension.first_row(probe.row(row).as_ref())
        };
        match found {
            Some(_) => {
                while let Some(m) = found {
                    left.push(row as u32);
                    right.push(Some(m));
                    found = dimension.next_row(m);
                }
            }
            None if entry.how == JoinKind::Left => {
                left.push(row as u32);
                right.push(None);
            }
            None => dropped += 1,
        }
    }
    let unchanged = left.len() == rows.num_rows()
        && dropped == 0
        && left.iter().enumerate().all(|(i, l)| *l as usize == i);
    let mut columns = if unchanged {
        rows.columns().to_vec()
    } else {
        let left = UInt32Array::from(left);
        rows.columns()
            .iter()
            .map(|c| take(c, &left, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?
    };
    let right = UInt32Array::from(right);
    let mut fields: Vec<Arc<Field>> = rows.schema().fields().iter().cloned().collect();
    for (field, column) in dimension
        .rows
        .schema()
        .fields()
        .iter()
        .zip(dimension.rows.columns())
    {
        if rows.schema().column_with_name(field.name()).is_some() {
            return Err(format!(
                "the records have a column {:?} already; leave it out of columns",
                field.name()
            ));
        }
        fields.push(field.clone());
        columns.push(take(column, &right, None).map_err(|e| e.to_string())?);
    }
    let schema = Schema::new_with_metadata(fields, rows.schema().metadata().clone());
    let joined = RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| e.to_string())?;
    Ok((joined, dropped))
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::array::{Int64Array, StringArray};

    use super::*;

    fn entry(how: &str) -> EnrichSpec {
        serde_json::from_value(serde_json::json!({
            "table": "memory:///dimension",
            "on": ["card"],
            "columns": ["tier"],
            "how": how,
        }))
        .unwrap()
    }

    /// Nullable columns, as the dimension's are read.
    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter_with_nullable(columns.into_iter().map(|(n, c)| (n, c, true)))
            .unwrap()
    }

    /// Rows of `joined` as (card, tier) pairs.
    fn pairs(joined: &RecordBatch) -> Vec<(Option<i64>, Option<String>)> {
        let card = joined.column(0).as_any().downcast_ref::<Int64Array>();
        let tier = joined.column(1).as_any().downcast_ref::<StringArray>();
        let (card, tier) = (card.unwrap(), tier.unwrap());
        (0..joined.num_rows())
            .map(|i| {
                let c = card.is_valid(i).then(|| card.value(i));
                let t = tier.is_valid(i).then(|| tier.value(i).to_string());
                (c, t)
            })
            .collect()
    }

    #[test]
    fn each_record_joins_every_row_of_its_key_in_table_order() {
        let dimension = batch(vec![
            (
                "card",
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(2),
                    None,
                    Some(1),
                    Some(3),
                ])),
            ),
            (
                "tier",
                Arc::new(StringArray::from(vec!["a", "b", "null-key", "c", "d"])),
            ),
        ]);
        let records = batch(vec![(
            "card",
            Arc::new(Int64Array::from(vec![
                Some(1),
                None,
                Some(9),
                Some(3),
                Some(1),
            ])),
        )]);
        let one = |s: &str| Some(s.to_string());
        for how in ["left", "inner"] {
            let entry = entry(how);
            let indexed = index(&entry, dimension.clone(), 0).unwrap();
            let (joined, dropped) = join_one(&entry, &indexed, &records).unwrap();
            let mut expected = vec![(Some(1), one("a")), (Some(1), one("c"))];
            if how == "left" {
                // A NULL key matches nothing, not the dimension's NULL key.
                expected.push((None, None));
                expected.push((Some(9), None));
            }
            expected.extend([
                (Some(3), one("d")),
                (Some(1), one("a")),
                (Some(1), one("c")),
            ]);
            assert_eq!(pairs(&joined), expected, "{how} join");
            assert_eq!(dropped, if how == "left" { 0 } else { 2 }, "{how} join");
        }
    }
}
