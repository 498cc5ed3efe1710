//! Compaction worker: bin-packs each partition's small files into files of
//! the target size with `dataChange=false` commits, writes Delta log
//! checkpoints, deletes expired log files and vacuums unreferenced files.
//!
//! Safe beside live ingest: a rewrite removes only files that are live in the
//! version it read, carries no `txn` (the batch ids exactly-once rests on are
//! untouched), and Delta's conflict check retries it after concurrent appends
//! or drops it when a concurrent commit removed one of its files.

mod error;
mod plan;
mod worker;
mod zorder;

pub use error::{CompactionError, Result};
pub use plan::{Bin, plan_bins};
pub use worker::{PassOptions, PassReport, compact_once, run_worker};
pub use zorder::z_order;
