//! The overlapped stages of the batch loop: the reader thread fetches and
//! decodes, the encoder thread converts and encodes Parquet, and the async
//! task that started them plans, commits and applies state. Batch N commits
//! while N+1 is encoded and N+2 is read.
//!
//! Invariants: the threads never outlive their run (they are stopped and
//! joined whatever the outcome); a thread that fails or panics ends the run
//! with an error, never as if the topic were drained.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tributary_avro::RecordDecoder;
use tributary_core::{CrashPoint, crash_point};

use crate::contracts::Source;
use crate::discovery::PartitionDiscovery;
use crate::encode::{Chunk, Converter, ReadyBatch, run_encoder};
use crate::error::{EngineError, Result};
use crate::plan::PlanLimits;

/// What the reader thread reads from, and where it starts.
pub(crate) struct ReaderInput {
    pub source: Arc<dyn Source>,
    pub decoder: RecordDecoder,
    pub positions: BTreeMap<i32, i64>,
    pub limits: PlanLimits,
    /// For a group of the whole topic: partitions added while it runs.
    pub discovery: Option<PartitionDiscovery>,
    /// The user's stop.
    pub stop: Arc<AtomicBool>,
}

/// The running reader and encoder threads of one run.
pub(crate) struct Stages {
    /// Batches read, decoded and encoded, in order; an error ends them.
    pub ready: tokio::sync::mpsc::Receiver<Result<ReadyBatch>>,
    /// Stops the reader when this run fails.
    abort: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    encoder: JoinHandle<()>,
}

impl Stages {
    pub(crate) fn start(
        pipeline: &str,
        converter: Converter,
        target_file_size: u64,
        input: ReaderInput,
    ) -> Result<Stages> {
        let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Chunk>(64);
        let (ready_tx, ready) = tokio::sync::mpsc::channel::<Result<ReadyBatch>>(1);
        let encoder = std::thread::Builder::new()
            .name(format!("encode-{pipeline}"))
            .spawn(move || run_encoder(chunk_rx, ready_tx, converter, target_file_size))
            .map_err(|source| EngineError::Thread {
                thread: "encoder",
                source,
            })?;
        let abort = Arc::new(AtomicBool::new(false));
        let reader_abort = abort.clone();
        let reader = std::thread::Builder::new()
            .name(format!("read-{pipeline}"))
            .spawn(move || read_batches(input, &reader_abort, &chunk_tx))
            .map_err(|source| EngineError::Thread {
                thread: "reader",
                source,
            })?;
        Ok(Stages {
            ready,
            abort,
            reader,
            encoder,
        })
    }

    /// Stops and joins the threads; the run's `outcome` unless a thread
    /// panicked: its channel closed like one that finished, and without
    /// this the run would end as if drained, its records unread.
    pub(crate) async fn finish(self, mut outcome: Result<()>) -> Result<()> {
        self.abort.store(true, Ordering::Relaxed);
        drop(self.ready);
        let (reader, encoder) = (self.reader, self.encoder);
        let joined = tokio::task::spawn_blocking(move || {
            [("reader", reader.join()), ("encoder", encoder.join())]
        })
        .await
        .map_err(|source| EngineError::Task {
            task: "joining the batch loop's threads",
            source,
        })?;
        for (thread, joined) in joined {
            if let Err(panic) = joined
                && outcome.is_ok()
            {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                outcome = Err(EngineError::Internal(format!(
                    "the {thread} thread of the batch loop panicked: {message}"
                )));
            }
        }
        outcome
    }
}

/// The reader thread: new batches within the limits, until drained,
/// stopped or failed.
fn read_batches(
    mut input: ReaderInput,
    abort: &AtomicBool,
    chunks: &std::sync::mpsc::SyncSender<Chunk>,
) {
    let mut undrained: BTreeSet<i32> = input
        .limits
        .drain_targets
        .iter()
        .flatten()
        .filter(|(p, target)| input.positions.get(p).is_none_or(|pos| pos < target))
        .map(|(p, _)| *p)
        .collect();
    let mut carry = crate::carry::Carry::default();
    let stop = input.stop.clone();
    let stopped = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
    let mut send_rows = |rows| {
        chunks
            .send(Chunk::Rows(rows))
            .map_err(|_| EngineError::Internal("the encoder thread stopped".into()))
    };
    loop {
        crash_point(CrashPoint::PanicInReader, 0);
        if let Some(discovery) = &mut input.discovery
            && let Err(e) =
                discovery.add_new_partitions(input.source.as_ref(), &mut input.positions)
        {
            let _ = chunks.send(Chunk::Failed(e));
            break;
        }
        let result = input.source.read_new(
            &mut input.decoder,
            &mut input.positions,
            &input.limits,
            &mut undrained,
            &mut carry,
            &stopped,
            &mut send_rows,
        );
        let (chunk, last) = match result {
            Ok(b) => {
                let last = b.drained || stopped();
                // A trigger that found nothing is handed on too: it tells
                // the group it is caught up, and a stateful group runs a
                // batch without rows on it when its watermark moved.
                if b.records == 0 && last {
                    break;
                }
                (Chunk::End(b), last)
            }
            Err(e) => (Chunk::Failed(e), true),
        };
        if chunks.send(chunk).is_err() || last {
            break;
        }
    }
}
