//! Delta sink: creates the table from the first batch's schema, writes
//! Parquet with column statistics, and commits each micro-batch as one
//! transaction carrying `txn {appId, version: batch id}` so a batch that
//! already landed is never written again.

mod audit;
mod changes;
mod dead_letters;
mod error;
mod files;
mod maintenance;
mod merge;
mod partitioning;
mod store;
mod table;

pub use audit::LoggedCommit;
pub use changes::AddedFile;
pub use dead_letters::dead_letter_batch;
pub use error::{DeltaSinkError, Result};
pub use files::{BatchEncoder, EncodedBatch, EncodedFile, FileIntent};
pub use maintenance::{DataFile, REWRITE_INFO_KEY, Rewrite, RewriteOutcome};
pub use partitioning::add_partition_columns;
pub use store::object_store_for;
pub use table::{
    BatchCommit, BatchRows, CommitMarker, CommitOutcome, DeltaTableSink, TableOptions,
};

/// Key under which Tributary's batch description is stored in `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "tributary";
