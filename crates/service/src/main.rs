//! `tributary`: Kafka (Confluent Avro) to Delta Lake ingestion.

mod admin;
mod bench;
mod components;
mod demo;
mod fraud_demo;
mod readback;
mod status;
mod validate;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tributary_devstack as dev;
use tributary_engine::{PipelineOptions, run_pipeline};
use tributary_spec::{ByteSize, TableSpec, parse_spec_file};

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Ingest Kafka topics of Confluent-framed Avro into Delta Lake tables, exactly once."
)]
struct Cli {
    /// Log format on stderr. Levels come from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What `tributary demo` runs.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// A click stream into a date-partitioned table.
    Clicks,
    /// The fraud-scoring example: enrichment, rolling features, scores and
    /// alerts republished to Kafka, with planted fraud to catch.
    Fraud,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines until stopped (SIGINT / SIGTERM: the batch in flight
    /// commits, then the process exits 0), or until drained with
    /// `trigger.available_now: true`.
    Run {
        /// Table spec files (YAML), or directories whose `*.yaml` / `*.yml`
        /// files are all specs; each spec runs as its own pipeline.
        #[arg(long = "spec", required = true, num_args = 1..)]
        specs: Vec<PathBuf>,
        /// Append one JSON line per committed batch to this file.
        #[arg(long)]
        progress_json: Option<PathBuf>,
        /// Move --progress-json aside to `<file>.1` (replacing the older
        /// one) once it holds this much.
        #[arg(long, default_value = "64MiB")]
        progress_json_max_size: ByteSize,
        /// Memory the state (RocksDB) of every stateful pipeline of this
        /// process shares: block cache and memtables (docs/deployment.md).
        #[arg(long, default_value = "512MiB")]
        state_memory: ByteSize,
        /// Address of the admin HTTP server (/healthz, /readyz, /metrics,
        /// /progress). Port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin_addr: std::net::SocketAddr,
        /// Allow a non-loopback admin address (the endpoints have no authentication).
        #[arg(long)]
        admin_allow_remote: bool,
        /// After every N batches of a pipeline, verify its table as
        /// `tributary verify` does, in the background; the result is the
        /// `tributary_verify_findings` metric (and an error in the log).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        verify_every: Option<u64>,
    },
    /// One compaction pass over each spec's table: bin-pack small files
    /// (`dataChange=false`), write a log checkpoint if due, delete expired
    /// log files and vacuum. Safe while `tributary run` ingests. Prints one
    /// JSON report per table.
    Compact {
        /// Table spec files, or directories of them (as for `run`).
        #[arg(long = "spec", required = true, num_args = 1..)]
        specs: Vec<PathBuf>,
        /// Skip vacuum.
        #[arg(long)]
        no_vacuum: bool,
    },
    /// Run the republish sink of each spec (its `republish` section) alone,
    /// until SIGINT / SIGTERM: committed table versions are produced to the
    /// target topic in Kafka transactions, exactly once. Exits 1 when a sink
    /// is fenced by another with the same transactional id.
    Republish {
        /// Table spec files, or directories of them (as for `run`).
        #[arg(long = "spec", required = true, num_args = 1..)]
        specs: Vec<PathBuf>,
        /// Append one JSON line per published table version to this file.
        #[arg(long)]
        progress_json: Option<PathBuf>,
        /// Move --progress-json aside to `<file>.1` once it holds this much.
        #[arg(long, default_value = "64MiB")]
        progress_json_max_size: ByteSize,
    },
    /// Where a pipeline stands: the last committed batch of each group, its
    /// offsets, the lag to the broker's high watermarks, dead letters.
    Status {
        #[arg(long)]
        spec: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prove the table against the Delta log, the offsets log and the
    /// broker: per group the offset ranges the table holds, and every gap,
    /// overlap, batch committed twice, batch that differs from its plan and
    /// live file missing from storage. Exits 1 on any finding.
    Verify {
        #[arg(long)]
        spec: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Do not ask the broker whether offsets no batch read hold records:
        /// every such hole is then a finding.
        #[arg(long)]
        offline: bool,
    },
    /// Check table specs; print every problem as `file:line: field.path: message`
    /// and exit 1 if there is any. Column references are checked against the
    /// latest schema of the value subject (`<topic>-value` by default) when
    /// the registry answers.
    Validate {
        /// Table spec files, or directories of them (as for `run`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Do not contact the schema registry.
        #[arg(long)]
        offline: bool,
    },
    /// Try Tributary with nothing installed: an in-process Kafka and schema
    /// registry, a generated click stream, a Delta table under --dir.
    /// With --produce-only: only the click stream, sent to an existing Kafka
    /// cluster and schema registry (the data generator of a local stack).
    Demo {
        /// Where the demo's tables, checkpoints and spec go (recreated).
        #[arg(long, default_value = "./tributary-demo")]
        dir: PathBuf,
        /// How long the generator produces.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        duration: Duration,
        /// Events per second.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// What to run: `clicks` (ingest), or `fraud` (the fraud-scoring
        /// example: enrich, rolling features, scores, alerts).
        #[arg(
            long,
            value_enum,
            default_value = "clicks",
            conflicts_with = "produce_only"
        )]
        scenario: Scenario,
        /// Only produce: register the click schema as `<topic>-value`, create
        /// the topic if missing, produce until --duration ends or SIGINT /
        /// SIGTERM, and print one JSON line of what was produced.
        #[arg(long, requires_all = ["bootstrap_servers", "schema_registry_url"])]
        produce_only: bool,
        /// Kafka brokers (`host:port,...`) for --produce-only.
        #[arg(long, requires = "produce_only")]
        bootstrap_servers: Option<String>,
        /// Schema registry URL for --produce-only.
        #[arg(long, requires = "produce_only")]
        schema_registry_url: Option<String>,
        /// Topic for --produce-only.
        #[arg(long, default_value = "clicks")]
        topic: String,
        /// Partitions of the topic when --produce-only creates it.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Start the development stack (mock Kafka cluster and schema registry) and
    /// keep it up until interrupted; prints its addresses as one JSON line.
    DevStack {
        /// Topics to create, as NAME:PARTITIONS.
        #[arg(long = "topic", conflicts_with = "without_kafka")]
        topics: Vec<String>,
        /// Start only the schema registry, for use beside a real Kafka
        /// cluster (`bootstrap_servers` is printed as null).
        #[arg(long)]
        without_kafka: bool,
        /// Port of the schema registry (0: any free port).
        #[arg(long, default_value_t = 0)]
        registry_port: u16,
        /// Number of mock brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Require HTTP basic auth (`user:password`) on the registry's API,
        /// as a secured registry does.
        #[arg(long)]
        registry_basic_auth: Option<String>,
    },
    /// Measure throughput (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Exit 0 when the admin server of a running `tributary run` answers
    /// `/healthz` with 200 (a container's health check; no curl needed).
    Healthcheck {
        /// Address of the admin server.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin_addr: std::net::SocketAddr,
    },
    /// Print the spec reference (Markdown) generated from the spec structs.
    SpecReference,
    /// Print the JSON Schema of a table spec.
    SpecSchema,
    /// Print the JSON Schema of a progress event (`/progress`, `--progress-json`).
    ProgressSchema,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    s.parse::<tributary_spec::HumanDuration>().map(|d| d.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    // Blocking work left behind (a reader thread waiting on the broker) must
    // not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tributary's own events at info; the libraries' (deltalake logs every
/// snapshot at info) only from warn.
const DEFAULT_LOG_FILTER: &str = "warn,buoyant_kernel=off,tributary=info,tributary_engine=info,tributary_delta=info,tributary_kafka=info,tributary_avro=info";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            specs,
            progress_json,
            progress_json_max_size,
            state_memory,
            admin_addr,
            admin_allow_remote,
            verify_every,
        } => {
            run(
                specs,
                progress_json.map(|path| (path, progress_json_max_size.0)),
                state_memory.0,
                admin_addr,
                admin_allow_remote,
                verify_every,
            )
            .await
        }
        Command::Status { spec, json } => status::run(&spec, json).await,
        Command::Verify {
            spec,
            json,
            offline,
        } => verify::run(&spec, json, offline).await,
        Command::Compact { specs, no_vacuum } => compact(specs, !no_vacuum).await,
        Command::Republish {
            specs,
            progress_json,
            progress_json_max_size,
        } => {
            republish(
                specs,
                progress_json.map(|path| (path, progress_json_max_size.0)),
            )
            .await
        }
        Command::ProgressSchema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&tributary_engine::progress_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files, offline } => validate::validate(files, offline).await,
        Command::Demo {
            produce_only: true,
            bootstrap_servers: Some(bootstrap_servers),
            schema_registry_url: Some(schema_registry_url),
            topic,
            partitions,
            duration,
            rate,
            ..
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(stop.clone());
            let target = demo::ProduceTarget {
                bootstrap_servers,
                schema_registry_url,
                topic,
                partitions,
            };
            demo::produce_only(target, duration, rate, stop)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            duration,
            rate,
            scenario,
            ..
        } => demo::run(dir, duration, rate, scenario)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::DevStack {
            topics,
            without_kafka,
            registry_port,
            brokers,
            registry_basic_auth,
        } => dev_stack(
            (!without_kafka).then_some((topics, brokers)),
            registry_port,
            registry_basic_auth,
        )
        .await
        .map(|()| ExitCode::SUCCESS),
        Command::Bench { which } => bench::run(which).await.map(|()| ExitCode::SUCCESS),
        Command::Healthcheck { admin_addr } => healthcheck(admin_addr).await,
        Command::SpecReference => {
            print!("{}", tributary_spec::reference_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::SpecSchema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&tributary_spec::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The spec files named on the command line: files as given, directories
/// expanded to their `*.yaml` / `*.yml` files in name order.
fn spec_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        if found.is_empty() {
            anyhow::bail!("{} holds no *.yaml or *.yml spec", path.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Parses every spec, printing all problems of all files.
fn load_specs(paths: &[PathBuf]) -> anyhow::Result<Option<Vec<TableSpec>>> {
    let files = spec_files(paths)?;
    let mut specs = Vec::new();
    let mut ok = true;
    for f in &files {
        match load_spec(f) {
            Some(s) => specs.push(s),
            None => ok = false,
        }
    }
    Ok(ok.then_some(specs))
}

/// Parses one spec, printing its problems; `None` when it has any.
pub(crate) fn load_spec(path: &std::path::Path) -> Option<TableSpec> {
    match parse_spec_file(path) {
        Ok(s) => Some(s),
        Err(e) => {
            for line in e.report() {
                eprintln!("{line}");
            }
            None
        }
    }
}

/// A progress file and the size at which it rotates.
type ProgressFile = Option<(PathBuf, u64)>;

async fn run(
    files: Vec<PathBuf>,
    progress_json: ProgressFile,
    state_memory: u64,
    admin_addr: std::net::SocketAddr,
    admin_allow_remote: bool,
    verify_every: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let Some(specs) = load_specs(&files)? else {
        return Ok(ExitCode::FAILURE);
    };
    // A group with records waiting and no batch for ten trigger intervals (at
    // least a minute) makes the instance unready.
    let stuck_after = specs
        .iter()
        .map(|s| s.trigger.interval.0 * 10)
        .max()
        .unwrap_or_default()
        .max(Duration::from_secs(60));
    let admin = Arc::new(admin::AdminState::new(stuck_after));
    let (bound, _server) = admin::serve(admin_addr, admin_allow_remote, admin.clone()).await?;
    tracing::info!(addr = %bound, "admin server listening on http://{bound}");
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_handler(stop.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let pipelines: Vec<String> = specs.iter().map(|s| s.pipeline.clone()).collect();
    let state_memory = tributary_state::RocksOptions::with_memory(
        usize::try_from(state_memory).unwrap_or(usize::MAX),
    );
    for spec in specs {
        // A backfill on a terminal shows how far it has come.
        let bar = (spec.trigger.available_now && std::io::stderr().is_terminal())
            .then(|| progress_bar(spec.pipeline.clone()));
        let components = components::components(&spec, &state_memory)?;
        let to_admin = admin.clone();
        let verify_due = verify_every.map(|every| {
            let checkpoint = components.checkpoint.clone();
            verify::spawn_periodic(spec.clone(), checkpoint, every, admin.clone(), stop.clone())
        });
        // The republish sink beside the pipeline looks for a new version as
        // soon as a batch commits, not only at its interval.
        let committed = Arc::new(tokio::sync::Notify::new());
        let wake_sink = committed.clone();
        let on_progress: Option<tributary_engine::ProgressCallback> =
            Some(Arc::new(move |p: &tributary_engine::BatchProgress| {
                wake_sink.notify_one();
                to_admin.record(p);
                if let Some(bar) = &bar {
                    bar(p);
                }
                if let Some(due) = &verify_due {
                    due();
                }
            }));
        let to_admin = admin.clone();
        let options = PipelineOptions {
            stop: stop.clone(),
            progress_json: progress_json.as_ref().map(|(path, _)| path.clone()),
            progress_json_max_bytes: progress_json.as_ref().map_or(
                tributary_engine::DEFAULT_PROGRESS_JSON_MAX_BYTES,
                |(_, max)| *max,
            ),
            on_progress,
            on_failure: Some(Arc::new(move |f: &tributary_engine::GroupFailure| {
                to_admin.record_failure(f)
            })),
            on_group: Some({
                let to_admin = admin.clone();
                Arc::new(move |g: &tributary_engine::GroupEvent| to_admin.record_group(g))
            }),
        };
        let name = spec.pipeline.clone();
        if spec.compaction.enabled && !spec.trigger.available_now {
            let to_admin = admin.clone();
            tokio::spawn(tributary_compaction::run_worker(
                spec.clone(),
                stop.clone(),
                Arc::new(move |r: &tributary_compaction::PassReport| to_admin.record_compaction(r)),
            ));
        }
        if spec.republish.as_ref().is_some_and(|r| r.enabled) && !spec.trigger.available_now {
            let registry = components.registry.clone();
            spawn_republisher(
                spec.clone(),
                stop.clone(),
                admin.clone(),
                registry,
                committed,
            );
        }
        tasks.spawn(async move { (name, run_pipeline(spec, options, components).await) });
    }
    admin.mark_started(pipelines);
    let mut failed = false;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.context("pipeline task panicked")?;
        match result {
            Ok(summary) => tracing::info!(
                pipeline = %name, batches = summary.batches, rows = summary.rows,
                dead_letters = summary.dead_letters, version = ?summary.table_version, "pipeline finished"
            ),
            Err(e) => {
                eprintln!("error: pipeline {name}: {e}");
                failed = true;
                // One failed pipeline stops the others cleanly.
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    Ok(exit_code(failed))
}

fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The republish sink beside ingest. Its failure (a fenced sink, a version
/// lost to log retention) is logged and counted; ingest goes on.
fn spawn_republisher(
    spec: TableSpec,
    stop: Arc<AtomicBool>,
    admin: Arc<admin::AdminState>,
    registry: Arc<tributary_avro::RegistryClient>,
    committed: Arc<tokio::sync::Notify>,
) {
    tokio::spawn(async move {
        let to_admin = admin.clone();
        let on_progress: tributary_republish::RepublishCallback =
            Arc::new(move |p: &tributary_republish::RepublishProgress| {
                to_admin.record_republish(p)
            });
        if let Err(e) = tributary_republish::run_republisher(
            spec.clone(),
            stop,
            Some(on_progress),
            registry,
            Some(committed),
        )
        .await
        {
            tracing::error!(pipeline = %spec.pipeline, error = %e, "the republish sink stopped");
            admin.record_republish_failure(&spec.pipeline);
        }
    });
}

async fn republish(files: Vec<PathBuf>, progress_json: ProgressFile) -> anyhow::Result<ExitCode> {
    let Some(specs) = load_specs(&files)? else {
        return Ok(ExitCode::FAILURE);
    };
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_handler(stop.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        if spec.republish.is_none() {
            anyhow::bail!("pipeline {} has no republish section", spec.pipeline);
        }
        let on_progress: Option<tributary_republish::RepublishCallback> =
            progress_json.clone().map(|(path, max_bytes)| {
                Arc::new(move |p: &tributary_republish::RepublishProgress| {
                    let Ok(mut line) = serde_json::to_string(p) else {
                        return;
                    };
                    line.push('\n');
                    if let Err(e) = tributary_engine::append_rotating(&path, &line, max_bytes) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot append the progress event");
                    }
                }) as tributary_republish::RepublishCallback
            });
        let name = spec.pipeline.clone();
        let stop = stop.clone();
        let registry = components::registry_client(&spec.source.schema_registry)?;
        tasks.spawn(async move {
            let republished =
                tributary_republish::run_republisher(spec, stop, on_progress, registry, None).await;
            (name, republished)
        });
    }
    let mut failed = false;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.context("republish task panicked")?;
        if let Err(e) = result {
            eprintln!("error: republishing pipeline {name}: {e}");
            failed = true;
            stop.store(true, Ordering::Relaxed);
        }
    }
    Ok(exit_code(failed))
}

async fn compact(files: Vec<PathBuf>, vacuum: bool) -> anyhow::Result<ExitCode> {
    let Some(specs) = load_specs(&files)? else {
        return Ok(ExitCode::FAILURE);
    };
    for spec in specs {
        let report =
            tributary_compaction::compact_once(&spec, tributary_compaction::PassOptions { vacuum })
                .await
                .with_context(|| format!("compacting {}", spec.table.uri))?;
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per pipeline, redrawn after each batch: rows read and how many
/// offsets remain (from the lag in the progress event).
fn progress_bar(name: String) -> tributary_engine::ProgressCallback {
    let done = std::sync::atomic::AtomicU64::new(0);
    Arc::new(move |p: &tributary_engine::BatchProgress| {
        let total_done = done.fetch_add(p.num_input_rows, Ordering::Relaxed) + p.num_input_rows;
        let line = match p.lag {
            Some(lag) => {
                let fraction = total_done as f64 / (total_done + lag.max(0) as u64).max(1) as f64;
                let filled = (fraction * 30.0).round() as usize;
                format!(
                    "{name} [{}{}] {:>3.0}%  {total_done} records read, about {lag} to go",
                    "#".repeat(filled),
                    "-".repeat(30 - filled.min(30)),
                    fraction * 100.0
                )
            }
            None => format!("{name}  {total_done} records read"),
        };
        eprintln!("{line}");
    })
}

fn spawn_signal_handler(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested: finishing the batch in flight");
        stop.store(true, Ordering::Relaxed);
    });
}

async fn healthcheck(admin_addr: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let url = format!("http://{admin_addr}/healthz");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(response) => {
            eprintln!("unhealthy: {url} answered {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `kafka`: the mock cluster's topics and broker count, or `None` for the
/// registry alone.
async fn dev_stack(
    kafka: Option<(Vec<String>, i32)>,
    registry_port: u16,
    registry_basic_auth: Option<String>,
) -> anyhow::Result<()> {
    let kafka = match kafka {
        Some((topics, brokers)) => {
            let mut parsed = Vec::new();
            for t in &topics {
                let (name, parts) = t.split_once(':').unwrap_or((t, "4"));
                parsed.push((
                    name,
                    parts
                        .parse::<i32>()
                        .with_context(|| format!("bad partition count in {t:?}"))?,
                ));
            }
            Some((dev::kafka::start(brokers, &parsed)?, brokers))
        }
        None => None,
    };
    let (control, mut outages) = tokio::sync::mpsc::unbounded_channel();
    let registry = dev::registry::start(
        ([127, 0, 0, 1], registry_port).into(),
        kafka.is_some().then_some(control),
        registry_basic_auth,
    )
    .await?;
    let bootstrap_servers = kafka.as_ref().map(|(k, _)| k.bootstrap_servers());
    println!(
        "{}",
        serde_json::json!({"bootstrap_servers": bootstrap_servers, "schema_registry": registry.url})
    );
    tracing::info!(bootstrap_servers = ?bootstrap_servers, schema_registry = %registry.url, "development stack up; Ctrl-C stops it");
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_handler(stop.clone());
    // The mock cluster is not Send: outages requested over HTTP are carried out here.
    let mut brokers_back: Option<tokio::time::Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            Some(outage) = outages.recv() => {
                if let Some((kafka, brokers)) = &kafka {
                    for b in 1..=*brokers {
                        kafka.broker_down(b)?;
                    }
                    tracing::warn!("Kafka brokers down for {outage:?}");
                    brokers_back = Some(tokio::time::Instant::now() + outage);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if let Some((kafka, brokers)) = &kafka
            && brokers_back.is_some_and(|t| tokio::time::Instant::now() >= t)
        {
            for b in 1..=*brokers {
                kafka.broker_up(b)?;
            }
            tracing::warn!("Kafka brokers up again");
            brokers_back = None;
        }
    }
    drop(registry);
    drop(kafka);
    Ok(())
}
