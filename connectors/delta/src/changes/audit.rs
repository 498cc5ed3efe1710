//! The table's log as an auditor reads it (`tributary verify`): every commit
//! still kept as JSON, and the live files storage no longer holds.

use std::collections::HashSet;
use std::ops::ControlFlow;

use deltalake::Path;
use futures::TryStreamExt;
use serde_json::Value;

use crate::COMMIT_INFO_KEY;
use crate::error::{DeltaSinkError, Result};
use crate::sink::table::DeltaTableSink;

/// One commit of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedCommit {
    pub version: u64,
    /// The commit's `txn` actions: (app id, version).
    pub txns: Vec<(String, i64)>,
    /// `commitInfo.tributary`: the batch a pipeline committed.
    pub batch: Option<Value>,
    /// Rows the commit added as new data (`dataChange=true`), from the
    /// files' statistics; `None` when a file has no row count.
    pub rows_added: Option<u64>,
    /// Rows the commit removed as data change (an upsert's replaced rows).
    pub data_removed: bool,
}

impl DeltaTableSink {
    /// Every commit of the loaded version's history still kept as a JSON
    /// file, oldest first. Older ones survive only in a checkpoint, which
    /// keeps no `commitInfo`.
    pub async fn logged_commits(&self) -> Result<Vec<LoggedCommit>> {
        let mut commits = Vec::new();
        self.walk_log_back(|version, bytes| {
            commits.push(self.parse_commit(version, bytes)?);
            Ok(ControlFlow::<()>::Continue(()))
        })
        .await?;
        commits.reverse();
        Ok(commits)
    }

    fn parse_commit(&self, version: u64, bytes: &[u8]) -> Result<LoggedCommit> {
        let corrupt = |message: String| DeltaSinkError::Corrupt {
            uri: self.uri().to_string(),
            message: format!("_delta_log/{version:020}.json: {message}"),
        };
        let mut commit = LoggedCommit {
            version,
            txns: Vec::new(),
            batch: None,
            rows_added: Some(0),
            data_removed: false,
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: Value = serde_json::from_slice(line)
                .map_err(|e| corrupt(format!("unreadable action: {e}")))?;
            if let Some(info) = action.get("commitInfo") {
                commit.batch = info.get(COMMIT_INFO_KEY).cloned();
            } else if let Some(txn) = action.get("txn") {
                let app = txn.get("appId").and_then(Value::as_str);
                let v = txn.get("version").and_then(Value::as_i64);
                match (app, v) {
                    (Some(app), Some(v)) => commit.txns.push((app.to_string(), v)),
                    _ => return Err(corrupt("a txn action without appId or version".into())),
                }
            } else if let Some(add) = action.get("add") {
                if add.get("dataChange") == Some(&Value::Bool(false)) {
                    continue;
                }
                let rows = add
                    .get("stats")
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .and_then(|s| s.get("numRecords").and_then(Value::as_u64));
                commit.rows_added = match (commit.rows_added, rows) {
                    (Some(sum), Some(n)) => Some(sum + n),
                    _ => None,
                };
            } else if let Some(remove) = action.get("remove") {
                commit.data_removed |= remove.get("dataChange") != Some(&Value::Bool(false));
            }
        }
        Ok(commit)
    }

    /// Live files of the loaded version that storage does not hold: a
    /// reader of the table fails on each of them.
    pub async fn missing_files(&self) -> Result<Vec<String>> {
        let Some(table) = &self.table else {
            return Ok(Vec::new());
        };
        let stored: HashSet<Path> = table
            .object_store()
            .list(None)
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.delta_err()(e.into()))?;
        let mut missing: Vec<String> = self
            .data_files()?
            .into_iter()
            .map(|f| f.path)
            .filter(|p| !stored.contains(&Path::from(p.as_str())))
            .collect();
        missing.sort();
        Ok(missing)
    }
}
