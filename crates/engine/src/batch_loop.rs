//! The batch loop of one group: open, recover, then plan -> read -> encode
//! -> commit -> apply state -> clean up, batch after batch, until drained,
//! stopped or failed.
//!
//! Invariants: a batch's plan is recorded in the offsets log before
//! anything of it is written; a plan another instance recorded first for
//! the same id with other ranges stops this run (it re-syncs on retry); a
//! recorded batch is re-run only with exactly its ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tributary_core::{CrashPoint, OffsetRanges, crash_point};
use tributary_kafka::{GroupMember, KafkaReader};
use tributary_spec::{StartingOffsets, TableSpec};

use crate::batch::BatchWriter;
use crate::cleanup::remove_failed_attempts;
use crate::contracts::{ReadBatch, Source};
use crate::discovery::PartitionDiscovery;
use crate::encode::{Converter, Payload, ReadyBatch};
use crate::enrich::{Dimensions, Loading};
use crate::error::{EngineError, Result};
use crate::open::{Group, GroupScope, reader_config};
use crate::options::{Components, GroupStep, PipelineOptions, RunSummary};
use crate::plan::{BatchPlan, PlanLimits, RecordedDeadLetter};
use crate::recovery::{Recovery, recover};
use crate::stages::{ReaderInput, Stages};

/// One group's runs: what they share across retries.
pub(crate) struct Run<'a> {
    components: Components,
    pub scope: GroupScope,
    pub writer: BatchWriter<'a>,
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        spec: &'a TableSpec,
        options: &'a PipelineOptions,
        components: Components,
        scope: GroupScope,
        member: Option<Arc<GroupMember>>,
    ) -> Run<'a> {
        Run {
            components,
            scope,
            writer: BatchWriter {
                spec,
                options,
                member,
                summary: RunSummary::default(),
            },
        }
    }

    /// One run: recovery, then new batches until drained or stopped.
    pub(crate) async fn once(&mut self) -> Result<()> {
        let spec = self.writer.spec;
        let mut group = Group::open(spec, &self.components, &self.scope.name).await?;
        let source: Arc<dyn Source> = Arc::new(KafkaReader::connect(&reader_config(spec))?);
        let state = match &group.state {
            Some(s) => Some(s.committed_batch()?),
            None => None,
        };
        let recovery = recover(&group.tables(spec), group.log.as_ref(), state).await?;
        // Dimensions load while the first new batch is read; re-runs join
        // the versions their plans recorded, so they wait for them.
        let mut loading = (!spec.enrich.is_empty()).then(|| Loading::start(spec));
        let mut dimensions = None;
        if !recovery.rerun.is_empty()
            && let Some(l) = loading.take()
        {
            dimensions = l.wait().await?;
        }
        for plan in &recovery.rerun {
            if !self
                .rerun(&mut group, source.as_ref(), plan, dimensions.as_ref())
                .await?
            {
                return Ok(());
            }
        }
        if let Some(plan) = &recovery.landed {
            remove_failed_attempts(&mut group, plan, 0).await?;
        }
        let next_batch = recovery.next_batch;
        let input = self.reader_input(&mut group, source.clone(), recovery)?;
        let positions = input.positions.clone();
        let mut converter = Converter::new(
            spec,
            group.records_schema(spec),
            group.hidden.clone(),
            group.operator_inputs.clone(),
            dimensions,
        )?;
        let loading = loading.map(|l| {
            let (deliver, delivered) = std::sync::mpsc::channel();
            converter.load_later(delivered);
            (l, deliver)
        });
        let mut stages = Stages::start(
            &spec.pipeline,
            converter,
            spec.table.target_file_size.0,
            input,
        )?;
        let outcome = async {
            // Dimensions that do not load fail the run, even one with
            // nothing to read.
            if let Some((l, deliver)) = loading
                && let Some(loaded) = l.wait().await?
            {
                let _ = deliver.send(loaded);
            }
            self.commit_batches(
                &mut group,
                source.as_ref(),
                &mut stages,
                next_batch,
                positions,
            )
            .await
        }
        .await;
        stages.finish(outcome).await
    }

    /// Assigns the partitions at their resume positions, and sets what the
    /// reader thread reads and when a batch ends.
    fn reader_input(
        &self,
        group: &mut Group,
        source: Arc<dyn Source>,
        recovery: Recovery,
    ) -> Result<ReaderInput> {
        let spec = self.writer.spec;
        let partitions = match &self.scope.partitions {
            Some(own) => own.clone(),
            None => blocking(|| source.partitions())?,
        };
        let mut positions = recovery.positions;
        // Partitions without a position: new partitions of a running pipeline
        // start at the beginning (as in Spark); a new pipeline obeys starting_offsets.
        let earliest =
            recovery.resumed || spec.source.kafka.starting_offsets == StartingOffsets::Earliest;
        // Asked once, for the start positions, their check and the drain
        // targets, and before the partitions are assigned: an assigned
        // consumer's requests wait behind its fetches.
        let asked: Vec<i32> = partitions
            .iter()
            .chain(positions.keys())
            .copied()
            .collect::<BTreeSet<i32>>()
            .into_iter()
            .collect();
        let marks = blocking(|| source.watermarks(&asked))?;
        for p in &partitions {
            let (low, high) = marks[p];
            positions
                .entry(*p)
                .or_insert(if earliest { low } else { high });
        }
        let highs: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        source.check_positions(&positions, &highs)?;
        let drain_targets = spec.trigger.available_now.then(|| {
            let targets: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, highs[p])).collect();
            group.known_latest = targets.clone();
            targets
        });
        blocking(|| source.seek(&positions))?;

        // A group of the whole topic takes partitions added to it while it
        // runs (a drain with `available_now` keeps the partitions it started with).
        let discovery = (self.scope.partitions.is_none() && drain_targets.is_none())
            .then(|| PartitionDiscovery::new(spec.pipeline.clone()));
        Ok(ReaderInput {
            source,
            decoder: group.decoder(spec, self.components.registry.clone()),
            positions,
            limits: PlanLimits {
                max_offsets: spec.trigger.max_offsets_per_trigger.unwrap_or(u64::MAX),
                max_bytes: spec.table.target_file_size.0,
                interval: spec.trigger.interval.0,
                drain_targets,
            },
            discovery,
            stop: self.writer.options.stop.clone(),
        })
    }

    /// Plans and commits each batch the stages hand over. As in Spark, a
    /// stateful group runs a batch without rows when its last batch moved
    /// the watermark and nothing new came: on a trigger that found nothing,
    /// and at the end of an `available_now` drain. It closes the windows
    /// and forgets the keys the new watermark passed, so they are written
    /// without waiting for more records.
    async fn commit_batches(
        &mut self,
        group: &mut Group,
        source: &dyn Source,
        stages: &mut Stages,
        mut next_batch: u64,
        mut positions: BTreeMap<i32, i64>,
    ) -> Result<()> {
        let spec = self.writer.spec;
        let mut caught_up = false;
        while let Some(ready) = stages.ready.recv().await {
            let batch = ready?;
            // A trigger that found nothing runs a batch without rows only
            // in a continuous run; a drain runs one at its end (below).
            let quiet_batch = !spec.trigger.available_now && watermark_moved(group)?;
            if batch.read.records > 0 || quiet_batch {
                crash_point(CrashPoint::AfterRead, next_batch);
                positions.clone_from(&batch.read.end_offsets);
                self.plan_and_write(group, source, next_batch, batch)
                    .await?;
                next_batch += 1;
            }
            if !caught_up {
                caught_up = true;
                let options = self.writer.options;
                options.tell_group(&spec.pipeline, &self.scope.name, GroupStep::CaughtUp);
            }
        }
        let stopped = self.writer.options.stop.load(Ordering::Relaxed);
        if spec.trigger.available_now && !stopped && watermark_moved(group)? {
            let batch = ReadyBatch {
                read: ReadBatch {
                    ranges: OffsetRanges::new(spec.table_topic()),
                    end_offsets: positions,
                    ..ReadBatch::default()
                },
                payload: Payload::Rows(Vec::new()),
                encode_time: Duration::ZERO,
                filtered_rows: 0,
                dimension_versions: None,
            };
            self.plan_and_write(group, source, next_batch, batch)
                .await?;
        }
        Ok(())
    }

    /// Records a new batch's plan in the offsets log, then writes it.
    async fn plan_and_write(
        &mut self,
        group: &mut Group,
        source: &dyn Source,
        batch_id: u64,
        batch: ReadyBatch,
    ) -> Result<()> {
        let plan = plan_of(batch_id, &self.scope.name, &batch);
        let started = Instant::now();
        match group.log.record(&plan).await? {
            None => {}
            Some(recorded) if recorded.ranges == plan.ranges => {}
            Some(_) => {
                return Err(EngineError::ConcurrentInstance(format!(
                    "batch {} of group {} was planned by another instance sharing this checkpoint",
                    plan.batch_id, plan.group
                )));
            }
        }
        let plan_ms = started.elapsed().as_millis() as u64;
        crash_point(CrashPoint::AfterPlan, plan.batch_id);
        self.writer
            .write(group, source, &plan, batch, false, plan_ms)
            .await
    }

    /// Re-runs a recorded batch with exactly its offsets: read, decode,
    /// operate and write, each table commit skipped where it landed.
    /// Returns false when the pipeline was stopped meanwhile.
    async fn rerun(
        &mut self,
        group: &mut Group,
        source: &dyn Source,
        plan: &BatchPlan,
        dimensions: Option<&Arc<Dimensions>>,
    ) -> Result<bool> {
        let spec = self.writer.spec;
        tracing::info!(pipeline = %spec.pipeline, batch = plan.batch_id, "re-running a planned batch with its recorded offsets");
        let mut decoder = group.decoder(spec, self.components.registry.clone());
        let stop = self.writer.options.stop.clone();
        let stopped = || stop.load(Ordering::Relaxed);
        let mut rows = Vec::new();
        let mut collect = |b| {
            rows.push(b);
            Ok(())
        };
        let replayed = blocking(|| source.replay(&mut decoder, plan, &stopped, &mut collect))?;
        let Some(read) = replayed else {
            return Ok(false);
        };
        let started = Instant::now();
        let mut converter = Converter::new(
            spec,
            group.records_schema(spec),
            group.hidden.clone(),
            group.operator_inputs.clone(),
            dimensions.cloned(),
        )?;
        if let Some(d) = dimensions {
            converter.pin(d.pin_recorded(plan.dimension_versions.as_deref()).await?);
        }
        let payload = blocking(|| converter.payload_of(&rows, spec.table.target_file_size.0))?;
        let batch = ReadyBatch {
            read,
            payload,
            encode_time: started.elapsed(),
            filtered_rows: converter.take_filtered(),
            dimension_versions: converter.take_dimension_versions(),
        };
        self.writer
            .write(group, source, plan, batch, true, 0)
            .await?;
        Ok(true)
    }
}

/// Whether a stateful group's watermark moved since its last batch ran.
fn watermark_moved(group: &Group) -> Result<bool> {
    match &group.state {
        Some(state) => state.watermark_moved(),
        None => Ok(false),
    }
}

/// The plan of a batch as read: its ranges, where it leaves every
/// partition, and its dead letters.
fn plan_of(batch_id: u64, group: &str, batch: &ReadyBatch) -> BatchPlan {
    let letters = &batch.read.dead_letters;
    BatchPlan {
        batch_id,
        group: group.to_string(),
        ranges: batch.read.ranges.clone(),
        end_offsets: batch.read.end_offsets.clone(),
        dead_letters: letters.len() as u64,
        dead_letter_records: Some(
            letters
                .iter()
                .map(|d| RecordedDeadLetter {
                    partition: d.partition,
                    offset: d.offset,
                    reason: d.reason.to_string(),
                })
                .collect(),
        ),
        dimension_versions: batch.dimension_versions.clone(),
    }
}

/// Runs a short blocking client call without stalling the async workers.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
