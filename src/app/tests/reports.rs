//! Time standards persisted and reported (hours elapsed, "1 hari" on the working
//! calendar), and the outbox of actions for the scheduler and restore components.

use crate::app::tests::*;
use crate::app::{BackupApplication, OpenRequest, RequestDetails, RestoreApplication};
use crate::catalog::{Catalog, PendingStatus, RequestFilter};
use crate::workflow::{Answer, Event, StepNumber, SystemAction, TimeStandard};

pub(crate) async fn overruns_are_reported_on_the_working_calendar(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let app = &env.app;
    // Monday 2 March 2026, WIB.
    let opened = app
        .open_request(
            SKPD,
            "restore_request",
            OpenRequest {
                agency_id: env.dinkes.id,
                subject: "Restore".into(),
                details: RequestDetails::Restore(RestoreApplication {
                    server_id: None,
                    backup_request: None,
                    restore_point: "kemarin".into(),
                    target: "server asal".into(),
                    reason: "data hilang".into(),
                }),
            },
            wib(2026, 3, 2, 8, 0),
        )
        .await
        .expect("open");
    let id = opened.request.id;
    let at = |day, hour, minute| wib(2026, 3, day, hour, minute);
    // C1 "1 jam": done after 2 h 30 — late by 1 h 30.
    app.submit(KADIN, id, Event::complete(1), at(2, 10, 30))
        .await
        .expect("C1");
    // C2 "3 jam": the restore plan written, done after 30 min.
    env.restore_plan(id, Vec::new(), at(2, 10, 45)).await;
    app.submit(KASI, id, Event::complete(2), at(2, 11, 0))
        .await
        .expect("C2");
    // C3 "2 jam": done after 30 min.
    app.submit(
        KABID,
        id,
        Event::decide(3, Answer::Yes, "ok"),
        at(2, 11, 30),
    )
    .await
    .expect("C3");
    // C4 "1 hari" entered Monday 11:30: due after 8 h 30 of office time, i.e. Tuesday
    // 11:30 (Monday 11:30–16:00 and Tuesday 07:30–11:30). The restore the system started
    // ends Tuesday 10:50; the officer closes C4 at 11:00: on time.
    app.advance_restore_requests("test", at(2, 11, 31))
        .await
        .expect("the restore starts");
    env.end_next_restore("ok", at(3, 10, 50)).await;
    app.submit(PETUGAS, id, Event::complete(4), at(3, 11, 0))
        .await
        .expect("C4");
    // C5 "2 jam": still open on Wednesday 09:00 — late, measured to now.
    let now = at(4, 9, 0);

    let report = app.overrun_report(id, now).await.expect("report");
    let late: Vec<(u32, i64)> = report
        .report
        .overruns()
        .map(|timing| (timing.step.0, timing.late_by_seconds.unwrap_or_default()))
        .collect();
    let c5_late = (now - at(3, 13, 0)).num_seconds();
    assert_eq!(late, vec![(1, 90 * 60), (5, c5_late)]);
    let c4 = &report.report.steps[3];
    assert_eq!(c4.time_standard, TimeStandard::WorkingDays(1));
    assert_eq!(c4.deadline, Some(at(3, 11, 30)));
    assert!(!c4.is_overrun());
    let stored = app.request(id).await.expect("view");
    assert_eq!(stored.state.steps[0].started_at, wib(2026, 3, 2, 8, 0));
    assert_eq!(stored.state.steps[0].finished_at, Some(at(2, 10, 30)));

    // Across requests: the same two, with the request and agency named.
    let all = app
        .overruns(&RequestFilter::default(), now)
        .await
        .expect("overruns");
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|overrun| overrun.request_id == id && overrun.agency_id == env.dinkes.id)
    );
    assert_eq!(all[0].step, StepNumber(1));
    assert_eq!(all[1].finished_at, None, "C5 is still open");
    let finished_only = app
        .overruns(
            &RequestFilter {
                active: Some(false),
                ..RequestFilter::default()
            },
            now,
        )
        .await
        .expect("overruns");
    assert!(finished_only.is_empty());
}

pub(crate) async fn outbox_actions_are_claimed_and_finished(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env
        .open(
            SKPD,
            "backup_request",
            OpenRequest {
                agency_id: env.dinkes.id,
                subject: "Back up".into(),
                details: RequestDetails::Backup(BackupApplication {
                    server_id: None,
                    scope: "/srv".into(),
                    schedule: "harian".into(),
                    retention: "7 hari".into(),
                    estimated_size_gb: None,
                }),
            },
        )
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    env.backup_plan(id).await;
    env.complete(KASI, id, 2).await;
    assert!(
        env.app
            .claim_actions("restore-1", &["run_restore"], 10, env.now())
            .await
            .expect("claim")
            .is_empty(),
        "a worker only gets the actions it runs"
    );
    let jobs = env
        .app
        .claim_actions("scheduler-1", &["start_backup_plan"], 10, env.now())
        .await
        .expect("claim");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].request_id, id);
    assert_eq!(jobs[0].step, StepNumber(3));
    assert_eq!(jobs[0].action, SystemAction::StartBackupPlan);
    assert!(
        env.app
            .claim_actions("scheduler-2", &["start_backup_plan"], 10, env.now())
            .await
            .expect("claim")
            .is_empty(),
        "a claimed action is not handed out twice"
    );
    assert_error(
        env.app
            .finish_action(
                "scheduler-2",
                jobs[0].id,
                Ok(serde_json::json!({})),
                env.now(),
            )
            .await,
        conflict,
        "is not claimed by scheduler-2",
    );
    env.app
        .finish_action(
            "scheduler-1",
            jobs[0].id,
            Ok(serde_json::json!({ "plan": "simkes-daily", "snapshots": 1 })),
            env.now(),
        )
        .await
        .expect("finish");
    let outbox = env.app.pending_actions_of(id).await.expect("outbox");
    assert_eq!(outbox[0].status, PendingStatus::Done);
    assert_eq!(outbox[0].claimed_by.as_deref(), Some("scheduler-1"));
    assert!(
        outbox[0]
            .result_json
            .as_deref()
            .is_some_and(|json| json.contains("simkes-daily"))
    );
    assert_error(
        env.app
            .finish_action("scheduler-1", jobs[0].id, Err("again".into()), env.now())
            .await,
        conflict,
        "is not claimed",
    );
    let trail = env
        .app
        .audit_trail("request", &id.to_string())
        .await
        .expect("trail");
    let actions: Vec<&str> = trail.iter().map(|row| row.action.as_str()).collect();
    assert!(actions.contains(&"action.queue"));
    assert!(actions.contains(&"action.claim"));
    assert!(actions.contains(&"action.finish"));
    env.assert_audit_intact().await;
}
