//! Delta Lake in three roles, one folder each: `sink` (creates the table
//! from the first batch's schema, writes Parquet with column statistics,
//! and commits each micro-batch as one transaction carrying `txn {appId,
//! version: batch id}` so a batch that already landed is never written
//! again), `maintenance` (compaction's rewrites) and `changes` (the change
//! feed of committed versions, and the log read whole for verify).

mod changes;
mod error;
mod maintenance;
mod sink;
mod store;

pub use changes::audit::LoggedCommit;
pub use changes::feed::AddedFile;
pub use error::{DeltaSinkError, Result};
pub use maintenance::rewrite::{REWRITE_INFO_KEY, Rewrite, RewriteOutcome};
pub use sink::dead_letters::dead_letter_batch;
pub use sink::files::{BatchEncoder, EncodedBatch, EncodedFile, FileIntent};
pub use sink::live_files::DataFile;
pub use sink::partitioning::add_partition_columns;
pub use sink::table::{
    BatchCommit, BatchRows, CommitMarker, CommitOutcome, DeltaTableSink, TableOptions,
};
pub use store::object_store_for;

/// Key under which Tributary's batch description is stored in `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "tributary";
