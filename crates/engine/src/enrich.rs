//! Stream-static joins (`enrich`): each dimension table is held in memory as
//! Arrow with a hash index on its key, and each record looks its key up.
//!
//! Invariants: a batch joins one version of each dimension, pinned when its
//! first rows are converted and recorded in its plan and commit; a re-run
//! batch joins the versions its plan recorded. New versions are read in the
//! background and never block a batch; a version that cannot be read or is
//! larger than `max_size` leaves the batches on the version before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use deltalake::arrow::compute::{cast, concat_batches};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio::time::Instant;
use tributary_delta::{DeltaTableSink, TableOptions};
use tributary_spec::{EnrichSpec, TableSpec};

use crate::error::{EngineError, Result};

mod join;

use join::{Dimension, index, join_one};

/// Loaded dimensions by (entry, table, version), shared by the groups of a
/// process while any holds them.
type Cache = Mutex<HashMap<(usize, String, u64), Weak<Dimension>>>;
static LOADED: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Default::default);

/// The spec's dimensions at their newest readable versions, kept current
/// by a background task while this lives.
pub(crate) struct Dimensions {
    spec: Arc<TableSpec>,
    current: Arc<Mutex<Vec<Arc<Dimension>>>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Dimensions {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Dimensions {
    /// Loads every dimension (the pipeline does not start without them);
    /// `None` for a spec without `enrich`.
    pub(crate) async fn open(spec: &TableSpec) -> Result<Option<Dimensions>> {
        if spec.enrich.is_empty() {
            return Ok(None);
        }
        let spec = Arc::new(spec.clone());
        let current = Arc::new(Mutex::new(load_all(&spec, None).await?));
        let refresher = tokio::spawn(refresh(spec.clone(), Arc::downgrade(&current)));
        Ok(Some(Dimensions {
            spec,
            current,
            refresher,
        }))
    }

    /// The versions a new batch joins.
    pub(crate) fn pin(&self) -> Pinned {
        Pinned {
            spec: self.spec.clone(),
            dimensions: self.current.lock().expect("dimensions lock").clone(),
        }
    }

    /// The versions a re-run batch recorded (the newest for a plan that
    /// recorded none).
    pub(crate) async fn pin_recorded(&self, versions: Option<&[u64]>) -> Result<Pinned> {
        match versions {
            None => Ok(self.pin()),
            Some(v) => Ok(Pinned {
                spec: self.spec.clone(),
                dimensions: load_all(&self.spec, Some(v)).await?,
            }),
        }
    }
}

/// The spec's dimensions loading on the runtime, so that the first batch
/// is read and decoded meanwhile.
pub(crate) struct Loading {
    task: tokio::task::JoinHandle<Result<Option<Arc<Dimensions>>>>,
}

impl Loading {
    pub(crate) fn start(spec: &TableSpec) -> Loading {
        let spec = spec.clone();
        Loading {
            task: tokio::spawn(async move { Ok(Dimensions::open(&spec).await?.map(Arc::new)) }),
        }
    }

    /// The dimensions once loaded, or the load's error.
    pub(crate) async fn wait(self) -> Result<Option<Arc<Dimensions>>> {
        self.task.await.map_err(|source| EngineError::Task {
            task: "loading the dimension tables",
            source,
        })?
    }
}

/// The dimensions one batch joins.
#[derive(Clone)]
pub(crate) struct Pinned {
    spec: Arc<TableSpec>,
    dimensions: Vec<Arc<Dimension>>,
}

impl Pinned {
    pub(crate) fn versions(&self) -> Vec<u64> {
        self.dimensions.iter().map(|d| d.version).collect()
    }

    /// The rows with every dimension's columns added, and how many rows an
    /// inner join dropped.
    pub(crate) fn join(&self, rows: &RecordBatch) -> Result<(RecordBatch, usize)> {
        let mut out = rows.clone();
        let mut dropped = 0;
        for (i, (entry, dimension)) in self.spec.enrich.iter().zip(&self.dimensions).enumerate() {
            let (joined, lost) = join_one(entry, dimension, &out)
                .map_err(|m| EngineError::Spec(format!("enrich[{i}] ({}): {m}", entry.table)))?;
            out = joined;
            dropped += lost;
        }
        Ok((out, dropped))
    }
}

async fn load_all(spec: &TableSpec, versions: Option<&[u64]>) -> Result<Vec<Arc<Dimension>>> {
    let mut out = Vec::with_capacity(spec.enrich.len());
    for i in 0..spec.enrich.len() {
        let version = versions.and_then(|v| v.get(i).copied());
        out.push(load(spec, i, version).await?);
    }
    Ok(out)
}

/// Opens the dimension table of an `enrich` entry for reading (at its
/// newest version); a missing table is no table.
pub async fn open_dimension(
    spec: &TableSpec,
    entry: &EnrichSpec,
) -> tributary_delta::Result<DeltaTableSink> {
    DeltaTableSink::open_existing(TableOptions {
        uri: entry.table.clone(),
        storage_options: entry
            .storage_options
            .clone()
            .unwrap_or_else(|| spec.table.storage_options.clone()),
        partition_columns: Vec::new(),
        target_file_size: 1 << 20,
    })
    .await
}

/// Entry `i` of the spec's `enrich` at `version` (the newest when `None`),
/// from the cache when another group holds it.
async fn load(spec: &TableSpec, i: usize, version: Option<u64>) -> Result<Arc<Dimension>> {
    let entry = &spec.enrich[i];
    let fail = |m: String| EngineError::Spec(format!("enrich[{i}] ({}): {m}", entry.table));
    let mut table = open_dimension(spec, entry).await?;
    if let Some(v) = version {
        table.load_version(v).await?;
    }
    let Some(at) = table.version() else {
        return Err(fail("there is no Delta table there".into()));
    };
    let cache_key = (i, entry.table.clone(), at);
    if let Some(held) = LOADED
        .lock()
        .expect("cache lock")
        .get(&cache_key)
        .and_then(Weak::upgrade)
    {
        return Ok(held);
    }
    let dimension = Arc::new(read_dimension(entry, &table, at).await.map_err(fail)?);
    let mut cache = LOADED.lock().expect("cache lock");
    cache.retain(|_, held| held.strong_count() > 0);
    cache.insert(cache_key, Arc::downgrade(&dimension));
    tracing::info!(pipeline = %spec.pipeline, table = %entry.table, version = at,
        rows = dimension.num_rows(), "dimension table loaded");
    Ok(dimension)
}

async fn read_dimension(
    entry: &EnrichSpec,
    table: &DeltaTableSink,
    version: u64,
) -> std::result::Result<Dimension, String> {
    let schema = table.arrow_schema().ok_or("the table has no schema")?;
    let partitions = table.table_partition_columns();
    let wanted: Vec<&String> = entry.on.iter().chain(&entry.columns).collect();
    let fields: Vec<Field> = wanted
        .iter()
        .map(|name| {
            schema
                .field_with_name(name)
                .map(|f| f.as_ref().clone().with_nullable(true))
                .map_err(|_| {
                    let names: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    format!(
                        "the table has no column {name:?}; it has: {}",
                        names.join(", ")
                    )
                })
        })
        .collect::<std::result::Result<_, String>>()?;
    let projected: SchemaRef = Arc::new(Schema::new(fields));
    let mut batches = Vec::new();
    let mut size = 0usize;
    for file in table.data_files().map_err(|e| e.to_string())? {
        for batch in table
            .read_data_file(&file)
            .await
            .map_err(|e| e.to_string())?
        {
            let columns = projected
                .fields()
                .iter()
                .map(|f| match partitions.iter().position(|p| p == f.name()) {
                    Some(p) => partition_column(
                        file.partition_values[p].as_deref(),
                        f.data_type(),
                        batch.num_rows(),
                    ),
                    None => batch
                        .column_by_name(f.name())
                        .cloned()
                        .ok_or_else(|| format!("a data file lacks column {:?}", f.name())),
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            let batch =
                RecordBatch::try_new(projected.clone(), columns).map_err(|e| e.to_string())?;
            size += batch.get_array_memory_size();
            if size as u64 > entry.max_size.0 {
                return Err(format!(
                    "version {version} takes more than max_size ({} bytes) in memory; raise \
                     max_size, or add fewer columns",
                    entry.max_size.0
                ));
            }
            batches.push(batch);
        }
    }
    let all = concat_batches(&projected, &batches).map_err(|e| e.to_string())?;
    index(entry, all, version).map_err(|e| e.to_string())
}

fn partition_column(
    value: Option<&str>,
    to: &DataType,
    rows: usize,
) -> std::result::Result<ArrayRef, String> {
    match value {
        None => Ok(new_null_array(to, rows)),
        Some(v) => cast(&StringArray::from(vec![v; rows]), to).map_err(|e| e.to_string()),
    }
}

/// Looks for a new version of each dimension every `refresh_interval` (its
/// own) and swaps it in; stops when the dimensions are dropped.
async fn refresh(spec: Arc<TableSpec>, current: Weak<Mutex<Vec<Arc<Dimension>>>>) {
    let intervals = spec.enrich.iter().map(|e| e.refresh_interval.0).collect();
    let mut checks = Checks::new(intervals, Instant::now());
    loop {
        tokio::time::sleep_until(checks.next()).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        for i in checks.due(Instant::now()) {
            let held = current.lock().expect("dimensions lock")[i].version;
            match load(&spec, i, None).await {
                Ok(newer) if newer.version != held => {
                    tracing::info!(pipeline = %spec.pipeline, table = %spec.enrich[i].table,
                        from = held, to = newer.version, "dimension table changed: new batches join the new version");
                    current.lock().expect("dimensions lock")[i] = newer;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(pipeline = %spec.pipeline, table = %spec.enrich[i].table,
                    version = held, error = %e, "cannot read the dimension table's new version; batches keep the version they have"),
            }
        }
    }
}

/// When each dimension is next looked at, each on its own interval (a
/// table checked hourly is not read every 10 s because another is).
struct Checks {
    intervals: Vec<Duration>,
    next: Vec<Instant>,
}

impl Checks {
    fn new(intervals: Vec<Duration>, now: Instant) -> Checks {
        let next = intervals.iter().map(|d| now + *d).collect();
        Checks { intervals, next }
    }

    /// The soonest check.
    fn next(&self) -> Instant {
        let soonest = self.next.iter().min().copied();
        soonest.unwrap_or_else(|| Instant::now() + Duration::from_secs(10))
    }

    /// The dimensions due at `now`; each is then due one interval later.
    fn due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, next) in self.next.iter_mut().enumerate() {
            if *next <= now {
                *next = now + self.intervals[i];
                due.push(i);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dimension_is_checked_on_its_own_interval() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let mut checks = Checks::new(vec![s(10), s(60)], start);
        let mut checked = vec![0, 0];
        let mut now = start;
        while now < start + s(120) {
            now = checks.next();
            for i in checks.due(now) {
                checked[i] += 1;
            }
        }
        assert_eq!(checked, vec![12, 2]);
        assert_eq!(checks.next(), start + s(130));
    }
}
