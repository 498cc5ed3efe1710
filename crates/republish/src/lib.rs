//! Republish sink: tails a table's committed versions and produces their new
//! rows (filtered and projected) to a Kafka topic inside Kafka transactions,
//! with the next version to publish committed in the same transaction. A
//! `read_committed` consumer sees every qualifying row exactly once, in
//! table-version order; compaction's rewrites (`dataChange=false`) are never
//! republished; a fixed `transactional.id` per pipeline fences zombies.

mod encode;
mod error;
mod sink;

pub use error::{RepublishError, Result};
pub use sink::{RepublishCallback, RepublishProgress, run_republisher, run_republisher_checking};
pub use tributary_kafka::ProgressTopicCheck;
