//! Which files a pass rewrites: pure bin-packing over the table's file list.

use std::collections::BTreeMap;

use tributary_delta::DataFile;

/// Files of one partition rewritten into one file.
#[derive(Debug, Clone)]
pub struct Bin {
    pub partition_values: Vec<Option<String>>,
    pub files: Vec<DataFile>,
}

impl Bin {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Plans the bins of one pass.
///
/// Per partition, files smaller than `target_size` are candidates. A
/// partition qualifies when it has at least `min_files` candidates and its
/// newest file (of any size) was added at least `quiet_for_ms` before
/// `now_ms`. Its candidates, in the order they were added (then by path),
/// fill bins of at most `target_size` bytes: a file that does not fit closes
/// the bin. Bins of a single file are dropped (nothing to merge).
pub fn plan_bins(
    files: &[DataFile],
    target_size: u64,
    min_files: usize,
    quiet_for_ms: i64,
    now_ms: i64,
) -> Vec<Bin> {
    let mut partitions: BTreeMap<&[Option<String>], Vec<&DataFile>> = BTreeMap::new();
    for f in files {
        partitions.entry(&f.partition_values).or_default().push(f);
    }
    let mut bins = Vec::new();
    for (values, files) in partitions {
        let newest = files.iter().map(|f| f.modification_time).max().unwrap_or(0);
        if now_ms - newest < quiet_for_ms {
            continue;
        }
        let mut candidates: Vec<&DataFile> =
            files.into_iter().filter(|f| f.size < target_size).collect();
        if candidates.len() < min_files {
            continue;
        }
        candidates
            .sort_by(|a, b| (a.modification_time, &a.path).cmp(&(b.modification_time, &b.path)));
        let mut current: Vec<DataFile> = Vec::new();
        let mut current_size = 0u64;
        let mut close = |current: &mut Vec<DataFile>| {
            if current.len() >= 2 {
                bins.push(Bin {
                    partition_values: values.to_vec(),
                    files: std::mem::take(current),
                });
            }
            current.clear();
        };
        for f in candidates {
            if !current.is_empty() && current_size + f.size > target_size {
                close(&mut current);
                current_size = 0;
            }
            current_size += f.size;
            current.push(f.clone());
        }
        close(&mut current);
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, partition: &str, size: u64, added: i64) -> DataFile {
        DataFile {
            path: path.into(),
            size,
            modification_time: added,
            partition_values: vec![Some(partition.into())],
            rows: None,
            stats: None,
            remove: Default::default(),
        }
    }

    fn paths(bin: &Bin) -> Vec<&str> {
        bin.files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn bins_fill_in_the_order_files_were_added() {
        let files = vec![
            file("c", "a", 40, 3),
            file("a", "a", 50, 1),
            file("b", "a", 40, 2),
            file("d", "a", 30, 4),
            file("e", "a", 100, 5), // not small: stays
        ];
        let bins = plan_bins(&files, 100, 2, 0, 10);
        assert_eq!(bins.len(), 2);
        assert_eq!(paths(&bins[0]), ["a", "b"]);
        assert_eq!(paths(&bins[1]), ["c", "d"]);
        assert_eq!(bins[0].bytes(), 90);
    }

    #[test]
    fn single_file_bins_and_partitions_below_min_files_are_left_alone() {
        let files = vec![
            file("a", "x", 60, 1),
            file("b", "x", 60, 2),
            file("c", "x", 60, 3),
            file("d", "y", 10, 1),
            file("e", "y", 10, 2),
        ];
        // x: every pair exceeds 100, so every bin holds one file.
        let bins = plan_bins(&files, 100, 2, 0, 10);
        assert_eq!(bins.len(), 1);
        assert_eq!(paths(&bins[0]), ["d", "e"]);
        // y has 2 candidates, below min_files 3.
        let bins = plan_bins(&files, 200, 3, 0, 10);
        assert_eq!(bins.len(), 1);
        assert_eq!(bins[0].partition_values, vec![Some("x".to_string())]);
        assert_eq!(paths(&bins[0]), ["a", "b", "c"]);
    }

    #[test]
    fn partitions_still_receiving_files_wait_for_quiet_for() {
        let files = vec![
            file("a", "old", 10, 100),
            file("b", "old", 10, 200),
            file("c", "new", 10, 900),
            file("d", "new", 10, 950),
        ];
        let bins = plan_bins(&files, 100, 2, 500, 1000);
        assert_eq!(bins.len(), 1);
        assert_eq!(paths(&bins[0]), ["a", "b"]);
    }
}
