//! The producer role: the republish sink's transactional producer, its
//! progress kept in the same Kafka transactions.

pub(crate) mod publisher;
