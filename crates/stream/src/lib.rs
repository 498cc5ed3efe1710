//! Event-time operators over Arrow batches: late-row filtering against the
//! watermark, deduplication, tumbling / sliding / session windows with
//! their aggregations, and per-row rolling features. [`Operator::process`] is a pure function of (the
//! committed state, the batch's rows): it returns the batch's output and its
//! state changes *staged*, which the engine applies once the output is
//! committed. The rules, Spark's, are stated with worked timelines in
//! docs/event-time.md.

mod aggregate;
mod config;
mod dedup;
mod error;
mod feature_state;
mod features;
mod key_filter;
mod keys;
mod operator;
mod panes;
mod prepare;

#[cfg(test)]
mod oracle_tests;

pub use config::{AggregateFunction, Aggregation, Features, OutputMode, WINDOW_END, WINDOW_START};
pub use config::{OperatorConfig, Watermarks, Window};
pub use error::{Result, StreamError};
pub use operator::{Operated, Operator};
pub use prepare::output_type;
