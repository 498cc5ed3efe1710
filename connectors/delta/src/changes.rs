//! The change-feed role: what each commit of a table added (the republish
//! sink tails it), and the log read whole for `tributary verify`.

pub(crate) mod audit;
pub(crate) mod feed;
