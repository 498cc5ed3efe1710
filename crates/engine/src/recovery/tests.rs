//! Recovery against in-memory offsets logs and tables: every crash point of
//! the protocol, a zombie's plans, and a lost offsets log.

use std::collections::BTreeMap;

use tributary_core::CrashPoint;

use super::fakes::{MemoryLog, World, plan, step};
use crate::contracts::PlanLog;
use crate::error::EngineError;
use crate::plan::BatchPlan;

/// Batches 0..=2 complete, batch 3 stops at `point`; recovery must re-run
/// exactly the batches some table or the state lacks, resume after the last
/// planned batch, and find nothing more to do once that is carried out.
async fn crash_at(point: CrashPoint, stateful: bool, dead_letters: bool) {
    let mut world = World::new(stateful);
    let batch = |id| BatchPlan {
        dead_letters: u64::from(dead_letters),
        ..plan(id, 0)
    };
    for id in 0..3 {
        world.run(&batch(id), None).await;
    }
    world.run(&batch(3), Some(point)).await;
    let recovery = world.recover().await.unwrap();

    let planned = step(point) >= step(CrashPoint::AfterPlan);
    let landed = step(point) >= step(CrashPoint::AfterCommit);
    let applied = step(point) >= step(CrashPoint::AfterOffsets);
    let last = if planned { batch(3) } else { batch(2) };
    let expect_rerun = if stateful {
        planned && !applied
    } else {
        planned && !landed
    };
    let context = format!(
        "crash at {} (stateful {stateful}, dead letters {dead_letters})",
        point.name()
    );
    assert_eq!(
        recovery.rerun,
        if expect_rerun {
            vec![last.clone()]
        } else {
            vec![]
        },
        "{context}"
    );
    let expect_landed = (!stateful && !expect_rerun).then(|| last.clone());
    assert_eq!(recovery.landed, expect_landed, "{context}");
    assert_eq!(recovery.positions, last.end_offsets, "{context}");
    assert_eq!(recovery.next_batch, last.batch_id + 1, "{context}");
    assert!(recovery.resumed, "{context}");

    world.carry_out(&recovery).await;
    let again = world.recover().await.unwrap();
    assert!(
        again.rerun.is_empty(),
        "{context}: a second recovery re-runs {:?}",
        again.rerun
    );
    assert_eq!(again.next_batch, recovery.next_batch, "{context}");
}

#[tokio::test]
async fn every_crash_point_resumes_with_each_batch_once() {
    for point in CrashPoint::all() {
        for stateful in [false, true] {
            for dead_letters in [false, true] {
                crash_at(point, stateful, dead_letters).await;
            }
        }
    }
}

#[tokio::test]
async fn dead_letters_landed_without_the_data_rerun_the_batch() {
    let mut world = World::new(false);
    let with_letters = BatchPlan {
        dead_letters: 2,
        ..plan(0, 0)
    };
    world
        .run(&with_letters, Some(CrashPoint::AfterDeadLetters))
        .await;
    assert_eq!(*world.dead_letters.txn.lock().unwrap(), Some(0));
    let recovery = world.recover().await.unwrap();
    assert_eq!(recovery.rerun, vec![with_letters]);
    assert_eq!(recovery.landed, None);
}

#[tokio::test]
async fn a_fresh_group_starts_at_batch_zero() {
    for stateful in [false, true] {
        let recovery = World::new(stateful).recover().await.unwrap();
        assert_eq!(recovery.rerun, vec![]);
        assert_eq!((recovery.next_batch, recovery.resumed), (0, false));
        assert!(recovery.positions.is_empty());
    }
}

#[tokio::test]
async fn a_zombies_plan_gives_way_to_what_the_table_holds() {
    // This instance planned batch 2 and stalled; another instance planned
    // batch 2 with other offsets and committed it.
    let mut world = World::new(false);
    world.run(&plan(0, 0), None).await;
    world.run(&plan(1, 0), None).await;
    world.run(&plan(2, 0), Some(CrashPoint::AfterPlan)).await;
    let winner = plan(2, 5);
    world.data.land(&winner);

    let recovery = world.recover().await.unwrap();
    assert_eq!(recovery.rerun, vec![]);
    assert_eq!(recovery.landed, Some(winner.clone()));
    assert_eq!(recovery.positions, winner.end_offsets);
    assert_eq!(
        world.log.plan(2).await.unwrap(),
        Some(winner),
        "the log adopts the table's plan"
    );
}

#[tokio::test]
async fn a_zombie_behind_the_table_adopts_its_newest_batch() {
    let mut world = World::new(true);
    world.run(&plan(0, 0), None).await;
    world.run(&plan(1, 0), Some(CrashPoint::AfterPlan)).await;
    // Another instance committed batches 1 and 2 (state_scope topic, a
    // failover): the table is two batches past this instance's state.
    world.data.land(&plan(1, 3));
    world.data.land(&plan(2, 3));

    let recovery = world.recover().await.unwrap();
    assert_eq!(world.log.plan(2).await.unwrap(), Some(plan(2, 3)));
    // The state catches up with what the table holds: batch 1 as the other
    // instance committed it, not as this log planned it.
    assert_eq!(recovery.rerun, vec![plan(1, 3), plan(2, 3)]);
    assert_eq!(recovery.next_batch, 3);
}

#[tokio::test]
async fn a_lost_offsets_log_resumes_after_the_tables_last_commit() {
    let mut world = World::new(false);
    for id in 0..3 {
        world.run(&plan(id, 0), None).await;
    }
    world.log = MemoryLog::default();
    let recovery = world.recover().await.unwrap();
    assert_eq!(recovery.rerun, vec![]);
    assert_eq!(recovery.landed, None);
    assert_eq!(recovery.positions, plan(2, 0).end_offsets);
    assert_eq!((recovery.next_batch, recovery.resumed), (3, true));
}

#[tokio::test]
async fn lost_state_and_log_are_rebuilt_from_the_tables_commits() {
    let mut world = World::new(true);
    for id in 0..3 {
        world.run(&plan(id, 0), None).await;
    }
    world.log = MemoryLog::default();
    world.state = Some(None);
    let recovery = world.recover().await.unwrap();
    assert_eq!(recovery.rerun, vec![plan(0, 0), plan(1, 0), plan(2, 0)]);
    assert_eq!(recovery.next_batch, 3);

    // Without the JSON of batch 0 the state cannot be rebuilt.
    world.data.expire(0);
    let refused = world.recover().await.unwrap_err();
    assert!(
        refused.to_string().contains("needs batch 0 re-run"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_txn_version_without_its_commit_record_refuses_to_start() {
    let mut world = World::new(false);
    for id in 0..3 {
        world.run(&plan(id, 0), None).await;
    }
    world.log = MemoryLog::default();
    world.data.expire(2);
    let refused = world.recover().await.unwrap_err();
    assert!(
        matches!(refused, EngineError::UnknownPosition { batch: 2, .. }),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("neither the checkpoint location")
    );
    assert!(
        refused
            .to_string()
            .contains("group topic of pipeline p committed batch 2")
    );
    assert!(
        refused
            .to_string()
            .contains("Restore the checkpoint location (offsets/topic/)")
    );
}

#[tokio::test]
async fn announced_files_are_kept_per_batch() {
    let log = MemoryLog::default();
    log.intent(4)
        .announce("memory://table", "part-a")
        .await
        .unwrap();
    log.intent(4)
        .announce("memory://table", "part-b")
        .await
        .unwrap();
    log.intent(5)
        .announce("memory://dead", "part-c")
        .await
        .unwrap();
    assert_eq!(
        log.announced(4).await.unwrap(),
        BTreeMap::from([(
            "memory://table".to_string(),
            vec!["part-a".to_string(), "part-b".to_string()]
        )])
    );
}
