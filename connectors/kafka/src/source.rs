//! The source role: a blocking reader over librdkafka's `BaseConsumer`,
//! which polls without an async hop per message (the hot loop runs on its
//! own thread), and the consumer-group member of `state_scope: partition`.

pub(crate) mod callbacks;
pub(crate) mod member;
pub(crate) mod reader;
