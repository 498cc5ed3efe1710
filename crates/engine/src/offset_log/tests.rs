//! The offsets log on both backends: plans recorded once, announcements
//! kept per batch, a line cut short by a crash ignored.

use super::*;
use object_store::memory::InMemory;
use tributary_core::OffsetRanges;

fn plan(id: u64, end: i64) -> BatchPlan {
    let mut ranges = OffsetRanges::new("t");
    ranges.record(0, end - 1);
    BatchPlan {
        batch_id: id,
        group: "topic".into(),
        ranges,
        end_offsets: BTreeMap::from([(0, end)]),
        dead_letters: 0,
        dead_letter_records: None,
        dimension_versions: None,
    }
}

/// The contract both backends keep; `reopen` gives a second handle on
/// the same log, as a restarted or a rival instance has.
async fn plans_are_recorded_once_and_survive_reopen(
    log: OffsetLog,
    reopen: impl AsyncFn() -> OffsetLog,
) {
    assert_eq!(log.latest().await.unwrap(), None);
    for id in 0..3 {
        assert_eq!(
            log.record(&plan(id, id as i64 * 10 + 1)).await.unwrap(),
            None
        );
    }
    let again = reopen().await;
    let latest = again.latest().await.unwrap().unwrap();
    assert_eq!(latest.batch_id, 2);
    assert_eq!(latest.end_offsets[&0], 21);
    // Another plan for batch 2 is refused, and the recorded one returned.
    let rival = plan(2, 99);
    assert_eq!(again.record(&rival).await.unwrap(), Some(latest));
    assert_eq!(again.latest().await.unwrap().unwrap().end_offsets[&0], 21);
    again.adopt(&rival).await.unwrap();
    assert_eq!(log.latest().await.unwrap().unwrap().end_offsets[&0], 99);
}

async fn announcements_are_kept_per_batch_and_forgotten_with_it(log: OffsetLog) {
    let intent = log.intent(7);
    intent
        .announce("file:///t", "date=2026-01-01/part-a.parquet")
        .await
        .unwrap();
    intent
        .announce("file:///d", "part-b.parquet")
        .await
        .unwrap();
    let announced = log.announced(7).await.unwrap();
    assert_eq!(
        announced["file:///t"],
        vec!["date=2026-01-01/part-a.parquet".to_string()]
    );
    assert_eq!(announced["file:///d"], vec!["part-b.parquet".to_string()]);
    assert!(log.announced(8).await.unwrap().is_empty());
    // Recording batch 7 + RETAINED forgets batch 7's plan and intents.
    log.record(&plan(7, 1)).await.unwrap();
    log.record(&plan(7 + RETAINED, 2)).await.unwrap();
    assert!(log.announced(7).await.unwrap().is_empty());
    assert_eq!(log.latest().await.unwrap().unwrap().batch_id, 7 + RETAINED);
}

#[tokio::test]
async fn local_plans_are_recorded_once_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let loc = CheckpointStore::local(&format!("file://{}", dir.path().display()));
    let log = OffsetLog::open(&loc, "topic").unwrap();
    plans_are_recorded_once_and_survive_reopen(log, async || {
        OffsetLog::open(&loc, "topic").unwrap()
    })
    .await;
}

#[tokio::test]
async fn object_store_plans_are_recorded_once_and_survive_reopen() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let log = OffsetLog::on_store(store.clone(), "s3://b/c", "topic");
    plans_are_recorded_once_and_survive_reopen(log, async || {
        OffsetLog::on_store(store.clone(), "s3://b/c", "topic")
    })
    .await;
    let keys: Vec<String> = store
        .list(None)
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    assert!(keys.contains(&"offsets/topic/00000000000000000002.json".to_string()));
}

#[tokio::test]
async fn local_announcements_are_kept_per_batch_and_forgotten_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = OffsetLog::open(&CheckpointStore::Local(dir.path().to_path_buf()), "topic").unwrap();
    announcements_are_kept_per_batch_and_forgotten_with_it(log).await;
}

#[tokio::test]
async fn object_store_announcements_are_kept_per_batch_and_forgotten_with_it() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    announcements_are_kept_per_batch_and_forgotten_with_it(OffsetLog::on_store(
        store, "s3://b/c", "topic",
    ))
    .await;
}

#[tokio::test]
async fn a_local_announcement_cut_short_by_a_crash_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = OffsetLog::open(&CheckpointStore::Local(dir.path().to_path_buf()), "topic").unwrap();
    log.intent(7)
        .announce("file:///t", "part-a.parquet")
        .await
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("offsets/topic/00000000000000000007.files"))
        .unwrap();
    f.write_all(b"file:///t").unwrap();
    let announced = log.announced(7).await.unwrap();
    assert_eq!(announced.len(), 1);
    assert_eq!(announced["file:///t"], vec!["part-a.parquet".to_string()]);
}

/// Run alone, under `strace`, by the test below.
#[tokio::test]
#[ignore = "run under strace by a_new_intents_file_is_durable_with_its_directory"]
async fn announce_once_in_the_directory_named_by_the_environment() {
    let dir = std::env::var_os("TRIBUTARY_TEST_LOG_DIR").expect("TRIBUTARY_TEST_LOG_DIR");
    let log = OffsetLog::open(&CheckpointStore::Local(dir.into()), "topic").unwrap();
    log.intent(7)
        .announce("file:///t", "part-a.parquet")
        .await
        .unwrap();
}

/// A new intents file survives a power loss only once its directory is
/// fsynced after it was created: traced system calls show that order.
#[test]
fn a_new_intents_file_is_durable_with_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let log_dir = dir.path().join("log");
    let traced = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=openat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "offset_log::tests::announce_once_in_the_directory_named_by_the_environment",
            "--ignored",
            "--test-threads=1",
        ])
        .env("TRIBUTARY_TEST_LOG_DIR", &log_dir)
        .output()
        .expect("strace, which scripts/lib.sh installs");
    assert!(
        traced.status.success(),
        "{}{}",
        String::from_utf8_lossy(&traced.stdout),
        String::from_utf8_lossy(&traced.stderr)
    );
    let trace = std::fs::read_to_string(trace).unwrap();
    let topic_dir = log_dir.join("offsets/topic");
    let file = topic_dir.join("00000000000000000007.files");
    let opened = |path: &Path, line: &str| {
        line.contains(&format!("\"{}\"", path.display()))
            .then(|| line.rsplit_once(" = ")?.1.trim().parse::<i32>().ok())
            .flatten()
    };
    let mut lines = trace.lines();
    lines
        .by_ref()
        .find(|l| l.contains("O_CREAT") && opened(&file, l).is_some())
        .unwrap_or_else(|| panic!("the intents file was never created:\n{trace}"));
    let mut directory_fds = Vec::new();
    let synced_after = lines.any(|l| {
        directory_fds.extend(opened(&topic_dir, l));
        directory_fds
            .iter()
            .any(|fd| l.contains(&format!("fsync({fd})")))
    });
    assert!(
        synced_after,
        "the directory was not fsynced after the intents file was created:\n{trace}"
    );
}
