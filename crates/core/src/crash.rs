//! Fault injection for the exactly-once tests: `TRIBUTARY_CRASH_AT=<point>`
//! or `<point>@<batch id>` makes the process abort (no destructors, no
//! flushing: what SIGKILL does) when it reaches that step boundary. Unset, it
//! costs one load of a cached value per step.

use std::sync::OnceLock;

/// The step boundaries of a micro-batch, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The batch was read and decoded; its plan is not recorded yet.
    AfterRead,
    /// The plan is in the offsets log; nothing is written.
    AfterPlan,
    /// The batch's dead letters are committed to their table (only for a
    /// batch that has any); the data commit is not.
    AfterDeadLetters,
    /// The data files are written; the Delta commit is not.
    AfterFiles,
    /// The Delta commits landed; offsets are not committed to Kafka.
    AfterCommit,
    /// Offsets are committed to the consumer group.
    AfterOffsets,
    /// Not a step of a batch: the repartition stage has produced a
    /// transaction's records and not committed it. Its "batch id" is the
    /// process's count of repartition transactions, from 0.
    InRepartition,
    /// Not a step boundary: the reader thread panics when it starts reading
    /// a new batch (a bug in a decoder, say). The batch id is not known there.
    PanicInReader,
}

impl CrashPoint {
    const ALL: [(CrashPoint, &'static str); 8] = [
        (CrashPoint::AfterRead, "after_read"),
        (CrashPoint::AfterPlan, "after_plan"),
        (CrashPoint::AfterDeadLetters, "after_dead_letters"),
        (CrashPoint::AfterFiles, "after_files"),
        (CrashPoint::AfterCommit, "after_commit"),
        (CrashPoint::AfterOffsets, "after_offsets"),
        (CrashPoint::InRepartition, "in_repartition"),
        (CrashPoint::PanicInReader, "panic_in_reader"),
    ];

    /// Every point, in protocol order.
    pub fn all() -> impl Iterator<Item = CrashPoint> {
        Self::ALL.iter().map(|(p, _)| *p)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

/// The point and batch selected by the environment, parsed once.
fn selected() -> Option<(CrashPoint, Option<u64>)> {
    static SELECTED: OnceLock<Option<(CrashPoint, Option<u64>)>> = OnceLock::new();
    *SELECTED.get_or_init(|| parse(&std::env::var("TRIBUTARY_CRASH_AT").ok()?))
}

fn parse(value: &str) -> Option<(CrashPoint, Option<u64>)> {
    let (name, batch) = match value.split_once('@') {
        Some((n, b)) => (n, Some(b.parse().ok()?)),
        None => (value, None),
    };
    let point = CrashPoint::ALL.iter().find(|(_, n)| *n == name)?.0;
    Some((point, batch))
}

/// Aborts the process if the environment selected this point (and batch);
/// `PanicInReader` panics instead.
pub fn crash_point(point: CrashPoint, batch: u64) {
    if let Some((p, b)) = selected()
        && p == point
        && b.is_none_or(|b| b == batch)
    {
        if point == CrashPoint::PanicInReader {
            panic!("TRIBUTARY_CRASH_AT: panicking in the reader thread");
        }
        eprintln!(
            "TRIBUTARY_CRASH_AT: aborting at {} of batch {batch}",
            point.name()
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_and_without_batch() {
        assert_eq!(parse("after_files"), Some((CrashPoint::AfterFiles, None)));
        assert_eq!(
            parse("after_commit@3"),
            Some((CrashPoint::AfterCommit, Some(3)))
        );
        assert_eq!(parse("after_lunch"), None);
        assert_eq!(parse("after_plan@x"), None);
    }
}
