//! What must be refused, with a clear message and nothing written: wrong roles, another
//! agency's SKPD, missing reasons, events on finished requests or other steps, data that
//! does not fit, bad IPs and domains, a handover without observation — and the revision
//! rules: a request finishes under the revision it started with.

use crate::app::tests::*;
use crate::app::{
    App, BackupApplication, MaintenanceApplication, ObservedServer, OpenRequest, RequestDetails,
    RestoreApplication, Validity, WithdrawalApplication,
};
use crate::catalog::{Catalog, RequestId, ServerId};
use crate::workflow::{Answer, Event, Revision, StepNumber};

async fn audit_rows(env: &Env) -> i64 {
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    tx.count_audit_rows().await.expect("count")
}

pub(crate) async fn wrong_roles_are_forbidden(catalog: Catalog) {
    let env = Env::new(catalog).await;
    assert_error(
        env.open(
            PETUGAS,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await,
        forbidden,
        "only SKPD, KADIN or ADMIN may start this request (you hold: PETUGAS)",
    );
    let id = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .expect("open")
        .request
        .id;
    let rows = audit_rows(&env).await;
    assert_error(
        env.try_complete(PETUGAS, id, 1).await,
        forbidden,
        "only KADIN may act on step 1 (you hold: PETUGAS)",
    );
    assert_error(
        env.try_complete(SKPD, id, 1).await,
        forbidden,
        "only KADIN may act on step 1",
    );
    env.complete(KADIN, id, 1).await;
    env.complete(KASI, id, 2).await;
    env.complete(PETUGAS, id, 3).await;
    assert_error(
        env.try_decide(KADIN, id, 4, Answer::Yes, "saya setujui")
            .await,
        forbidden,
        "only KASI_INFRAS may act on step 4",
    );
    assert_error(
        env.app
            .submit(
                SKPD,
                id,
                Event::Attach {
                    step: StepNumber(4),
                    document: "x".into(),
                },
                env.now(),
            )
            .await,
        forbidden,
        "only KASI_INFRAS or ADMIN may act on step 4",
    );
    assert_eq!(
        audit_rows(&env).await,
        rows + 4,
        "only the three accepted events and the capacity check entering step 3"
    );
    env.assert_audit_intact().await;
}

pub(crate) async fn skpd_acts_only_for_its_own_agency(catalog: Catalog) {
    let env = Env::new(catalog).await;
    assert_error(
        env.open(
            SKPD_OTHER,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await,
        forbidden,
        "`skpd.kendal` is an SKPD account of agency",
    );
    let server = env.existing_server("simkes-arsip", "SN-ARS-1").await;
    let id = env
        .open(
            SKPD,
            "maintenance_request",
            OpenRequest {
                agency_id: env.dinkes.id,
                subject: "Server arsip".into(),
                details: RequestDetails::Maintenance(MaintenanceApplication {
                    server_id: Some(server.id),
                    description: "disk penuh".into(),
                }),
            },
        )
        .await
        .expect("open")
        .request
        .id;
    env.complete(KASI, id, 1).await;
    env.complete(PETUGAS, id, 2).await;
    env.complete(PETUGAS, id, 3).await;
    assert_error(
        env.try_decide(SKPD_OTHER, id, 4, Answer::Yes, "beres")
            .await,
        forbidden,
        "cannot act on a request of agency",
    );
    env.decide(SKPD, id, 4, Answer::Yes, "beres").await;
}

pub(crate) async fn decisions_need_a_reason(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env.colocation_at_step_4(Env::two_servers()).await;
    let before = env.app.request(id).await.expect("view");
    let rows = audit_rows(&env).await;
    assert_error(
        env.try_decide(KASI, id, 4, Answer::Yes, "   ").await,
        invalid,
        "a reason is required to act on step 4",
    );
    assert_error(
        env.app
            .submit(
                KADIN,
                id,
                Event::Cancel {
                    reason: String::new(),
                },
                env.now(),
            )
            .await,
        invalid,
        "a reason is required to cancel this request",
    );
    let after = env.app.request(id).await.expect("view");
    assert_eq!(after.version, before.version);
    assert_eq!(after.state, before.state);
    assert_eq!(audit_rows(&env).await, rows);
    assert!(
        env.app
            .live_allocations()
            .await
            .expect("allocations")
            .iter()
            .all(|allocation| allocation.request_id != Some(id)),
        "a refused yes reserves nothing"
    );
}

pub(crate) async fn events_on_finished_requests_conflict(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env
        .open(SKPD, "restore_request", restore(&env))
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, id, 1).await;
    env.complete(KASI, id, 2).await;
    env.decide(KABID, id, 3, Answer::No, "tidak ada back up")
        .await;
    let rows = audit_rows(&env).await;
    assert_error(
        env.try_complete(PETUGAS, id, 4).await,
        conflict,
        "the request is finished (rejected) and can no longer change",
    );
    assert_error(
        env.app
            .submit(
                KADIN,
                id,
                Event::Cancel {
                    reason: "batal".into(),
                },
                env.now(),
            )
            .await,
        conflict,
        "finished",
    );
    assert_error(
        env.try_decide(KABID, id, 3, Answer::Yes, "ubah keputusan")
            .await,
        conflict,
        "finished",
    );
    assert_eq!(audit_rows(&env).await, rows);
}

pub(crate) async fn events_on_other_steps_conflict(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .expect("open")
        .request
        .id;
    assert_error(
        env.try_complete(KASI, id, 2).await,
        conflict,
        "step 2 is not the current step (the request waits on step 1)",
    );
    env.complete(KADIN, id, 1).await;
    env.complete(KASI, id, 2).await;
    env.complete(PETUGAS, id, 3).await;
    assert_error(
        env.try_complete(KASI, id, 4).await,
        invalid,
        "step 4 is a decision step",
    );
    env.decide(KASI, id, 4, Answer::Yes, "ok").await;
    assert_error(
        env.try_decide(KADIN, id, 5, Answer::Yes, "").await,
        invalid,
        "a reason is required",
    );
    assert_error(
        env.app
            .submit(KASI, RequestId(9999), Event::complete(1), env.now())
            .await,
        not_found,
        "request 9999 does not exist",
    );
}

fn restore(env: &Env) -> OpenRequest {
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
    }
}

pub(crate) async fn application_data_must_fit_the_procedure(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let backup = OpenRequest {
        agency_id: env.dinkes.id,
        subject: "x".into(),
        details: RequestDetails::Backup(BackupApplication {
            server_id: None,
            scope: "a".into(),
            schedule: "b".into(),
            retention: "c".into(),
            estimated_size_gb: None,
        }),
    };
    assert_error(
        env.open(SKPD, "colocation_handover", backup.clone()).await,
        invalid,
        "procedure colocation_handover needs a colocation application, not a backup one",
    );
    assert_error(
        env.open(SKPD, "hosting_request", backup.clone()).await,
        not_found,
        "no procedure `hosting_request` is loaded",
    );
    let mut empty_scope = backup.clone();
    if let RequestDetails::Backup(details) = &mut empty_scope.details {
        details.scope = "  ".into();
    }
    assert_error(
        env.open(SKPD, "backup_request", empty_scope).await,
        invalid,
        "the backup scope must not be empty",
    );
    let foreign = env
        .app
        .register_server(
            ADMIN,
            crate::app::RegisterServer {
                agency_id: env.kendal.id,
                name: "kendal-web".into(),
                hardware: Env::server("kendal-web", "SN-KDL-1", 1, 100, 0).hardware,
                ip_addresses: vec![],
                domain: None,
                domain_activated_on: None,
                placement: None,
                uplink_id: None,
                u_size: 1,
                power_draw_w: 100,
                bandwidth_mbps: 0,
                validity: Validity::Permanent,
                host_admin_user: None,
                host_admin_password: None,
                contact: None,
            },
            env.now(),
        )
        .await
        .expect("server of another agency");
    assert_error(
        env.open(
            SKPD,
            "colocation_withdrawal",
            OpenRequest {
                agency_id: env.dinkes.id,
                subject: "tarik".into(),
                details: RequestDetails::Withdrawal(WithdrawalApplication {
                    server_id: foreign.id,
                    reason: "x".into(),
                }),
            },
        )
        .await,
        invalid,
        "belongs to another agency",
    );
    assert_error(
        env.open(
            SKPD,
            "colocation_withdrawal",
            OpenRequest {
                agency_id: env.dinkes.id,
                subject: "tarik".into(),
                details: RequestDetails::Withdrawal(WithdrawalApplication {
                    server_id: ServerId(777),
                    reason: "x".into(),
                }),
            },
        )
        .await,
        not_found,
        "server 777 does not exist",
    );
    let mut past = env.colocation(Env::two_servers());
    if let RequestDetails::Colocation(application) = &mut past.details {
        application.validity = Validity::Temporary {
            until: chrono::NaiveDate::from_ymd_opt(2025, 12, 31).expect("date"),
        };
    }
    assert_error(
        env.open(SKPD, "colocation_handover", past).await,
        invalid,
        "must last until a future date",
    );
    let mut none = env.colocation(vec![]);
    assert_error(
        env.open(SKPD, "colocation_handover", none.clone()).await,
        invalid,
        "at least one server",
    );
    if let RequestDetails::Colocation(application) = &mut none.details {
        application.servers = vec![
            Env::server("dup", "SN-1", 1, 1, 1),
            Env::server("dup", "SN-2", 1, 1, 1),
        ];
    }
    assert_error(
        env.open(SKPD, "colocation_handover", none).await,
        invalid,
        "two declared servers are named `dup`",
    );
    let mut nameless = env.colocation(vec![Env::server("x", " ", 1, 1, 1)]);
    assert_error(
        env.open(SKPD, "colocation_handover", nameless.clone())
            .await,
        invalid,
        "server 1 (x): the serial number (S/N) must not be empty",
    );
    if let RequestDetails::Colocation(application) = &mut nameless.details {
        application.servers = vec![Env::server("x", "SN-X", 0, 1, 1)];
    }
    assert_error(
        env.open(SKPD, "colocation_handover", nameless).await,
        invalid,
        "height must be 1–60 rack units, not 0",
    );
}

pub(crate) async fn ip_and_domain_errors_are_clear(catalog: Catalog) {
    let env = Env::new(catalog).await;
    for (ip, expected) in [
        (
            "300.1.2.3",
            "server 1 (web-01): `300.1.2.3` is not a valid IP address",
        ),
        ("10.020.30.40", "`10.020.30.40` is not a valid IP address"),
        ("127.0.0.1", "`127.0.0.1` is a loopback address"),
        ("0.0.0.0", "unspecified address"),
    ] {
        let mut server = Env::server("web-01", "SN-1", 1, 100, 10);
        server.ip_addresses = vec![ip.into()];
        assert_error(
            env.open(SKPD, "colocation_handover", env.colocation(vec![server]))
                .await,
            invalid,
            expected,
        );
    }
    for (domain, expected) in [
        ("simkes_jateng.go.id", "`_` is not allowed"),
        ("simkes", "at least two labels"),
        ("-simkes.go.id", "must not start or end with `-`"),
        ("", "the domain name is empty"),
    ] {
        let mut input = env.colocation(vec![Env::server("web-01", "SN-1", 1, 100, 10)]);
        if let RequestDetails::Colocation(application) = &mut input.details {
            application.domain = domain.into();
        }
        assert_error(
            env.open(SKPD, "colocation_handover", input).await,
            invalid,
            expected,
        );
    }
    let id = env.colocation_at_step_4(Env::two_servers()).await;
    env.decide(KASI, id, 4, Answer::Yes, "ok").await;
    env.decide(KADIN, id, 5, Answer::Yes, "ok").await;
    env.complete(KABID, id, 6).await;
    assert_error(
        env.app
            .record_handover_observation(
                PETUGAS,
                id,
                vec![ObservedServer {
                    ip_addresses: Some(vec!["10.1.2.256".into()]),
                    ..ObservedServer::default()
                }],
                env.now(),
            )
            .await,
        invalid,
        "`10.1.2.256` is not a valid IP address",
    );
}

pub(crate) async fn handover_needs_the_observed_specification(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let id = env.colocation_at_step_4(Env::two_servers()).await;
    assert_error(
        env.app
            .record_handover_observation(PETUGAS, id, vec![ObservedServer::default()], env.now())
            .await,
        conflict,
        "is not at the step where the servers are checked",
    );
    env.decide(KASI, id, 4, Answer::Yes, "ok").await;
    env.decide(KADIN, id, 5, Answer::Yes, "ok").await;
    env.complete(KABID, id, 6).await;
    assert_error(
        env.try_complete(PETUGAS, id, 7).await,
        invalid,
        "enter the observed specification of the servers",
    );
    assert_error(
        env.app
            .record_handover_observation(KASI, id, vec![ObservedServer::default()], env.now())
            .await,
        forbidden,
        "only PETUGAS may record what was observed",
    );
    assert_error(
        env.app
            .record_handover_observation(PETUGAS, id, vec![], env.now())
            .await,
        invalid,
        "at least one observed server",
    );
    // The refused completion consumed no document number and changed nothing.
    let view = env.app.request(id).await.expect("view");
    assert_eq!(view.state.current_step(), Some(StepNumber(7)));
    env.app
        .record_handover_observation(
            PETUGAS,
            id,
            vec![ObservedServer {
                serial_number: Some("CN7016389F0012".into()),
                ..ObservedServer::default()
            }],
            env.now(),
        )
        .await
        .expect("observation");
    let done = env.complete(PETUGAS, id, 7).await;
    assert_eq!(done.documents[0].number, "003/FSTC/DISKOMINFO/2026");
    assert_eq!(
        done.servers.len(),
        1,
        "only the delivered server is registered"
    );
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    let mismatches = tx.mismatches_for_request(id).await.expect("mismatches");
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].mismatch.server_name, "simkes-db-01");
    assert_eq!(mismatches[0].mismatch.field, "presence");
    let allocations = tx.allocations_for_request(id).await.expect("allocations");
    assert_eq!(
        allocations
            .iter()
            .map(|allocation| (allocation.server_name.as_str(), allocation.status))
            .collect::<Vec<_>>(),
        vec![
            ("simkes-web-01", crate::catalog::AllocationStatus::Active),
            ("simkes-db-01", crate::catalog::AllocationStatus::Released),
        ],
        "the undelivered server gives its reservation back"
    );
}

/// Revision 3 of the restore procedure: step 3 is decided by the Head of Agency instead
/// of the Head of Division.
fn restore_r3() -> String {
    let text = sop_file("restore_request.r2.toml");
    let revised = text.replacen("revision = 2", "revision = 3", 1).replacen(
        "roles = [\"KABID_TIK\"]\ninputs = [{ id = \"Berita acara Klarifikasi\"",
        "roles = [\"KADIN\"]\ninputs = [{ id = \"Berita acara Klarifikasi\"",
        1,
    );
    assert_ne!(
        revised,
        text.replacen("revision = 2", "revision = 3", 1),
        "step 3 changed"
    );
    revised
}

pub(crate) async fn revision_2_finishes_after_revision_3_is_loaded(catalog: Catalog) {
    let env = Env::new(catalog.clone()).await;
    let old = env
        .open(SKPD, "restore_request", restore(&env))
        .await
        .expect("open")
        .request
        .id;
    env.complete(KADIN, old, 1).await;
    env.restore_plan(old, Vec::new(), env.now()).await;
    env.complete(KASI, old, 2).await;

    assert_error(
        env.app
            .load_definition(KASI, "restore_request.r3.toml", &restore_r3(), env.now())
            .await,
        forbidden,
        "only ADMIN may load procedure definitions",
    );
    env.app
        .load_definition(ADMIN, "restore_request.r3.toml", &restore_r3(), env.now())
        .await
        .expect("revision 3 loads");
    let registry = env.app.registry();
    let latest = registry
        .latest(&"restore_request".into())
        .expect("restore is loaded");
    assert_eq!(latest.revision(), Revision(3));

    // The request in flight keeps revision 2's rules.
    assert_error(
        env.try_decide(KADIN, old, 3, Answer::Yes, "setuju").await,
        forbidden,
        "only KABID_TIK may act on step 3",
    );
    env.decide(KABID, old, 3, Answer::Yes, "setuju").await;
    env.run_restores(&["ok"], env.now()).await;
    env.complete(KASI, old, 7).await;
    let finished = env.app.request(old).await.expect("view");
    assert_eq!(finished.state.revision, Revision(2));
    assert!(finished.state.is_finished());

    // A new request starts under revision 3.
    let new = env
        .open(SKPD, "restore_request", restore(&env))
        .await
        .expect("open");
    assert_eq!(new.request.state.revision, Revision(3));
    let new = new.request.id;
    env.complete(KADIN, new, 1).await;
    env.restore_plan(new, Vec::new(), env.now()).await;
    env.complete(KASI, new, 2).await;
    assert_error(
        env.try_decide(KABID, new, 3, Answer::Yes, "setuju").await,
        forbidden,
        "only KADIN may act on step 3",
    );

    // After a restart with only the files of config/sop, revision 3 comes from the catalog
    // and the new request can go on.
    let restarted = App::open(
        catalog,
        sop_files(),
        test_config(),
        &master_key(),
        env.now(),
    )
    .await
    .expect("reopens");
    assert_eq!(
        restarted
            .registry()
            .latest(&"restore_request".into())
            .expect("loaded")
            .revision(),
        Revision(3)
    );
    restarted
        .submit(
            KADIN,
            new,
            Event::decide(3, Answer::Yes, "setuju"),
            env.now(),
        )
        .await
        .expect("revision 3 rules after the restart");
    env.assert_audit_intact().await;
}

pub(crate) async fn a_changed_revision_is_refused(catalog: Catalog) {
    let env = Env::new(catalog.clone()).await;
    let mut files = sop_files();
    for (name, text) in &mut files {
        if name == "restore_request.r1.toml" {
            *text = text.replacen("time = \"2 jam\"", "time = \"4 jam\"", 1);
        }
    }
    assert_error(
        App::open(
            catalog.clone(),
            files,
            test_config(),
            &master_key(),
            env.now(),
        )
        .await,
        invalid,
        "restore_request r1 differs from the revision stored in the catalog",
    );
    // Loading an identical revision again is a no-op.
    env.app
        .load_definition(
            ADMIN,
            "restore_request.r1.toml",
            &sop_file("restore_request.r1.toml"),
            env.now(),
        )
        .await
        .expect("identical revision");
    assert_error(
        env.app
            .load_definition(ADMIN, "broken.toml", "format = 1\ncode = \"x\"", env.now())
            .await,
        invalid,
        "broken.toml",
    );
}
