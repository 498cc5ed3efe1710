//! The sink role: each micro-batch into a table as one idempotent
//! transaction (Parquet files written first, then one commit carrying
//! `txn {appId, version: batch id}`), appends and update mode's MERGE.

pub(crate) mod dead_letters;
pub(crate) mod files;
pub(crate) mod live_files;
pub(crate) mod merge;
pub(crate) mod partitioning;
pub(crate) mod table;
