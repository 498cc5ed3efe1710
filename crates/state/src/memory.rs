use std::collections::BTreeMap;

use crate::{Result, StagedWrites, StateStore, Write, check_order};

/// State in a `BTreeMap`: for tests, property checks and the oracle.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    committed: Option<u64>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(keys.iter().map(|k| self.map.get(k).cloned()).collect())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .map
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn visit_keys(&self, start: &[u8], end: &[u8], visit: &mut dyn FnMut(&[u8])) -> Result<()> {
        if start < end {
            for k in self.map.range(start.to_vec()..end.to_vec()).map(|(k, _)| k) {
                visit(k);
            }
        }
        Ok(())
    }

    fn commit(&mut self, batch_id: u64, writes: StagedWrites) -> Result<()> {
        check_order(self.committed, batch_id)?;
        for w in writes.writes {
            match w {
                Write::Put(k, v) => {
                    self.map.insert(k, v);
                }
                Write::Delete(k) => {
                    self.map.remove(&k);
                }
                Write::DeleteRange(start, end) => {
                    if start < end {
                        let doomed: Vec<Vec<u8>> =
                            self.map.range(start..end).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            self.map.remove(&k);
                        }
                    }
                }
            }
        }
        self.committed = Some(batch_id);
        Ok(())
    }

    fn committed_batch(&self) -> Result<Option<u64>> {
        Ok(self.committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conforms() {
        crate::conformance::run_all(&mut || Box::new(MemoryStore::new()));
    }
}
