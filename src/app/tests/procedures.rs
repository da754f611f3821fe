//! Every path through every procedure, persisted: each branch and each end of A
//! (colocation), B (backup), C (restore), the withdrawal and the maintenance request,
//! with the documents, capacity, register updates and queued actions each path causes.

use chrono::TimeDelta;

use crate::app::restore_requests::FallbackStep;
use crate::app::tests::*;
use crate::app::{
    BackupApplication, MaintenanceApplication, ObservedServer, OpenRequest, RequestDetails,
    RestoreApplication, WithdrawalApplication,
};
use crate::catalog::{AllocationStatus, Catalog, RequestId, ServerStatus};
use crate::workflow::{Answer, DocumentKind, DocumentRef, Event, Outcome, StepNumber};

fn path(numbers: &[u32]) -> Vec<StepNumber> {
    numbers.iter().copied().map(StepNumber).collect()
}

async fn kinds(env: &Env, request: RequestId) -> Vec<DocumentKind> {
    env.app
        .documents_of(request)
        .await
        .expect("documents")
        .into_iter()
        .map(|document| document.kind)
        .collect()
}

async fn finished(env: &Env, request: RequestId, outcome: Outcome, steps: &[u32]) {
    let view = env.app.request(request).await.expect("request");
    assert_eq!(
        view.state.outcome(),
        Some(outcome),
        "{:?}",
        view.state.progress
    );
    assert_eq!(view.state.path(), path(steps));
    assert!(
        view.state
            .steps
            .iter()
            .all(|record| record.finished_at.is_some())
    );
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    assert_eq!(
        tx.count_step_records(request).await.expect("count"),
        steps.len() as i64,
        "every step visit is in the step_records projection"
    );
    drop(tx);
    env.assert_audit_intact().await;
}

pub(crate) async fn colocation_approved_and_handed_over(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let opened = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .expect("open");
    let id = opened.request.id;
    assert_eq!(opened.request.state.revision.0, 1);
    assert_eq!(opened.request.sop_number, "067/798");
    let RequestDetails::Colocation(application) = &opened.request.details else {
        panic!("colocation details")
    };
    assert_eq!(application.domain, "simkes.jatengprov.go.id", "normalized");
    assert!(application.servers[0].host_admin_secret.is_some(), "sealed");
    assert!(application.servers[0].host_admin_password.is_none());

    env.complete(KADIN, id, 1).await;
    let checked = env.complete(KASI, id, 2).await;
    let report = checked
        .capacity
        .expect("entering step 3 runs the capacity check");
    assert_eq!(report.proposal, Answer::Yes);
    assert_eq!(
        report.rack,
        Some(env.racks[1].id),
        "R02 is the tightest fit"
    );
    assert_eq!(report.u_start, Some(1));
    assert!(report.reason_id.contains("U1–U3"), "{}", report.reason_id);
    assert_eq!(env.app.capacity_report(id).await.expect("stored"), report);

    env.complete(PETUGAS, id, 3).await;
    let reserved = env
        .decide(KASI, id, 4, Answer::Yes, "kapasitas tersedia")
        .await;
    assert!(reserved.capacity.is_some());
    let allocations = env.app.live_allocations().await.expect("allocations");
    let held: Vec<_> = allocations
        .iter()
        .filter(|allocation| allocation.request_id == Some(id))
        .collect();
    assert_eq!(held.len(), 2);
    assert!(
        held.iter()
            .all(|allocation| allocation.status == AllocationStatus::Reserved)
    );
    assert_eq!(
        held.iter()
            .map(|a| (a.u_start, a.u_count))
            .collect::<Vec<_>>(),
        vec![(Some(1), 2), (Some(3), 1)]
    );

    let approved = env
        .decide(KADIN, id, 5, Answer::Yes, "disetujui Kepala Dinas")
        .await;
    let issued: Vec<DocumentKind> = approved.documents.iter().map(|d| d.kind).collect();
    assert_eq!(
        issued,
        vec![
            DocumentKind::ApprovalForm,
            DocumentKind::LetterRequestApproved
        ]
    );
    assert_eq!(approved.documents[0].number, "001/FPSC/DISKOMINFO/2026");
    assert_eq!(approved.documents[1].number, "002/555/DISKOMINFO/2026");
    let form2 = env
        .app
        .document(&approved.documents[0].number)
        .await
        .expect("form 2");
    assert!(form2.html.contains("FORMULIR PERSETUJUAN COLOCATION"));
    assert!(form2.html.contains("disetujui Kepala Dinas"));
    assert!(
        form2.html.contains("rak R02, U1–U2"),
        "placement of the web server"
    );
    assert!(!form2.html.contains(PASSWORD));
    assert_eq!(
        form2.content_hash,
        blake3::hash(form2.html.as_bytes()).to_hex().to_string()
    );

    env.complete(KABID, id, 6).await;
    env.app
        .record_handover_observation(
            PETUGAS,
            id,
            vec![
                ObservedServer {
                    serial_number: Some("CN7016389F0012".into()),
                    ram: Some("32 GB".into()),
                    ..ObservedServer::default()
                },
                ObservedServer {
                    name: Some("SIMKES-DB-01".into()),
                    processor: Some("intel xeon silver 4214".into()),
                    ip_addresses: Some(vec!["10.10.20.6".into()]),
                    ..ObservedServer::default()
                },
            ],
            env.now(),
        )
        .await
        .expect("observation");
    let handed = env.complete(PETUGAS, id, 7).await;
    assert_eq!(handed.servers.len(), 2);
    assert_eq!(handed.documents.len(), 1);
    assert_eq!(handed.documents[0].kind, DocumentKind::HandoverForm);
    let web = &handed.servers[0];
    assert_eq!(web.status, ServerStatus::Active);
    assert_eq!(
        web.hardware.ram, "32 GB",
        "the register holds what is in the room"
    );
    assert_eq!(web.rack_id, Some(env.racks[1].id));
    assert_eq!(web.u_position, Some(1));
    assert_eq!(web.noc.as_deref(), Some("NOC-1"));
    assert_eq!(web.domain.as_deref(), Some("simkes.jatengprov.go.id"));
    assert!(web.host_admin_secret_id.is_some());
    assert_eq!(handed.servers[1].u_position, Some(3));

    let mismatches = env.app.server_mismatches(web.id).await.expect("mismatches");
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].mismatch.field, "ram");
    assert_eq!(mismatches[0].mismatch.declared.as_deref(), Some("64 GB"));
    assert_eq!(mismatches[0].mismatch.observed.as_deref(), Some("32 GB"));
    let form3 = env
        .app
        .document(&handed.documents[0].number)
        .await
        .expect("form 3");
    assert!(
        form3
            .html
            .contains("Hasil Pengecekan Kesesuaian Spesifikasi Server")
    );
    assert!(form3.html.contains("Ditemukan 1 ketidaksesuaian"));
    assert!(
        form3.html.contains("Rudi Hartono, S.Kom."),
        "the receiving officer"
    );
    assert!(
        form3.html.contains("19750812 200003 2 004"),
        "the handing person's NIP"
    );

    let allocations = env.app.live_allocations().await.expect("allocations");
    let active: Vec<_> = allocations
        .iter()
        .filter(|allocation| allocation.request_id == Some(id))
        .collect();
    assert_eq!(active.len(), 2);
    assert!(
        active
            .iter()
            .all(|a| a.status == AllocationStatus::Active && a.server_id.is_some())
    );
    assert_eq!(
        kinds(&env, id).await,
        vec![
            DocumentKind::ApprovalForm,
            DocumentKind::LetterRequestApproved,
            DocumentKind::HandoverForm
        ]
    );
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 5, 6, 7]).await;
}

pub(crate) async fn colocation_capacity_unavailable(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env
        .colocation_at_step_4(vec![Env::server("big-storage", "SN-BIG-1", 45, 900, 100)])
        .await;
    let report = env
        .app
        .capacity_report(id)
        .await
        .expect("checked at step 3");
    assert_eq!(report.proposal, Answer::No);
    assert!(
        report
            .reason_en
            .contains("space: largest free block 42 U, 45 U needed"),
        "{}",
        report.reason_en
    );
    assert_error(
        env.try_decide(KASI, id, 4, Answer::Yes, "coba saja").await,
        conflict,
        "capacity is no longer available",
    );
    let letter = env
        .decide(KASI, id, 4, Answer::No, "rak tidak cukup untuk 45 U")
        .await;
    assert_eq!(letter.documents.len(), 1);
    assert_eq!(
        letter.documents[0].kind,
        DocumentKind::LetterCapacityUnavailable
    );
    let html = env
        .app
        .document(&letter.documents[0].number)
        .await
        .expect("letter")
        .html;
    assert!(html.contains("45 U"));
    assert!(html.contains("blok kosong terbesar 42 U, dibutuhkan 45 U"));
    assert!(html.contains("rak tidak cukup untuk 45 U"));
    env.complete(KABID, id, 8).await;
    assert!(
        env.app
            .live_allocations()
            .await
            .expect("allocations")
            .iter()
            .all(|allocation| allocation.request_id != Some(id))
    );
    finished(&env, id, Outcome::CapacityUnavailable, &[1, 2, 3, 4, 8]).await;
}

pub(crate) async fn colocation_rejected_by_the_head_of_agency(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env.colocation_at_step_4(Env::two_servers()).await;
    env.decide(KASI, id, 4, Answer::Yes, "kapasitas tersedia")
        .await;
    let rejected = env
        .decide(KADIN, id, 5, Answer::No, "domain belum diverifikasi")
        .await;
    assert_eq!(rejected.documents.len(), 1);
    assert_eq!(rejected.documents[0].kind, DocumentKind::ApprovalForm);
    let html = env
        .app
        .document(&rejected.documents[0].number)
        .await
        .expect("form 2")
        .html;
    assert!(html.contains("&#9744;</span> menyetujui <span class=\"box\">&#9745;</span> menolak"));
    assert!(html.contains("domain belum diverifikasi"));
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    let allocations = tx.allocations_for_request(id).await.expect("allocations");
    assert_eq!(allocations.len(), 2);
    assert!(
        allocations
            .iter()
            .all(|allocation| allocation.status == AllocationStatus::Released)
    );
    drop(tx);
    finished(&env, id, Outcome::Rejected, &[1, 2, 3, 4, 5]).await;
}

fn backup(env: &Env, server: Option<crate::catalog::ServerId>) -> OpenRequest {
    OpenRequest {
        agency_id: env.dinkes.id,
        subject: "Permintaan back up database SIMKES".into(),
        details: RequestDetails::Backup(BackupApplication {
            server_id: server,
            scope: "/var/www dan database simkes".into(),
            schedule: "harian 02:00".into(),
            retention: "30 hari".into(),
            estimated_size_gb: Some(120),
        }),
    }
}

async fn queued_actions(env: &Env, request: RequestId) -> Vec<String> {
    env.app
        .pending_actions_of(request)
        .await
        .expect("outbox")
        .into_iter()
        .map(|action| format!("{}@{}", action.action, action.step))
        .collect()
}

pub(crate) async fn backup_continued_then_stopped(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let server = env.existing_server("simkes-arsip", "SN-ARS-1").await;
    let id = env
        .open(SKPD, "backup_request", backup(&env, Some(server.id)))
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    // Completing B2 without a plan is refused: B3 would have nothing to run.
    assert_error(
        env.try_complete(KASI, id, 2).await,
        conflict,
        "no backup plan yet",
    );
    env.backup_plan(id).await;
    let started = env.complete(KASI, id, 2).await;
    assert_eq!(
        started.queued.len(),
        1,
        "entering B3 queues start_backup_plan"
    );
    env.complete(PETUGAS, id, 3).await;
    let continued = env
        .decide(KASI, id, 4, Answer::Yes, "data bertambah setiap hari")
        .await;
    assert_eq!(
        continued.queued.len(),
        1,
        "entering B5 queues start_backup_plan"
    );
    env.complete(PETUGAS, id, 5).await;
    // B6 waits for the agency's stop letter; its time runs from the letter's arrival.
    env.app
        .submit(
            ADMIN,
            id,
            Event::Attach {
                step: StepNumber(6),
                document: DocumentRef::from("surat-skpd-045/2026"),
            },
            env.now(),
        )
        .await
        .expect("the administration attaches the incoming letter");
    env.complete(KADIN, id, 6).await;
    env.complete(PETUGAS, id, 7).await;
    let stopped = env.app.request(id).await.expect("request");
    assert_eq!(stopped.state.current_step(), Some(StepNumber(8)));
    assert_eq!(
        kinds(&env, id).await,
        vec![DocumentKind::LetterBackupStopped]
    );
    let letter = env.app.documents_of(id).await.expect("documents").remove(0);
    assert!(letter.html.contains("Pemberitahuan Penghentian Back up"));
    assert!(letter.html.contains("simkes-arsip (S/N SN-ARS-1)"));
    env.complete(KABID, id, 8).await;
    assert_eq!(
        queued_actions(&env, id).await,
        vec![
            "start_backup_plan@3",
            "start_backup_plan@5",
            "stop_backup_plan@7"
        ]
    );
    let record = env.app.request(id).await.expect("request");
    assert_eq!(
        record.state.steps[5].documents.len(),
        1,
        "B6 holds the stop letter"
    );
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 5, 6, 7, 8]).await;
}

pub(crate) async fn backup_not_continued(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env
        .open(SKPD, "backup_request", backup(&env, None))
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    env.backup_plan(id).await;
    env.complete(KASI, id, 2).await;
    env.complete(PETUGAS, id, 3).await;
    env.decide(KASI, id, 4, Answer::No, "cukup satu kali back up")
        .await;
    env.complete(KADIN, id, 6).await;
    env.complete(PETUGAS, id, 7).await;
    env.complete(KABID, id, 8).await;
    assert_eq!(
        queued_actions(&env, id).await,
        vec!["start_backup_plan@3", "stop_backup_plan@7"]
    );
    assert_eq!(
        kinds(&env, id).await,
        vec![DocumentKind::LetterBackupStopped]
    );
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 6, 7, 8]).await;
}

fn restore(env: &Env) -> OpenRequest {
    OpenRequest {
        agency_id: env.dinkes.id,
        subject: "Permintaan restore database SIMKES".into(),
        details: RequestDetails::Restore(RestoreApplication {
            server_id: None,
            backup_request: None,
            restore_point: "2026-02-28 02:00".into(),
            target: "server simkes-db-01".into(),
            reason: "data terhapus tidak sengaja".into(),
        }),
    }
}

async fn restore_at_step_3(env: &Env) -> RequestId {
    let id = env
        .open(SKPD, "restore_request", restore(env))
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    // The restore plan is written at C2, which KASI_INFRAS or PETUGAS may complete.
    env.restore_plan(id, vec![FallbackStep::Replica], env.now())
        .await;
    env.complete(PETUGAS, id, 2).await;
    id
}

pub(crate) async fn restore_rejected(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = restore_at_step_3(&env).await;
    env.decide(KABID, id, 3, Answer::No, "titik restore tidak tersedia")
        .await;
    assert!(queued_actions(&env, id).await.is_empty());
    assert!(kinds(&env, id).await.is_empty());
    finished(&env, id, Outcome::Rejected, &[1, 2, 3]).await;
}

pub(crate) async fn the_restore_of_a_gone_daemon_is_taken_back_at_once(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = restore_at_step_3(&env).await;
    env.decide(KABID, id, 3, Answer::Yes, "rencana restore disetujui")
        .await;
    let now = env.now();
    env.app
        .advance_restore_requests("dead", now)
        .await
        .expect("advance");
    let claim = |owner: &'static str, at| {
        let app = env.app.clone();
        async move {
            app.claim_restore(
                owner,
                TimeDelta::minutes(10),
                at,
                &|_| true,
                TimeDelta::minutes(5),
            )
            .await
            .expect("claim")
        }
    };
    let held = claim("dead", now).await.expect("a restore is queued");
    let restarted = now + TimeDelta::minutes(1);
    assert!(
        claim("alive", restarted).await.is_none(),
        "the lease holds until it is taken back"
    );
    assert_eq!(
        env.app
            .take_back_work_of_gone_daemons("alive", restarted)
            .await
            .expect("take back"),
        (0, 1)
    );
    let taken = claim("alive", restarted + TimeDelta::seconds(1))
        .await
        .expect("taken over at the next claim");
    assert_eq!((taken.id, taken.attempts), (held.id, 2));
    assert!(
        !env.app
            .renew_restore_lease(held.id, "dead", TimeDelta::minutes(10), restarted)
            .await
            .expect("renew"),
        "the gone holder's lease is over"
    );
}

pub(crate) async fn restore_succeeds_first_time(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = restore_at_step_3(&env).await;
    env.decide(KABID, id, 3, Answer::Yes, "rencana restore disetujui")
        .await;
    // The system restores; until the restore has ended C4 is not the officer's to close.
    env.app
        .advance_restore_requests("test", env.now())
        .await
        .expect("advance");
    assert_error(
        env.try_complete(PETUGAS, id, 4).await,
        conflict,
        "has not ended",
    );
    env.run_restores(&["ok"], env.now()).await;
    // C4 completed and C5 answered "yes" by the system from the verification.
    let view = env.app.request(id).await.expect("request");
    assert_eq!(view.state.current_step(), Some(StepNumber(7)));
    let c5 = &view.state.steps[4];
    assert_eq!(c5.decision, Some(Answer::Yes));
    assert!(
        c5.actor
            .as_ref()
            .is_some_and(|actor| actor.0.starts_with("system:")),
        "{c5:?}"
    );
    assert!(
        c5.reason
            .as_deref()
            .unwrap_or("")
            .contains("all 3 file(s) verified")
    );
    let letter = env
        .app
        .documents_of(id)
        .await
        .expect("documents")
        .into_iter()
        .find(|document| document.kind == DocumentKind::LetterRestoreResult)
        .expect("the C7 letter");
    let html = env.app.document(&letter.number).await.expect("letter").html;
    assert!(html.contains("seluruh berkas terverifikasi"), "{html}");
    assert!(html.contains("tidak diperlukan"), "no fallback step ran");
    let issued: Vec<DocumentKind> = env
        .app
        .documents_of(id)
        .await
        .expect("documents")
        .into_iter()
        .map(|document| document.kind)
        .collect();
    assert!(
        issued.contains(&DocumentKind::RestoreExecutionForm),
        "C7 fills the form: {issued:?}"
    );
    env.complete(KASI, id, 7).await;
    assert_eq!(
        queued_actions(&env, id).await,
        vec!["run_restore@4", "verify_restore@5"]
    );
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 5, 7]).await;
}

pub(crate) async fn restore_falls_back_then_confirms(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = restore_at_step_3(&env).await;
    env.decide(KABID, id, 3, Answer::Yes, "rencana restore disetujui")
        .await;
    // The primary restore fails verification: C5 is "no" (an officer may not say "yes"
    // over it), C6 restores again reading damaged chunks from the replica.
    env.run_restores(&["verify_differences"], env.now()).await;
    let view = env.app.request(id).await.expect("request");
    assert_eq!(view.state.current_step(), Some(StepNumber(6)));
    assert_eq!(view.state.steps[4].decision, Some(Answer::No));
    assert!(
        view.state.steps[4]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("/srv/db/base.dat"),
        "the failed file is named"
    );
    assert_error(
        env.try_complete(PETUGAS, id, 6).await,
        conflict,
        "still running",
    );
    env.end_next_restore("ok", env.now()).await;
    env.app
        .advance_restore_requests("test", env.now())
        .await
        .expect("advance");
    let letter = env
        .app
        .documents_of(id)
        .await
        .expect("documents")
        .into_iter()
        .find(|document| document.kind == DocumentKind::LetterRestoreResult)
        .expect("the C7 letter");
    let html = env.app.document(&letter.number).await.expect("letter").html;
    assert!(
        html.contains("setelah langkah pemulihan"),
        "the letter tells the fallback: {html}"
    );
    assert!(html.contains("replika"), "{html}");
    // The restore execution form: the approved plan, both attempts, the file the first
    // one failed on, and the times.
    let form = env
        .app
        .documents_of(id)
        .await
        .expect("documents")
        .into_iter()
        .find(|document| document.kind == DocumentKind::RestoreExecutionForm)
        .expect("the C7 form");
    assert!(form.number.contains("/FPRD/"), "{}", form.number);
    let html = env.app.document(&form.number).await.expect("form").html;
    for expected in [
        "FORMULIR PELAKSANAAN RESTORE DATA BACK UP",
        "data terhapus tidak sengaja",
        "Langkah pemulihan (C6)",
        "restore utama",
        "baca chunk rusak dari replika",
        "/srv/db/base.dat",
        "tidak berhasil (verify differences)",
        "setelah langkah pemulihan",
        "Standar Waktu",
        "Mengetahui,",
    ] {
        assert!(html.contains(expected), "form lacks {expected}: {html}");
    }
    env.complete(PETUGAS, id, 7).await;
    assert_eq!(
        queued_actions(&env, id).await,
        vec!["run_restore@4", "verify_restore@5", "fallback_restore@6"]
    );
    let attempts = env
        .app
        .restore_request_for(&crate::app::tests::plans::caller(&env, KASI).await, id)
        .await
        .expect("view");
    let labels: Vec<Option<&str>> = attempts
        .attempts
        .iter()
        .map(|attempt| attempt.attempt.as_deref())
        .collect();
    assert_eq!(labels, [Some("primary"), Some("replica")]);
    assert!(attempts.attempts[1].use_replica);
    assert_eq!(attempts.state, "verified");
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 5, 6, 7]).await;
}

pub(crate) async fn a_restore_whose_agent_stays_away_falls_back_to_the_alternate_target(
    catalog: Catalog,
) {
    let env = Env::new(catalog).await;
    let id = env
        .open(SKPD, "restore_request", restore(&env))
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    let spare = env.existing_server("simkes-spare-01", "SN-SPARE-01").await;
    let (_, token) = env
        .app
        .create_enrollment_token(PETUGAS, spare.id, None, env.now())
        .await
        .expect("an enrolment token");
    env.app
        .enroll_agent(token.expose(), "simkes-spare", "test", env.now())
        .await
        .expect("the spare's agent enrols");
    env.restore_plan(
        id,
        vec![FallbackStep::AlternateTarget {
            server: spare.id,
            dir: "/srv/pulih".into(),
        }],
        env.now(),
    )
    .await;
    env.complete(PETUGAS, id, 2).await;
    env.decide(KABID, id, 3, Answer::Yes, "rencana restore disetujui")
        .await;
    // The env's clock moves ten minutes a call: the rest counts from one instant.
    let queued = env.now();
    env.app
        .advance_restore_requests("test", queued)
        .await
        .expect("advance");

    // Only the spare's agent is connected. Within the wait the restore stays queued.
    let wait = TimeDelta::minutes(5);
    let lease = TimeDelta::minutes(5);
    let only_spare = |server: crate::catalog::ServerId| server == spare.id;
    let caller = crate::app::tests::plans::caller(&env, KASI).await;
    let soon = queued + TimeDelta::minutes(4);
    assert!(
        env.app
            .claim_restore("test", lease, soon, &only_spare, wait)
            .await
            .expect("claim")
            .is_none()
    );
    let view = env
        .app
        .restore_request_for(&caller, id)
        .await
        .expect("view");
    assert_eq!(view.attempts[0].status, "queued");

    // Past it, the attempt fails with the reason; C5 is "no" and C6 restores to the
    // alternate target, whose agent is there.
    let later = queued + TimeDelta::minutes(6);
    assert!(
        env.app
            .claim_restore("test", lease, later, &only_spare, wait)
            .await
            .expect("claim")
            .is_none()
    );
    let view = env
        .app
        .restore_request_for(&caller, id)
        .await
        .expect("view");
    assert_eq!(view.attempts[0].status, "failed");
    let error = view.attempts[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("did not connect within 5 minute(s)") && error.contains("simkes-db-"),
        "{error}"
    );
    env.app
        .advance_restore_requests("test", later)
        .await
        .expect("advance");
    let request = env.app.request(id).await.expect("request");
    assert_eq!(request.state.current_step(), Some(StepNumber(6)));
    assert_eq!(request.state.steps[4].decision, Some(Answer::No));
    let claimed = env
        .app
        .claim_restore("test", lease, later, &only_spare, wait)
        .await
        .expect("claim")
        .expect("the alternate attempt is claimed where its agent is");
    assert_eq!(claimed.target_server_id, spare.id);
    assert_eq!(claimed.attempt.as_deref(), Some("alternate_target"));
    let end = crate::app::RestoreEnd {
        status: "ok".to_owned(),
        stats_json: serde_json::json!({
            "snapshot": "ab".repeat(32), "files_verified": 3, "files_failed": 0,
        })
        .to_string(),
        error: None,
    };
    assert!(
        env.app
            .finish_restore(claimed.id, "test", &end, later)
            .await
            .expect("finish")
    );
    env.app
        .advance_restore_requests("test", later)
        .await
        .expect("advance");
    let view = env
        .app
        .restore_request_for(&caller, id)
        .await
        .expect("view");
    assert_eq!(view.state, "verified");
    assert_eq!(
        env.app
            .request(id)
            .await
            .expect("request")
            .state
            .current_step(),
        Some(StepNumber(7))
    );
    env.assert_audit_intact().await;
}

fn withdrawal(env: &Env, server: crate::catalog::ServerId) -> OpenRequest {
    OpenRequest {
        agency_id: env.dinkes.id,
        subject: "Permohonan penarikan server SIMKES".into(),
        details: RequestDetails::Withdrawal(WithdrawalApplication {
            server_id: server,
            reason: "aplikasi dipindahkan ke cloud pemerintah".into(),
        }),
    }
}

pub(crate) async fn withdrawal_approved(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let (_, servers) = env.handed_over().await;
    let web = servers[0].clone();
    let id = env
        .open(SKPD, "colocation_withdrawal", withdrawal(&env, web.id))
        .await
        .expect("open")
        .request
        .id;
    assert_eq!(
        env.app.request(id).await.expect("view").server_id,
        Some(web.id)
    );
    env.complete(KADIN, id, 1).await;
    env.complete(KASI, id, 2).await;
    let approved = env
        .decide(
            KABID,
            id,
            3,
            Answer::Yes,
            "seluruh syarat penarikan terpenuhi",
        )
        .await;
    assert_eq!(approved.documents[0].kind, DocumentKind::WithdrawalForm);
    let form4 = env
        .app
        .document(&approved.documents[0].number)
        .await
        .expect("form 4")
        .html;
    assert!(form4.html_contains_all(&[
        "permohonan penarikan colocation",
        "CN7016389F0012",
        "PowerEdge R740 / Dell",
        "seluruh syarat penarikan terpenuhi",
    ]));
    let withdrawn = env.complete(PETUGAS, id, 4).await;
    assert_eq!(withdrawn.servers[0].status, ServerStatus::Withdrawn);
    assert!(withdrawn.servers[0].withdrawn_at.is_some());
    assert_eq!(
        withdrawn.documents[0].kind,
        DocumentKind::LetterWithdrawalDone
    );
    assert!(
        env.app
            .live_allocations()
            .await
            .expect("allocations")
            .iter()
            .all(|allocation| allocation.server_id != Some(web.id)),
        "the withdrawn server's capacity is free again"
    );
    env.complete(KABID, id, 5).await;
    // A withdrawn server cannot be withdrawn twice.
    assert_error(
        env.open(SKPD, "colocation_withdrawal", withdrawal(&env, web.id))
            .await,
        conflict,
        "is already withdrawn",
    );
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 5]).await;
}

pub(crate) async fn withdrawal_rejected(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let (_, servers) = env.handed_over().await;
    let id = env
        .open(
            SKPD,
            "colocation_withdrawal",
            withdrawal(&env, servers[0].id),
        )
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    env.complete(KASI, id, 2).await;
    let refused = env
        .decide(KABID, id, 3, Answer::No, "masih ada kontrak layanan aktif")
        .await;
    assert_eq!(
        refused.documents[0].kind,
        DocumentKind::LetterWithdrawalRejected
    );
    let html = env
        .app
        .document(&refused.documents[0].number)
        .await
        .expect("letter")
        .html;
    assert!(html.contains("masih ada kontrak layanan aktif"));
    env.complete(KABID, id, 6).await;
    assert_eq!(
        env.app.server(servers[0].id).await.expect("server").status,
        ServerStatus::Active
    );
    finished(&env, id, Outcome::Rejected, &[1, 2, 3, 6]).await;
}

pub(crate) async fn maintenance_loops_until_confirmed(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let server = env.existing_server("simkes-arsip", "SN-ARS-1").await;
    let id = env
        .open(
            SKPD,
            "maintenance_request",
            OpenRequest {
                agency_id: env.dinkes.id,
                subject: "Server arsip sering mati".into(),
                details: RequestDetails::Maintenance(MaintenanceApplication {
                    server_id: Some(server.id),
                    description: "server restart sendiri setiap malam".into(),
                }),
            },
        )
        .await
        .expect("open")
        .request
        .id;
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    let record = tx
        .maintenance_for_request(id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(record.status, "open");
    assert_eq!(record.server_id, Some(server.id));
    drop(tx);
    env.complete(KASI, id, 1).await;
    env.app
        .submit(
            PETUGAS,
            id,
            Event::Complete {
                step: StepNumber(2),
                note: Some("kipas PSU rusak".into()),
                documents: vec![],
            },
            env.now(),
        )
        .await
        .expect("assessment");
    env.complete(PETUGAS, id, 3).await;
    env.decide(SKPD, id, 4, Answer::No, "masih restart sekali")
        .await;
    env.complete(PETUGAS, id, 3).await;
    let closing = env.decide(SKPD, id, 4, Answer::Yes, "sudah stabil").await;
    assert_eq!(closing.documents[0].kind, DocumentKind::MaintenanceReport);
    let html = env
        .app
        .document(&closing.documents[0].number)
        .await
        .expect("report")
        .html;
    assert!(html.contains("Langkah 2: kipas PSU rusak"));
    assert!(html.contains("Langkah 4: masih restart sekali"));
    env.complete(KASI, id, 5).await;
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    let record = tx
        .maintenance_for_request(id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(record.status, "closed");
    assert!(record.closed_at.is_some());
    drop(tx);
    finished(&env, id, Outcome::Completed, &[1, 2, 3, 4, 3, 4, 5]).await;
}

pub(crate) async fn cancel_releases_the_reservation(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env.colocation_at_step_4(Env::two_servers()).await;
    env.decide(KASI, id, 4, Answer::Yes, "kapasitas tersedia")
        .await;
    assert_error(
        env.app
            .submit(
                PETUGAS,
                id,
                Event::Cancel {
                    reason: "salah input".into(),
                },
                env.now(),
            )
            .await,
        forbidden,
        "only KADIN or ADMIN may cancel this request",
    );
    env.app
        .submit(
            KADIN,
            id,
            Event::Cancel {
                reason: "SKPD membatalkan permohonan".into(),
            },
            env.now(),
        )
        .await
        .expect("cancel");
    let view = env.app.request(id).await.expect("view");
    assert!(view.state.steps.last().expect("record").cancelled);
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    assert!(
        tx.allocations_for_request(id)
            .await
            .expect("allocations")
            .iter()
            .all(|allocation| allocation.status == AllocationStatus::Released)
    );
    drop(tx);
    let trail = env
        .app
        .audit_trail("request", &id.to_string())
        .await
        .expect("trail");
    assert!(trail.iter().any(|row| row.action == "capacity.release"));
    finished(&env, id, Outcome::Cancelled, &[1, 2, 3, 4, 5]).await;
}

/// `str::contains` for several needles, with a readable failure.
trait ContainsAll {
    fn html_contains_all(&self, needles: &[&str]) -> bool;
}

impl ContainsAll for String {
    fn html_contains_all(&self, needles: &[&str]) -> bool {
        for needle in needles {
            assert!(self.contains(needle), "missing `{needle}`");
        }
        true
    }
}
