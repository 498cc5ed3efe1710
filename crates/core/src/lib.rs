//! Identifiers and types shared by every pipeline stage: batch ids, offset
//! ranges, error classification. No I/O lives here.

mod crash;
mod latency;
mod offsets;
mod state;

pub use crash::{CrashPoint, crash_point};
pub use latency::{LATENCY_BUCKETS, LatencyProgress};
pub use offsets::{OffsetRanges, PartitionRange};
pub use state::{
    StagedWrites, StateError, StateResult, StateStore, Write, decode_time, encode_time,
};

use serde::Serialize;

/// The columns a window row starts with: the window's bounds.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// The state group every batch belongs to when the whole topic is one group
/// (`state_scope: topic`, Spark's semantics).
pub const TOPIC_GROUP: &str = "topic";

/// The Delta `txn.appId` under which a group's batches are committed.
pub fn app_id(pipeline: &str, group: &str) -> String {
    format!("{pipeline}/{group}")
}

/// Who has to act for an error to go away; decides between halting, retrying
/// and dead-lettering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The spec or the input data is wrong: retrying cannot help.
    User,
    /// A peer (broker, registry, object store) failed: a retry may help.
    External,
    /// A bug or broken invariant in Tributary itself.
    Internal,
    /// A stored file (an offsets-log plan, a Delta log commit) cannot be
    /// read: retried a few times in case a writer is mid-way, then the
    /// pipeline stops naming the file; retrying forever would hide it.
    Corrupt,
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::External)
    }
}

/// Implemented by every crate's error enum so the engine can decide what to do
/// with an error without knowing where it came from.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

/// A Kafka record as the source hands it to the decoder.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp in milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's headers, read only when a table stores them.
    pub headers: Option<&'a dyn RecordHeaders>,
}

/// Headers of a Kafka record, in their order (a key may repeat).
pub trait RecordHeaders: std::fmt::Debug + Sync {
    fn for_each(&self, f: &mut dyn FnMut(&str, Option<&[u8]>));
}

/// A record that could not be decoded, kept whole with the reason, so nothing
/// is ever dropped silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub reason: DeadLetterReason,
}

impl DeadLetter {
    pub fn new(record: &RawRecord<'_>, reason: DeadLetterReason) -> DeadLetter {
        DeadLetter {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            reason,
        }
    }
}

/// Why a record is a dead letter. It is written to the dead-letter table as
/// its text (the `reason` column): each variant holds the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The record has no value (a tombstone).
    Tombstone,
    /// The value is not in the Confluent wire format (magic byte, schema id).
    Framing(String),
    /// The writer schema cannot be had or used: unknown to the registry,
    /// unsupported, or refused by `schema_evolution.on_incompatible`.
    Schema(String),
    /// The Avro body does not match its writer schema.
    Body(String),
    /// The record's Avro key cannot be decoded.
    Key(String),
    /// A Kafka column the table stores cannot be filled from the record.
    Column(String),
    /// The record's event time is further past its Kafka timestamp than
    /// `event_time.max_future`.
    Future(String),
    /// An earlier attempt at the batch sent the record here for this
    /// reason (recorded in its plan); a replay keeps it, whatever the
    /// registry answers by then.
    Recorded(String),
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterReason::Tombstone => f.write_str("tombstone: the record has no value"),
            DeadLetterReason::Framing(m)
            | DeadLetterReason::Schema(m)
            | DeadLetterReason::Body(m)
            | DeadLetterReason::Key(m)
            | DeadLetterReason::Column(m)
            | DeadLetterReason::Future(m)
            | DeadLetterReason::Recorded(m) => f.write_str(m),
        }
    }
}
