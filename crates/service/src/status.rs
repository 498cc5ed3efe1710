//! `tributary status`: where a pipeline stands, from the Delta log, the
//! checkpoint location and the broker's high watermarks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use tributary_core::app_id;
use tributary_delta::{DeltaTableSink, TableOptions};
use tributary_engine::{OffsetLog, PlanLog, reader_config};
use tributary_kafka::KafkaReader;
use tributary_spec::{StateScope, TableSpec};

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(spec_path: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let Some(spec) = crate::load_spec(spec_path) else {
        return Ok(ExitCode::FAILURE);
    };
    let report = collect(&spec).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn collect(spec: &TableSpec) -> anyhow::Result<Value> {
    let open = |uri: String, partitions: Vec<String>| {
        DeltaTableSink::open_existing(TableOptions {
            storage_options: spec.table.storage_options.clone(),
            uri,
            partition_columns: partitions,
            target_file_size: 1 << 20,
        })
    };
    let partition_names = spec
        .partition_columns()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let data = open(spec.table.uri.clone(), partition_names).await?;
    let checkpoint = crate::components::checkpoint_store(spec)?;
    let dead = open(spec.dead_letter_uri(), vec![]).await?;

    // The broker's view; the status is still useful without it.
    let config = reader_config(spec);
    let broker =
        tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
            let reader = KafkaReader::connect(&config)?;
            let partitions = reader.partitions(BROKER_TIMEOUT)?;
            Ok(reader.watermarks_of(&partitions, BROKER_TIMEOUT)?)
        })
        .await?;
    let (watermarks, broker_error) = match broker {
        Ok(w) => (Some(w), None),
        Err(e) => (None, Some(e.to_string())),
    };

    let groups: Vec<(String, Option<Vec<i32>>)> = match spec.state_scope {
        StateScope::Topic => vec![("topic".to_string(), None)],
        StateScope::Partition => match &watermarks {
            Some(w) => w
                .keys()
                .map(|p| (format!("p{p}"), Some(vec![*p])))
                .collect(),
            None => vec![],
        },
    };
    let mut group_reports = Vec::new();
    let mut total_lag: Option<i64> = watermarks.as_ref().map(|_| 0);
    for (group, own) in groups {
        let app = app_id(&spec.pipeline, &group);
        let marker = data.last_marker(&app).await?;
        let committed = data.committed_batch(&app).await?;
        let planned = match OffsetLog::open_existing(&checkpoint, &group) {
            Ok(Some(log)) => log.latest().await.ok().flatten(),
            _ => None,
        };
        let end_offsets: BTreeMap<i32, i64> = marker
            .as_ref()
            .and_then(|m| serde_json::from_value(m.info["endOffsets"].clone()).ok())
            .unwrap_or_default();
        let (latest, lag) = match &watermarks {
            Some(w) => {
                let mine: BTreeMap<i32, (i64, i64)> = w
                    .iter()
                    .filter(|(p, _)| own.as_ref().is_none_or(|o| o.contains(p)))
                    .map(|(p, m)| (*p, *m))
                    .collect();
                // A partition never read lags by everything it holds.
                let lag: i64 = mine
                    .iter()
                    .map(|(p, (low, high))| (high - end_offsets.get(p).unwrap_or(low)).max(0))
                    .sum();
                (
                    Some(
                        mine.iter()
                            .map(|(p, (_, high))| (*p, *high))
                            .collect::<BTreeMap<_, _>>(),
                    ),
                    Some(lag),
                )
            }
            None => (None, None),
        };
        if let (Some(t), Some(l)) = (total_lag.as_mut(), lag) {
            *t += l;
        }
        let complete_through = marker
            .as_ref()
            .and_then(|m| m.info["completeThrough"].as_str().map(str::to_string));
        group_reports.push(json!({
            "group": group,
            "completeThrough": complete_through,
            "committedBatch": committed,
            "plannedBatch": planned.map(|p| p.batch_id),
            "tableVersion": marker.as_ref().map(|m| m.version),
            "endOffsets": end_offsets,
            "latestOffsets": latest,
            "lag": lag,
        }));
    }
    // The table is complete through the earliest of its groups' times, once
    // every group has one.
    let complete_through = group_reports
        .iter()
        .map(|g| g["completeThrough"].as_str())
        .collect::<Option<Vec<&str>>>()
        .and_then(|times| times.into_iter().min().map(str::to_string));
    Ok(json!({
        "pipeline": spec.pipeline,
        "topic": spec.table_topic(),
        "table": {"uri": spec.table.uri, "version": data.version(), "completeThrough": complete_through},
        "groups": group_reports,
        "lag": total_lag,
        "deadLetters": dead.row_count()?.unwrap_or(0),
        "deadLetterTable": spec.dead_letter_uri(),
        "brokerError": broker_error,
    }))
}

fn print_text(r: &Value) {
    let table_version = r["table"]["version"]
        .as_u64()
        .map_or("none yet".to_string(), |v| v.to_string());
    println!(
        "pipeline {}  (topic {})",
        r["pipeline"].as_str().unwrap_or(""),
        r["topic"].as_str().unwrap_or("")
    );
    println!(
        "table    {}  version {table_version}",
        r["table"]["uri"].as_str().unwrap_or("")
    );
    if let Some(t) = r["table"]["completeThrough"].as_str() {
        println!("complete through {t}  (windows ending then or earlier are final)");
    }
    for g in r["groups"].as_array().into_iter().flatten() {
        let batch = g["committedBatch"]
            .as_u64()
            .map_or("none".to_string(), |b| b.to_string());
        let pending = match (g["plannedBatch"].as_u64(), g["committedBatch"].as_u64()) {
            (Some(p), c) if c.is_none_or(|c| p > c) => {
                format!(" (batch {p} planned, not yet committed: it will be re-run)")
            }
            _ => String::new(),
        };
        println!(
            "group    {}: last committed batch {batch}{pending}, lag {}, offsets {}",
            g["group"].as_str().unwrap_or(""),
            g["lag"]
                .as_i64()
                .map_or("unknown".to_string(), |l| l.to_string()),
            g["endOffsets"]
        );
    }
    println!(
        "lag      {}",
        r["lag"]
            .as_i64()
            .map_or("unknown".to_string(), |l| l.to_string())
    );
    println!(
        "dead letters {}  ({})",
        r["deadLetters"],
        r["deadLetterTable"].as_str().unwrap_or("")
    );
    if let Some(e) = r["brokerError"].as_str() {
        println!("broker       unreachable: {e}");
    }
}
