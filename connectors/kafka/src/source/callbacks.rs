//! What the reader's and the group member's librdkafka callbacks share:
//! librdkafka's logs and errors into `tracing`, offset-commit results, and
//! the offset lists sent to the group.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::{KafkaSourceError, Result};

pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(facility, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
        _ => tracing::debug!(facility, "librdkafka: {message}"),
    }
}

/// The end of a partition arrives as an "error" event; it is routine here.
pub(crate) fn error(error: KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
        tracing::trace!("librdkafka: {reason}");
    } else {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

pub(crate) fn commit_result(result: KafkaResult<()>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not commit offsets to the consumer group (lag tools will lag; the table is correct)");
    }
}

/// `(partition, next offset)` pairs as a list for an offset commit.
pub(crate) fn offset_list(topic: &str, next_offsets: &[(i32, i64)]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next_offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|source| KafkaSourceError::Client {
                operation: "offset commit",
                source,
            })?;
    }
    Ok(tpl)
}
