//! The admin HTTP server inside `tributary run`: `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text format) and `/progress`. Every figure comes
//! from the per-batch progress events, so the endpoints and the
//! `--progress-json` file always agree. Labels are pipeline, group, step and
//! partition: never a record's value.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tributary_engine::{BatchProgress, LATENCY_BUCKETS, LatencyProgress};

/// Progress events kept for `/progress`.
const RECENT: usize = 100;
/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// A latency histogram (`tributary_event_to_commit_seconds`,
/// `tributary_republish_event_to_publish_seconds`): cumulative counts per
/// `LATENCY_BUCKETS` bound, as the batches or transactions report them.
#[derive(Default)]
struct EventLatency {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl EventLatency {
    fn add(&mut self, l: &LatencyProgress) {
        for (total, more) in self.buckets.iter_mut().zip(l.buckets) {
            *total += more;
        }
        self.count += l.count;
        self.sum += l.sum_seconds;
    }
}

#[derive(Default)]
struct GroupStats {
    batches: u64,
    rows_in: u64,
    rows_written: u64,
    dead_letters: u64,
    late_rows: u64,
    duplicate_rows: u64,
    /// Event-time watermark of the last batch, seconds since the epoch.
    watermark: Option<f64>,
    input_bytes: u64,
    files: u64,
    commit_conflicts: u64,
    table_version: Option<u64>,
    lag_by_partition: BTreeMap<String, i64>,
    steps: BTreeMap<String, Histogram>,
    /// Records' Kafka timestamp to commit, over every batch.
    event_to_commit: EventLatency,
    last_batch: Option<Instant>,
    last_batch_unix: f64,
    /// The group's batches fail (cleared by the next batch).
    failing: Option<Failing>,
}

/// A group's failing batches.
struct Failing {
    /// What the readiness check says.
    message: String,
    /// Whether readiness should report it yet.
    report: bool,
    /// The group stopped on it: no retry can cure it.
    fatal: bool,
}

/// Failed attempts in a row after which a retried failure makes the
/// instance unready: one or two are routine (a broker restart).
const UNREADY_AFTER_ATTEMPTS: u32 = 3;

/// Totals of a pipeline's compaction passes.
#[derive(Default)]
struct CompactionStats {
    passes: u64,
    failures: u64,
    files_removed: u64,
    files_added: u64,
    bytes_rewritten: u64,
    conflicts: u64,
    files_vacuumed: u64,
    table_files: Option<u64>,
    last_duration_seconds: f64,
}

/// Totals of a pipeline's republish sink.
#[derive(Default)]
struct RepublishStats {
    versions: u64,
    rows: u64,
    last_version: Option<u64>,
    lag_versions: u64,
    failures: u64,
    /// Published rows' time to the commit of their Kafka transaction.
    event_to_publish: EventLatency,
}

/// Results of `run --verify-every`.
#[derive(Default)]
struct VerifyStats {
    runs: u64,
    errors: u64,
    findings: Option<u64>,
    last_unix: f64,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<BatchProgress>,
    /// The pipelines started, and whether each has had a group open.
    pipelines: BTreeMap<String, bool>,
    /// Open groups, and whether each has caught up.
    open_groups: BTreeMap<(String, String), bool>,
    groups: BTreeMap<(String, String), GroupStats>,
    compaction: BTreeMap<String, CompactionStats>,
    republish: BTreeMap<String, RepublishStats>,
    verify: BTreeMap<String, VerifyStats>,
}

pub struct AdminState {
    inner: Mutex<Inner>,
    started: AtomicBool,
    /// A group with unread records and no batch for this long is stuck.
    stuck_after: Duration,
}

impl AdminState {
    pub fn new(stuck_after: Duration) -> AdminState {
        AdminState {
            inner: Mutex::default(),
            started: AtomicBool::new(false),
            stuck_after,
        }
    }

    /// These pipelines have been started.
    pub fn mark_started(&self, pipelines: impl IntoIterator<Item = String>) {
        let mut inner = self.lock();
        for pipeline in pipelines {
            inner.pipelines.entry(pipeline).or_insert(false);
        }
        drop(inner);
        self.started.store(true, Ordering::Relaxed);
    }

    /// Takes in a step of a group's life.
    pub fn record_group(&self, g: &tributary_engine::GroupEvent) {
        use tributary_engine::GroupStep;
        let mut inner = self.lock();
        let key = (g.pipeline.clone(), g.group.clone());
        match g.step {
            GroupStep::Opened => {
                inner.pipelines.insert(g.pipeline.clone(), true);
                inner.open_groups.entry(key).or_insert(false);
            }
            GroupStep::CaughtUp => {
                inner.open_groups.insert(key, true);
            }
            GroupStep::Closed => {
                inner.open_groups.remove(&key);
                // A group closed without a fatal error (its partition
                // revoked, or the pipeline stopping) is no longer this
                // instance's: its retried failure and its last lag would
                // keep readiness failing after it moved elsewhere.
                if let Some(g) = inner.groups.get_mut(&key)
                    && !g.failing.as_ref().is_some_and(|f| f.fatal)
                {
                    g.failing = None;
                    g.lag_by_partition.clear();
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one batch's progress event.
    pub fn record(&self, p: &BatchProgress) {
        let mut inner = self.lock();
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(p.clone());
        let g = inner
            .groups
            .entry((p.name.clone(), p.group.clone()))
            .or_default();
        g.batches += 1;
        g.rows_in += p.num_input_rows;
        g.rows_written += p.num_output_rows;
        g.dead_letters += p.num_dead_letters;
        if let Some(e) = &p.event_time {
            g.late_rows += e.num_late_rows;
            g.duplicate_rows += e.num_duplicate_rows;
            if let Some(w) = e
                .watermark
                .as_deref()
                .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok())
            {
                g.watermark = Some(w.timestamp_millis() as f64 / 1000.0);
            }
        }
        if let Some(l) = &p.event_to_commit {
            g.event_to_commit.add(l);
        }
        g.input_bytes += p.input_bytes;
        g.files += p.sink.num_files as u64;
        g.commit_conflicts += u64::from(p.sink.num_commit_conflicts);
        g.table_version = p.sink.table_version.or(g.table_version);
        for (step, ms) in &p.duration_ms {
            g.steps
                .entry(step.clone())
                .or_default()
                .observe(*ms as f64 / 1000.0);
        }
        if let Some(source) = p.sources.first() {
            for (topic, latest) in &source.latest_offset {
                let ends = source.end_offset.get(topic);
                for (partition, latest) in latest {
                    // Partitions this batch did not read keep their last known lag.
                    if let Some(end) = ends.and_then(|e| e.get(partition)) {
                        g.lag_by_partition
                            .insert(partition.clone(), (latest - end).max(0));
                    }
                }
            }
        }
        g.failing = None;
        g.last_batch = Some(Instant::now());
        g.last_batch_unix = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    }

    /// Takes in one failed attempt of a group.
    pub fn record_failure(&self, f: &tributary_engine::GroupFailure) {
        let mut inner = self.lock();
        let g = inner
            .groups
            .entry((f.pipeline.clone(), f.group.clone()))
            .or_default();
        // An unreadable file is reported at once: it stops the pipeline
        // after a few attempts unless someone repairs it.
        let report = f.fatal
            || f.kind == tributary_core::ErrorKind::Corrupt
            || f.attempt >= UNREADY_AFTER_ATTEMPTS;
        let state = if f.fatal { "stopped" } else { "failing" };
        g.failing = Some(Failing {
            message: format!("{state} after {} attempts: {}", f.attempt, f.error),
            report,
            fatal: f.fatal,
        });
    }

    /// Takes in one compaction pass's report.
    pub fn record_compaction(&self, r: &tributary_compaction::PassReport) {
        let mut inner = self.lock();
        let c = inner.compaction.entry(r.pipeline.clone()).or_default();
        if r.error.is_some() {
            c.failures += 1;
            return;
        }
        c.passes += 1;
        c.files_removed += r.files_removed as u64;
        c.files_added += r.files_added as u64;
        c.bytes_rewritten += r.bytes_rewritten;
        c.conflicts += r.conflicts as u64;
        c.files_vacuumed += r.files_vacuumed.unwrap_or(0) as u64;
        c.table_files = Some(r.files_after as u64);
        c.last_duration_seconds = r.duration_ms as f64 / 1000.0;
    }

    /// Takes in one republish transaction.
    pub fn record_republish(&self, p: &tributary_republish::RepublishProgress) {
        let mut inner = self.lock();
        let r = inner.republish.entry(p.pipeline.clone()).or_default();
        r.versions += 1;
        r.rows += p.rows_published;
        r.last_version = Some(p.version);
        r.lag_versions = p.lag_versions;
        if let Some(l) = &p.event_to_publish {
            r.event_to_publish.add(l);
        }
    }

    /// Counts a republish sink that stopped on an error.
    pub fn record_republish_failure(&self, pipeline: &str) {
        let mut inner = self.lock();
        inner
            .republish
            .entry(pipeline.to_string())
            .or_default()
            .failures += 1;
    }

    /// Takes in one periodic verification: its number of findings, or
    /// `None` when it could not run.
    pub fn record_verify(&self, pipeline: &str, findings: Option<usize>) {
        let mut inner = self.lock();
        let v = inner.verify.entry(pipeline.to_string()).or_default();
        match findings {
            Some(n) => {
                v.runs += 1;
                v.findings = Some(n as u64);
                v.last_unix = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            }
            None => v.errors += 1,
        }
    }

    /// Ready: pipelines started and no group stuck (unread records, no batch
    /// for `stuck_after`).
    fn readiness(&self) -> Result<(), String> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("pipelines not started".into());
        }
        let inner = self.lock();
        // A failure is named first: it is what an operator must act on.
        for ((pipeline, group), g) in &inner.groups {
            if let Some(f) = g.failing.as_ref().filter(|f| f.report) {
                return Err(format!("{pipeline}/{group}: {}", f.message));
            }
            let lagging = g.lag_by_partition.values().any(|l| *l > 0);
            if lagging && g.last_batch.is_some_and(|t| t.elapsed() > self.stuck_after) {
                return Err(format!(
                    "{pipeline}/{group}: records waiting, no batch for {:?}",
                    self.stuck_after
                ));
            }
        }
        if let Some((pipeline, _)) = inner.pipelines.iter().find(|(_, opened)| !**opened) {
            return Err(format!("{pipeline}: no partitions assigned yet"));
        }
        if let Some(((pipeline, group), _)) = inner.open_groups.iter().find(|(_, up)| !**up) {
            return Err(format!(
                "{pipeline}/{group}: catching up (no batch committed, and records to read)"
            ));
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let labels = |(pipeline, group): &(String, String)| {
            format!("pipeline=\"{pipeline}\",group=\"{group}\"")
        };
        let mut family =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&GroupStats) -> Option<f64>| {
                write_family(&mut out, name, kind, help, &inner.groups, labels, value)
            };
        family(
            "tributary_batches_total",
            "counter",
            "Batches committed.",
            &|g| Some(g.batches as f64),
        );
        family(
            "tributary_rows_in_total",
            "counter",
            "Records read from Kafka.",
            &|g| Some(g.rows_in as f64),
        );
        family(
            "tributary_rows_written_total",
            "counter",
            "Rows committed to the Delta table.",
            &|g| Some(g.rows_written as f64),
        );
        family(
            "tributary_dead_letters_total",
            "counter",
            "Records sent to the dead-letter table.",
            &|g| Some(g.dead_letters as f64),
        );
        family(
            "tributary_late_rows_total",
            "counter",
            "Late rows (every window they would update had closed): dropped, or written to the late-rows table.",
            &|g| Some(g.late_rows as f64),
        );
        family(
            "tributary_duplicate_rows_total",
            "counter",
            "Rows dropped by deduplication.",
            &|g| Some(g.duplicate_rows as f64),
        );
        family(
            "tributary_watermark_seconds",
            "gauge",
            "Event-time watermark of the last batch (seconds since the epoch).",
            &|g| g.watermark,
        );
        family(
            "tributary_input_bytes_total",
            "counter",
            "Bytes of record values read.",
            &|g| Some(g.input_bytes as f64),
        );
        family(
            "tributary_files_written_total",
            "counter",
            "Data files committed.",
            &|g| Some(g.files as f64),
        );
        family(
            "tributary_commit_conflicts_total",
            "counter",
            "Commit attempts redone because another writer took the table version first.",
            &|g| Some(g.commit_conflicts as f64),
        );
        family(
            "tributary_table_version",
            "gauge",
            "Delta table version of the last commit.",
            &|g| g.table_version.map(|v| v as f64),
        );
        family(
            "tributary_consumer_lag",
            "gauge",
            "Offsets not yet read, all partitions of the group.",
            &|g| {
                (!g.lag_by_partition.is_empty())
                    .then(|| g.lag_by_partition.values().sum::<i64>() as f64)
            },
        );
        family(
            "tributary_last_batch_timestamp_seconds",
            "gauge",
            "When the last batch committed (Unix time).",
            &|g| Some(g.last_batch_unix),
        );
        header(
            &mut out,
            "tributary_partition_lag",
            "gauge",
            "Offsets not yet read, per partition.",
        );
        for (key, g) in &inner.groups {
            for (partition, lag) in &g.lag_by_partition {
                let _ = writeln!(
                    out,
                    "tributary_partition_lag{{{},partition=\"{partition}\"}} {lag}",
                    labels(key)
                );
            }
        }
        header(
            &mut out,
            "tributary_batch_step_seconds",
            "histogram",
            "Time per batch step.",
        );
        for (key, g) in &inner.groups {
            for (step, h) in &g.steps {
                let l = format!("{},step=\"{step}\"", labels(key));
                write_histogram(
                    &mut out,
                    "tributary_batch_step_seconds",
                    &l,
                    &BUCKETS,
                    &h.counts,
                    h.sum,
                    h.count,
                );
            }
        }
        header(
            &mut out,
            "tributary_event_to_commit_seconds",
            "histogram",
            "Time from each record's Kafka timestamp to the commit of its batch.",
        );
        for (key, g) in &inner.groups {
            let h = &g.event_to_commit;
            write_histogram(
                &mut out,
                "tributary_event_to_commit_seconds",
                &labels(key),
                &LATENCY_BUCKETS,
                &h.buckets,
                h.sum,
                h.count,
            );
        }
        let pipeline = |p: &String| format!("pipeline=\"{p}\"");
        let mut compaction =
            |name: &str,
             kind: &str,
             help: &str,
             value: &dyn Fn(&CompactionStats) -> Option<f64>| {
                write_family(
                    &mut out,
                    name,
                    kind,
                    help,
                    &inner.compaction,
                    pipeline,
                    value,
                )
            };
        compaction(
            "tributary_compaction_passes_total",
            "counter",
            "Compaction passes completed.",
            &|c| Some(c.passes as f64),
        );
        compaction(
            "tributary_compaction_failures_total",
            "counter",
            "Compaction passes that failed (retried at the next interval).",
            &|c| Some(c.failures as f64),
        );
        compaction(
            "tributary_compaction_files_removed_total",
            "counter",
            "Small files replaced by compaction.",
            &|c| Some(c.files_removed as f64),
        );
        compaction(
            "tributary_compaction_files_added_total",
            "counter",
            "Files written by compaction.",
            &|c| Some(c.files_added as f64),
        );
        compaction(
            "tributary_compaction_bytes_rewritten_total",
            "counter",
            "Bytes of the files compaction replaced.",
            &|c| Some(c.bytes_rewritten as f64),
        );
        compaction(
            "tributary_compaction_conflicts_total",
            "counter",
            "Rewrites dropped because a concurrent commit removed their files.",
            &|c| Some(c.conflicts as f64),
        );
        compaction(
            "tributary_vacuum_files_deleted_total",
            "counter",
            "Unreferenced data files deleted by vacuum.",
            &|c| Some(c.files_vacuumed as f64),
        );
        compaction(
            "tributary_table_files",
            "gauge",
            "Live data files in the table after the last compaction pass.",
            &|c| c.table_files.map(|f| f as f64),
        );
        compaction(
            "tributary_compaction_last_duration_seconds",
            "gauge",
            "Duration of the last compaction pass.",
            &|c| (c.passes > 0).then_some(c.last_duration_seconds),
        );
        let mut republish =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&RepublishStats) -> Option<f64>| {
                write_family(
                    &mut out,
                    name,
                    kind,
                    help,
                    &inner.republish,
                    pipeline,
                    value,
                )
            };
        republish(
            "tributary_republish_versions_total",
            "counter",
            "Table versions republished (one Kafka transaction each).",
            &|r| Some(r.versions as f64),
        );
        republish(
            "tributary_republish_rows_total",
            "counter",
            "Rows produced by the republish sink (after its filter).",
            &|r| Some(r.rows as f64),
        );
        republish(
            "tributary_republish_last_version",
            "gauge",
            "The last table version republished.",
            &|r| r.last_version.map(|v| v as f64),
        );
        republish(
            "tributary_republish_lag_versions",
            "gauge",
            "Committed table versions not yet republished.",
            &|r| r.last_version.map(|_| r.lag_versions as f64),
        );
        republish(
            "tributary_republish_failures_total",
            "counter",
            "Republish sinks that stopped on an error (fenced, or a version lost to log retention).",
            &|r| Some(r.failures as f64),
        );
        header(
            &mut out,
            "tributary_republish_event_to_publish_seconds",
            "histogram",
            "Time from each republished row's Kafka timestamp (or event time) to the commit of the Kafka transaction that published it.",
        );
        for (name, r) in &inner.republish {
            let h = &r.event_to_publish;
            write_histogram(
                &mut out,
                "tributary_republish_event_to_publish_seconds",
                &pipeline(name),
                &LATENCY_BUCKETS,
                &h.buckets,
                h.sum,
                h.count,
            );
        }
        let mut verify =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&VerifyStats) -> Option<f64>| {
                write_family(&mut out, name, kind, help, &inner.verify, pipeline, value)
            };
        verify(
            "tributary_verify_runs_total",
            "counter",
            "Verifications of the table against its logs (run --verify-every).",
            &|v| Some(v.runs as f64),
        );
        verify(
            "tributary_verify_errors_total",
            "counter",
            "Verifications that could not run (storage or broker unreachable).",
            &|v| Some(v.errors as f64),
        );
        verify(
            "tributary_verify_findings",
            "gauge",
            "Findings of the last verification: gaps, overlaps, batches committed twice, missing files. Alert on > 0.",
            &|v| v.findings.map(|f| f as f64),
        );
        verify(
            "tributary_verify_last_timestamp_seconds",
            "gauge",
            "When the last verification finished (Unix time).",
            &|v| v.findings.map(|_| v.last_unix),
        );
        out
    }
}

/// Writes a metric family: its header, then one sample per entry that has a value.
fn write_family<K, S>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    entries: &BTreeMap<K, S>,
    labels: impl Fn(&K) -> String,
    value: &dyn Fn(&S) -> Option<f64>,
) {
    header(out, name, kind, help);
    for (key, stats) in entries {
        if let Some(v) = value(stats) {
            let _ = writeln!(out, "{name}{{{}}} {v}", labels(key));
        }
    }
}

/// One labelled series of a histogram family: its cumulative bucket
/// counts (one per bound), `+Inf`, sum and count.
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
    count: u64,
) {
    for (bound, n) in bounds.iter().zip(counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics(),
    )
        .into_response()
}

async fn progress(State(state): State<Arc<AdminState>>) -> Response {
    let recent: Vec<BatchProgress> = state.lock().recent.iter().cloned().collect();
    axum::Json(recent).into_response()
}

/// Binds the admin server. Only loopback addresses unless `allow_remote`:
/// the endpoints carry no authentication.
pub async fn serve(
    addr: SocketAddr,
    allow_remote: bool,
    state: Arc<AdminState>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "refusing to serve the admin endpoints on {addr}: they have no authentication; \
             bind a loopback address, or pass --admin-allow-remote behind a network policy"
        );
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/progress", get(progress))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the admin server to {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_engine::{GroupEvent, GroupStep};

    fn step(state: &AdminState, group: &str, step: GroupStep) {
        state.record_group(&GroupEvent {
            pipeline: "p".into(),
            group: group.into(),
            step,
        });
    }

    #[test]
    fn ready_once_every_pipeline_has_groups_and_each_caught_up() {
        let state = AdminState::new(Duration::from_secs(60));
        assert_eq!(state.readiness(), Err("pipelines not started".into()));
        state.mark_started(["p".to_string()]);
        assert_eq!(
            state.readiness(),
            Err("p: no partitions assigned yet".into())
        );
        step(&state, "partition-0", GroupStep::Opened);
        step(&state, "partition-1", GroupStep::Opened);
        step(&state, "partition-0", GroupStep::CaughtUp);
        assert!(
            state
                .readiness()
                .unwrap_err()
                .starts_with("p/partition-1: catching up")
        );
        // A group revoked before it caught up no longer counts.
        step(&state, "partition-1", GroupStep::Closed);
        assert_eq!(state.readiness(), Ok(()));
        // Opened again after a failure, it stays caught up.
        step(&state, "partition-0", GroupStep::Opened);
        assert_eq!(state.readiness(), Ok(()));
    }

    fn failure(state: &AdminState, group: &str, attempt: u32, fatal: bool) {
        state.record_failure(&tributary_engine::GroupFailure {
            pipeline: "p".into(),
            group: group.into(),
            error: "storage unavailable".into(),
            kind: tributary_core::ErrorKind::External,
            attempt,
            fatal,
        });
    }

    #[test]
    fn a_group_closed_while_failing_no_longer_counts_unless_it_stopped_on_the_error() {
        let state = AdminState::new(Duration::from_secs(60));
        state.mark_started(["p".to_string()]);
        step(&state, "partition-0", GroupStep::Opened);
        step(&state, "partition-0", GroupStep::CaughtUp);
        failure(&state, "partition-0", UNREADY_AFTER_ATTEMPTS, false);
        assert_eq!(
            state.readiness(),
            Err("p/partition-0: failing after 3 attempts: storage unavailable".into())
        );
        // Revoked while it retried: its new owner retries.
        step(&state, "partition-0", GroupStep::Closed);
        assert_eq!(state.readiness(), Ok(()));

        step(&state, "partition-1", GroupStep::Opened);
        failure(&state, "partition-1", 1, true);
        step(&state, "partition-1", GroupStep::Closed);
        assert_eq!(
            state.readiness(),
            Err("p/partition-1: stopped after 1 attempts: storage unavailable".into())
        );
    }

    #[test]
    fn a_closed_group_lagging_at_its_last_batch_is_not_stuck() {
        let state = AdminState::new(Duration::ZERO);
        state.mark_started(["p".to_string()]);
        step(&state, "partition-2", GroupStep::Opened);
        step(&state, "partition-2", GroupStep::CaughtUp);
        {
            let mut inner = state.lock();
            let g = inner
                .groups
                .entry(("p".into(), "partition-2".into()))
                .or_default();
            g.lag_by_partition.insert("2".into(), 40);
            g.last_batch = Some(Instant::now());
        }
        assert!(
            state
                .readiness()
                .unwrap_err()
                .starts_with("p/partition-2: records waiting")
        );
        // Revoked: the lag is its new owner's to report.
        step(&state, "partition-2", GroupStep::Closed);
        assert_eq!(state.readiness(), Ok(()));
    }
}
