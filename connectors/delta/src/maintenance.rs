//! The maintenance role: rewriting small files into big ones without
//! changing the data (`dataChange=false`), for the compaction worker.

pub(crate) mod rewrite;
