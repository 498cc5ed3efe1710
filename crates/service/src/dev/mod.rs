//! The development stack: an in-process Kafka (librdkafka's mock cluster,
//! which speaks the real protocol on localhost), a development schema
//! registry, and a generator of realistic click streams.

pub mod generator;
pub mod kafka;
pub mod registry;
