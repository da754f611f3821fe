//! Backup plans and the schedule, on a manual clock: procedure B steers the plan, due
//! slots become runs exactly once, missed slots are caught up once, runs of one plan
//! never overlap, a lapsed lease is taken over, and several daemons racing on one
//! catalog still run every slot exactly once.

use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::app::{PlanSpec, Retention};
use crate::catalog::{Catalog, PlanId, RequestId, RunEnd, RunRecord};
use crate::workflow::Answer;

pub(crate) fn spec(schedule: &str) -> PlanSpec {
    PlanSpec {
        server: None,
        paths: vec!["/srv/simkes".into()],
        excludes: vec!["*.tmp".into()],
        exclude_if_present: vec![],
        exclude_caches: false,
        exclude_larger_than: None,
        schedule: schedule.into(),
        time_zone: "Asia/Jakarta".into(),
        retention: Retention {
            daily: 30,
            ..Retention::default()
        },
        retention_schedule: Some("0 4 * * 0".into()),
        verify_schedule: None,
        verify_parts: 7,
        drill_schedule: None,
        replicate_schedule: None,
        window: None,
        bandwidth_limit_kib: None,
        compress_on: crate::app::CompressOn::Agent,
        restic: None,
        before_backup: None,
        after_backup: None,
    }
}

pub(crate) fn parts(
    claimed: crate::app::ClaimedRun,
) -> (RunRecord, crate::catalog::PlanRecord, String) {
    (claimed.run, claimed.plan, claimed.agency_code)
}

pub(crate) fn ok() -> RunEnd {
    RunEnd {
        status: "ok",
        stats_json: "{}".into(),
        snapshot_id: Some("ab".repeat(32)),
        error: None,
    }
}

pub(crate) async fn backup_request(env: &Env) -> RequestId {
    env.open(
        SKPD,
        "backup_request",
        crate::app::OpenRequest {
            agency_id: env.dinkes.id,
            subject: "Permintaan back up SIMKES".into(),
            details: crate::app::RequestDetails::Backup(crate::app::BackupApplication {
                server_id: None,
                scope: "/srv/simkes".into(),
                schedule: "setiap jam".into(),
                retention: "30 hari".into(),
                estimated_size_gb: None,
            }),
        },
    )
    .await
    .expect("the backup request opens")
    .request
    .id
}

pub(crate) async fn runs_of(env: &Env, plan: PlanId) -> Vec<crate::catalog::RunRecord> {
    let mut tx = env.app.catalog().begin_read().await.unwrap();
    tx.runs(Some(plan), None, 1000).await.unwrap()
}

pub(crate) async fn the_backup_request_steers_its_plan(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = backup_request(&env).await;
    env.complete(KADIN, id, 1).await;
    // Only planners create plans, and only for an active backup request.
    assert_error(
        env.app
            .create_plan(SKPD, id, "harian", spec("0 * * * *"), env.now())
            .await,
        forbidden,
        "only",
    );
    let plan = env
        .app
        .create_plan(KASI, id, "simkes-jam", spec("0 * * * *"), env.now())
        .await
        .expect("the plan is created");
    assert_eq!(plan.status, "approved");
    assert_eq!(plan.next, [None; 5], "not scheduled before B5");

    // Entering B3 (B2 done): the first start runs the plan once.
    env.complete(KASI, id, 2).await;
    assert_eq!(
        env.app.apply_plan_actions("d1", env.now()).await.unwrap(),
        1
    );
    let runs = runs_of(&env, plan.id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].step),
        ("request", Some(3))
    );
    let now = env.now();
    let (run, _, agency) = env
        .app
        .claim_run("d1", TimeDelta::minutes(5), now)
        .await
        .unwrap()
        .map(parts)
        .expect("claimable");
    assert_eq!(agency, "DINKES");
    assert!(env.app.finish_run(run.id, "d1", &ok(), now).await.unwrap());
    env.complete(PETUGAS, id, 3).await;

    // B5: continue on schedule.
    env.decide(KASI, id, 4, Answer::Yes, "data bertambah setiap hari")
        .await;
    let activated_at = env.now();
    env.app
        .apply_plan_actions("d1", activated_at)
        .await
        .unwrap();
    let (active, _) = env
        .app
        .plan_for(&caller(&env, KASI).await, plan.id, 10)
        .await
        .unwrap();
    assert_eq!(active.status, "active");
    let first = active.next[0].expect("a next backup");
    assert!(first > activated_at && first - activated_at <= TimeDelta::hours(1));
    assert!(active.next[1].is_some(), "retention is scheduled too");

    // Nothing before the slot; exactly one run at it, however often the scheduler looks.
    assert!(
        env.app
            .queue_due_runs(first - TimeDelta::seconds(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(env.app.queue_due_runs(first).await.unwrap().len(), 1);
    assert!(env.app.queue_due_runs(first).await.unwrap().is_empty());
    assert!(
        env.app
            .queue_due_runs(first + TimeDelta::minutes(10))
            .await
            .unwrap()
            .is_empty()
    );

    // Runs of one plan never overlap: the next slot waits while one is running.
    let (running, _, _) = env
        .app
        .claim_run("d1", TimeDelta::minutes(90), first)
        .await
        .unwrap()
        .map(parts)
        .unwrap();
    let second = first + TimeDelta::hours(1);
    assert_eq!(env.app.queue_due_runs(second).await.unwrap().len(), 1);
    assert!(
        env.app
            .claim_run("d2", TimeDelta::minutes(5), second)
            .await
            .unwrap()
            .map(parts)
            .is_none()
    );
    assert!(
        env.app
            .finish_run(running.id, "d1", &ok(), second)
            .await
            .unwrap()
    );
    let (next, _, _) = env
        .app
        .claim_run("d2", TimeDelta::minutes(5), second)
        .await
        .unwrap()
        .map(parts)
        .unwrap();
    assert_eq!(next.due_at, second);
    assert!(
        env.app
            .finish_run(next.id, "d2", &ok(), second)
            .await
            .unwrap()
    );

    // The daemons were down for five hours: one catch-up run, for the latest slot.
    let back = second + TimeDelta::hours(5) + TimeDelta::minutes(20);
    let queued = env.app.queue_due_runs(back).await.unwrap();
    assert_eq!(queued.len(), 1, "caught up once, not once per missed slot");
    let runs = runs_of(&env, plan.id).await;
    let catch_up = runs.iter().find(|run| run.id == queued[0]).unwrap();
    assert_eq!(catch_up.trigger, "catch_up");
    assert_eq!(catch_up.due_at, second + TimeDelta::hours(5));

    // Pause: nothing is scheduled; resume: from now on, no flood of missed slots.
    env.app
        .set_plan_running(PETUGAS, plan.id, false, back)
        .await
        .unwrap();
    assert!(
        env.app
            .queue_due_runs(back + TimeDelta::hours(3))
            .await
            .unwrap()
            .is_empty()
    );
    let resumed = env
        .app
        .set_plan_running(PETUGAS, plan.id, true, back + TimeDelta::hours(3))
        .await
        .unwrap();
    assert!(resumed.next[0].unwrap() > back + TimeDelta::hours(3));
    assert_error(
        env.app
            .set_plan_running(PETUGAS, plan.id, true, back + TimeDelta::hours(3))
            .await,
        conflict,
        "not paused",
    );

    // B7: the plan stops; its queued runs are cancelled; nothing more is scheduled.
    env.app
        .queue_due_runs(resumed.next[0].unwrap())
        .await
        .unwrap();
    env.complete(PETUGAS, id, 5).await;
    env.complete(KADIN, id, 6).await;
    env.complete(PETUGAS, id, 7).await;
    env.app.apply_plan_actions("d1", env.now()).await.unwrap();
    let (stopped, runs) = env
        .app
        .plan_for(&caller(&env, KASI).await, plan.id, 100)
        .await
        .unwrap();
    assert_eq!(stopped.status, "stopped");
    assert!(runs.iter().all(|run| run.status != "queued"));
    assert!(runs.iter().any(|run| run.status == "cancelled"));
    assert!(
        env.app
            .queue_due_runs(back + TimeDelta::days(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert_error(
        env.app.run_now(KASI, plan.id, env.now()).await,
        conflict,
        "stopped",
    );

    // Another agency sees none of it.
    let other = caller(&env, SKPD_OTHER).await;
    assert_error(
        env.app.plan_for(&other, plan.id, 1).await,
        forbidden,
        "another agency",
    );
    assert!(env.app.plans_for(&other, None).await.unwrap().is_empty());
    env.assert_audit_intact().await;
}

/// A plan with one run, claimed under `lease` by the daemon `dead`; the plan, the run
/// and the time of the claim.
async fn run_claimed_by_dead(
    env: &Env,
    lease: TimeDelta,
) -> (crate::app::PlanView, RunRecord, DateTime<Utc>) {
    let id = backup_request(env).await;
    let plan = env
        .app
        .create_plan(KASI, id, "p", spec("0 2 * * *"), env.now())
        .await
        .unwrap();
    let now = env.now();
    env.app.run_now(KASI, plan.id, now).await.unwrap();
    let (run, _, _) = env
        .app
        .claim_run("dead", lease, now)
        .await
        .unwrap()
        .map(parts)
        .unwrap();
    (plan, run, now)
}

pub(crate) async fn a_lapsed_lease_is_taken_over(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let (plan, run, now) = run_claimed_by_dead(&env, TimeDelta::minutes(1)).await;
    // While the lease holds, nobody else gets it.
    assert!(
        env.app
            .claim_run("alive", TimeDelta::minutes(1), now + TimeDelta::seconds(30))
            .await
            .unwrap()
            .map(parts)
            .is_none()
    );
    // The holder died: after the lease lapses the run is taken over, not lost, not doubled.
    let later = now + TimeDelta::minutes(2);
    let (taken, _, _) = env
        .app
        .claim_run("alive", TimeDelta::minutes(1), later)
        .await
        .unwrap()
        .map(parts)
        .unwrap();
    assert_eq!(taken.id, run.id);
    assert_eq!(taken.attempts, 2);
    assert!(
        !env.app
            .renew_lease(run.id, "dead", TimeDelta::minutes(1), later)
            .await
            .unwrap()
    );
    assert!(
        !env.app
            .finish_run(run.id, "dead", &ok(), later)
            .await
            .unwrap(),
        "the dead holder's late result is refused"
    );
    assert!(
        env.app
            .finish_run(run.id, "alive", &ok(), later)
            .await
            .unwrap()
    );
    let runs = runs_of(&env, plan.id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "ok");
}

pub(crate) async fn the_run_of_a_gone_daemon_is_taken_back_at_once(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let (plan, run, now) = run_claimed_by_dead(&env, TimeDelta::minutes(10)).await;
    // The daemon restarted on its catalog: its predecessor's lease has nine minutes
    // to go, and it knows that holder is gone.
    let restarted = now + TimeDelta::minutes(1);
    assert!(
        env.app
            .claim_run("alive", TimeDelta::minutes(10), restarted)
            .await
            .unwrap()
            .is_none(),
        "the lease holds until it is taken back"
    );
    assert_eq!(
        env.app
            .take_back_work_of_gone_daemons("alive", restarted)
            .await
            .unwrap(),
        (1, 0)
    );
    let (taken, _, _) = env
        .app
        .claim_run(
            "alive",
            TimeDelta::minutes(10),
            restarted + TimeDelta::seconds(1),
        )
        .await
        .unwrap()
        .map(parts)
        .expect("taken over at the next claim");
    assert_eq!((taken.id, taken.attempts), (run.id, 2));
    assert!(
        !env.app
            .renew_lease(run.id, "dead", TimeDelta::minutes(10), restarted)
            .await
            .unwrap(),
        "the gone holder's lease is over"
    );
    // Its own runs are not taken back from itself, nor is anything done twice.
    assert_eq!(
        env.app
            .take_back_work_of_gone_daemons("alive", restarted + TimeDelta::seconds(2))
            .await
            .unwrap(),
        (0, 0)
    );
    assert!(
        env.app
            .renew_lease(
                run.id,
                "alive",
                TimeDelta::minutes(10),
                restarted + TimeDelta::seconds(3)
            )
            .await
            .unwrap()
    );
    assert!(
        env.app
            .finish_run(run.id, "alive", &ok(), restarted + TimeDelta::seconds(4))
            .await
            .unwrap()
    );
    let runs = runs_of(&env, plan.id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "ok");
}

pub(crate) async fn racing_daemons_run_every_slot_exactly_once(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = backup_request(&env).await;
    let start: DateTime<Utc> = env.now();
    let mut plans = Vec::new();
    for n in 0..12 {
        let plan = env
            .app
            .create_plan(KASI, id, &format!("p{n}"), spec("* * * * *"), start)
            .await
            .unwrap();
        plans.push(plan.id);
    }
    // Put them all on their per-minute schedule.
    {
        let mut tx = env.app.catalog().begin().await.unwrap();
        for plan in &plans {
            tx.update_plan(
                *plan,
                "active",
                [Some(start + TimeDelta::minutes(1)), None, None, None, None],
                start,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    // Three daemons look at the same catalog minute by minute, each at its own pace (so
    // their clocks drift apart by minutes here; leases are long enough that none looks
    // lapsed — takeover has its own test).
    let minutes = 15;
    let mut daemons = Vec::new();
    for name in ["d1", "d2", "d3"] {
        let app = env.app.clone();
        daemons.push(tokio::spawn(async move {
            let mut done = 0;
            for minute in 1..=minutes {
                let now = start + TimeDelta::minutes(minute) + TimeDelta::seconds(1);
                app.queue_due_runs(now).await.unwrap();
                while let Some((run, _, _)) = app
                    .claim_run(name, TimeDelta::hours(2), now)
                    .await
                    .unwrap()
                    .map(parts)
                {
                    assert!(app.finish_run(run.id, name, &ok(), now).await.unwrap());
                    done += 1;
                }
            }
            done
        }));
    }
    let mut total = 0;
    for daemon in daemons {
        total += daemon.await.unwrap();
    }
    let expected = plans.len() * usize::try_from(minutes).unwrap();
    assert_eq!(total, expected, "every slot ran once, across the daemons");
    for plan in plans {
        let runs = runs_of(&env, plan).await;
        assert_eq!(runs.len(), usize::try_from(minutes).unwrap());
        assert!(
            runs.iter()
                .all(|run| run.status == "ok" && run.attempts == 1)
        );
        let mut slots: Vec<_> = runs.iter().map(|run| run.due_at).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), runs.len(), "no slot twice");
    }
}

pub(crate) async fn caller(env: &Env, username: &str) -> crate::app::Caller {
    let issued = env
        .app
        .create_token(username, None, "test", None, env.now())
        .await
        .unwrap();
    env.app
        .authenticate(issued.secret.expose(), env.now())
        .await
        .unwrap()
}

pub(crate) async fn a_plan_action_of_a_dead_daemon_is_applied_once_by_another(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = backup_request(&env).await;
    env.complete(KADIN, id, 1).await;
    let plan = env
        .app
        .create_plan(KASI, id, "arsip", spec("0 * * * *"), env.now())
        .await
        .unwrap();
    env.complete(KASI, id, 2).await;
    // A daemon claims B3's start and dies before applying it.
    let claimed_at = env.now();
    let claimed = env
        .app
        .claim_actions("dead", &["start_backup_plan"], 10, claimed_at)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // While the claim is fresh, nobody else touches it.
    assert_eq!(
        env.app
            .apply_plan_actions("alive", claimed_at + TimeDelta::minutes(5))
            .await
            .unwrap(),
        0
    );
    assert!(runs_of(&env, plan.id).await.is_empty());
    // Once it is stale it is put back and applied, once.
    let later = claimed_at + TimeDelta::minutes(11);
    assert_eq!(env.app.apply_plan_actions("alive", later).await.unwrap(), 1);
    assert_eq!(
        env.app
            .apply_plan_actions("alive", later + TimeDelta::minutes(30))
            .await
            .unwrap(),
        0
    );
    let runs = runs_of(&env, plan.id).await;
    assert_eq!(runs.len(), 1, "B3 runs the plan once");
    assert_eq!(runs[0].trigger, "request");
    let actions = env.app.pending_actions_of(id).await.unwrap();
    let start = actions
        .iter()
        .find(|action| action.action == "start_backup_plan")
        .unwrap();
    assert_eq!(start.claimed_by.as_deref(), Some("alive"));
    assert_eq!(start.status, crate::catalog::PendingStatus::Done);
    // The dead daemon's late finish is refused: the action is another's now.
    assert!(
        env.app
            .finish_action("dead", claimed[0].id, Ok(serde_json::json!({})), later)
            .await
            .is_err()
    );
    env.assert_audit_intact().await;
}
