//! The contract of operator state, [`StateStore`], and its key codec: here,
//! where every stage sees them without building an implementation (RocksDB
//! lives in `tributary-state`).
//!
//! Keys are plain bytes ordered bytewise. Operators put the time first in a
//! key, encoded with [`encode_time`] so byte order is time order: expiring
//! everything older than a watermark is then a single range delete.

use crate::{Classify, ErrorKind};

/// One staged change to the state. Changes of a batch are collected while
/// the batch is operated and applied by [`StateStore::commit`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// The state changes of one batch, applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedWrites {
    pub writes: Vec<Write>,
}

impl StagedWrites {
    /// Room for `additional` more writes: a large batch stages a million,
    /// which growing by doubling would copy again and again.
    pub fn reserve(&mut self, additional: usize) {
        self.writes.reserve(additional);
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push(Write::Put(key, value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.push(Write::Delete(key));
    }

    pub fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.writes.push(Write::DeleteRange(start, end));
    }
}

/// The state of one group of one pipeline.
///
/// Contract:
/// - Reads see committed state only; a batch's own changes are staged in a
///   [`StagedWrites`] and become visible at [`StateStore::commit`].
/// - `commit(n, writes)` applies `writes` in order and records `n` as the
///   last committed batch *atomically*: after a crash the store holds either
///   all of batch `n` or none of it. A commit may become durable only later
///   (RocksDB's flushes), so a crash may lose the last few commits, each
///   whole: recovery re-runs the batches after `committed_batch`. Batch ids
///   only grow: committing a batch id at or below the committed one is
///   refused, so a replay cannot apply twice.
/// - Keys are ordered bytewise; `scan(start, end)` returns `[start, end)` in
///   that order.
/// - Reads may run on several threads at once (an operator splits a
///   batch's keys across cores).
pub trait StateStore: Send + Sync {
    fn get(&self, key: &[u8]) -> StateResult<Option<Vec<u8>>>;

    /// Several point reads at once (RocksDB batches them).
    fn multi_get(&self, keys: &[Vec<u8>]) -> StateResult<Vec<Option<Vec<u8>>>>;

    /// Key-value pairs in `[start, end)`, in key order.
    fn scan(&self, start: &[u8], end: &[u8]) -> StateResult<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Calls `visit` with each key in `[start, end)`, in key order, without
    /// holding the keys or their values in memory all at once.
    fn visit_keys(&self, start: &[u8], end: &[u8], visit: &mut dyn FnMut(&[u8]))
    -> StateResult<()>;

    fn commit(&mut self, batch_id: u64, writes: StagedWrites) -> StateResult<()>;

    /// The last committed batch, `None` for an empty store.
    fn committed_batch(&self) -> StateResult<Option<u64>>;
}

/// Order-preserving encoding of a signed timestamp: byte order of the
/// encodings is numeric order of the values.
pub fn encode_time(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`encode_time`].
pub fn decode_time(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {source}")]
    Store {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("state store: batch {batch_id} cannot commit after batch {committed}")]
    OutOfOrder { committed: u64, batch_id: u64 },
    #[error("state snapshots at {uri}: {message}")]
    Snapshot { uri: String, message: String },
    #[error("state store at {path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
}

impl Classify for StateError {
    fn kind(&self) -> ErrorKind {
        match self {
            // A local disk failing (full, unwritable): the operator must act.
            StateError::Store { .. } | StateError::Snapshot { .. } => ErrorKind::External,
            StateError::OutOfOrder { .. } | StateError::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

/// What a [`StateStore`] returns.
pub type StateResult<T, E = StateError> = std::result::Result<T, E>;
