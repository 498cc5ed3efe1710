//! The state backend the caller picks is the one a group's state lives in.

use std::sync::Arc;

use tributary_avro::RecordColumns;

use super::*;
use crate::operator_config::{add_operator_columns, operator_config};

fn dedup_spec(dir: &std::path::Path) -> TableSpec {
    let text = format!(
        "pipeline: p
source:
  kafka: {{bootstrap_servers: 'localhost:1', topic: t}}
  schema_registry: {{url: 'http://localhost:1'}}
table: {{uri: 'file://{d}/lake/t'}}
checkpoint: {{location: 'file://{d}/checkpoint'}}
event_time: {{watermark_delay: 1m}}
dedup: {{keys: [id]}}
",
        d = dir.display()
    );
    tributary_spec::parse_spec("p.yaml", &text).unwrap()
}

async fn group_state(spec: &TableSpec, state: StateBackend) -> GroupState {
    let registry = tributary_avro::RegistryClient::new(tributary_avro::RegistryConfig {
        url: "http://localhost:1".into(),
        ..Default::default()
    })
    .unwrap();
    let components = Components {
        registry: Arc::new(registry),
        checkpoint: CheckpointStore::local(&spec.checkpoint.location),
        state,
    };
    let mut columns = RecordColumns::default();
    let hidden = add_operator_columns(spec, &mut columns);
    let config = operator_config(spec, &columns, hidden).unwrap();
    GroupState::open(spec, &components, "topic", config)
        .await
        .unwrap()
}

/// Applies an empty batch 0, then opens the state again.
async fn reopened_after_batch_zero(state: StateBackend) -> Option<u64> {
    let dir = tempfile::tempdir().unwrap();
    let spec = dedup_spec(dir.path());
    let mut group = group_state(&spec, state.clone()).await;
    assert_eq!(group.committed_batch().unwrap(), None);
    let mut operated = group.operate(0, &[]).unwrap();
    let writes = group.start_writes(std::mem::take(&mut operated.writes));
    group.apply(0, writes).await.unwrap();
    assert_eq!(group.committed_batch().unwrap(), Some(0));
    drop(group);
    group_state(&spec, state).await.committed_batch().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rocksdb_state_survives_a_restart_and_memory_state_does_not() {
    let rocks = reopened_after_batch_zero(StateBackend::RocksDb(RocksOptions::default())).await;
    assert_eq!(rocks, Some(0));
    assert_eq!(reopened_after_batch_zero(StateBackend::Memory).await, None);
}
