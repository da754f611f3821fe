//! The asset register and sealed secrets: the host admin password never reaches the
//! database, a log line or an audit row in clear, and is revealed only to an allowed role
//! through an audited reveal; agent reports and servers predating cadang.

use crate::app::tests::*;
use crate::app::{App, MasterKey, ObservedServer, RegisterServer, SecretString, Validity};
use crate::catalog::{Catalog, SqliteOptions};

pub(crate) async fn passwords_are_sealed_and_revealed_only_with_audit(catalog: Catalog) {
    let env = Env::new(catalog.clone()).await;
    let opened = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .expect("open");
    assert!(
        !format!("{opened:?}").contains(PASSWORD),
        "no secret in Debug output"
    );
    let (_, servers) = env.handed_over().await;
    let web = &servers[0];
    assert!(web.host_admin_secret_id.is_some());
    assert_eq!(web.host_admin_user.as_deref(), Some("root"));

    let mut tx = env.app.catalog().begin_read().await.expect("read");
    for text in tx.all_stored_texts().await.expect("texts") {
        assert!(
            !text.contains(PASSWORD),
            "a stored text holds the password: {text}"
        );
    }
    let sealed = tx.all_sealed_blobs().await.expect("blobs");
    assert_eq!(sealed.len(), 2, "one per request that declared it");
    for blob in &sealed {
        assert!(
            !blob
                .windows(PASSWORD.len())
                .any(|window| window == PASSWORD.as_bytes())
        );
    }
    drop(tx);

    // Not allowed: refused, and the attempt is audited.
    assert_error(
        env.app
            .reveal_host_admin_password(SKPD, web.id, "lupa password", env.now())
            .await,
        forbidden,
        "only KABID_TIK, KASI_INFRAS or PETUGAS may reveal a host admin password",
    );
    assert_error(
        env.app
            .reveal_host_admin_password(PETUGAS, web.id, "  ", env.now())
            .await,
        invalid,
        "the reason for revealing the password must not be empty",
    );
    let secret = env
        .app
        .reveal_host_admin_password(PETUGAS, web.id, "pemeliharaan terjadwal", env.now())
        .await
        .expect("revealed");
    assert_eq!(secret.expose(), PASSWORD);
    assert_eq!(format!("{secret:?}"), "SecretString(<redacted>)");
    let trail = env
        .app
        .audit_trail("server", &web.id.to_string())
        .await
        .expect("trail");
    let actions: Vec<(&str, &str)> = trail
        .iter()
        .map(|row| (row.action.as_str(), row.actor.as_str()))
        .collect();
    assert!(
        actions.contains(&("secret.reveal_denied", SKPD)),
        "{actions:?}"
    );
    assert!(actions.contains(&("secret.reveal", PETUGAS)), "{actions:?}");
    for row in &trail {
        for json in [&row.before_json, &row.after_json].into_iter().flatten() {
            assert!(!json.contains(PASSWORD));
        }
    }
    assert_error(
        env.app
            .reveal_host_admin_password(PETUGAS, servers[1].id, "cek", env.now())
            .await,
        not_found,
        "has no host admin password",
    );

    // A new password replaces the old one, sealed again.
    env.app
        .set_host_admin_password(PETUGAS, web.id, SecretString::new("Baru#2027"), env.now())
        .await
        .expect("replaced");
    assert_eq!(
        env.app
            .reveal_host_admin_password(KASI, web.id, "audit", env.now())
            .await
            .expect("revealed")
            .expose(),
        "Baru#2027"
    );

    // A daemon holding another master key cannot open it.
    let other = App::open(
        catalog,
        sop_files(),
        test_config(),
        &MasterKey::from_bytes([7; 32]),
        env.now(),
    )
    .await
    .expect("opens");
    let error = other
        .reveal_host_admin_password(PETUGAS, web.id, "cek", env.now())
        .await
        .expect_err("another key");
    assert!(
        matches!(error, crate::app::AppError::Internal(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("sealed with key"), "{error}");
    env.assert_audit_intact().await;
}

pub(crate) async fn agent_reports_record_mismatches(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let (_, servers) = env.handed_over().await;
    let web = &servers[0];
    let differences = env
        .app
        .record_agent_observation(
            "simkes-web-01",
            web.id,
            ObservedServer {
                ram: Some("128 GB".into()),
                processor: Some("Intel Xeon Silver 4214".into()),
                ip_addresses: Some(vec!["10.10.20.5".into(), "103.9.227.10".into()]),
                ..ObservedServer::default()
            },
            env.now(),
        )
        .await
        .expect("agent report");
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert_eq!(differences[0].field, "ram");
    let mismatches = env.app.server_mismatches(web.id).await.expect("mismatches");
    let agent: Vec<_> = mismatches
        .iter()
        .filter(|found| found.mismatch.source == crate::catalog::ObservationSource::Agent)
        .collect();
    assert_eq!(agent.len(), 1);
    assert_eq!(agent[0].mismatch.observed.as_deref(), Some("128 GB"));
    let trail = env
        .app
        .audit_trail("server", &web.id.to_string())
        .await
        .expect("trail");
    assert!(
        trail
            .iter()
            .any(|row| row.action == "asset.agent_report" && row.actor == "agent:simkes-web-01")
    );
    assert_error(
        env.app
            .record_agent_observation(
                "x",
                crate::catalog::ServerId(4242),
                ObservedServer::default(),
                env.now(),
            )
            .await,
        not_found,
        "server 4242 does not exist",
    );
}

pub(crate) async fn servers_predating_cadang_are_registered(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let r01 = env.racks[0].id;
    let register = |name: &str, serial: &str, u: i64| RegisterServer {
        agency_id: env.kendal.id,
        name: name.into(),
        hardware: Env::server(name, serial, 1, 100, 0).hardware,
        ip_addresses: vec!["10.50.0.2".into()],
        domain: Some("kendalkab.go.id".into()),
        domain_activated_on: None,
        placement: Some((r01, u)),
        uplink_id: env.uplink.as_ref().map(|uplink| uplink.id),
        u_size: 2,
        power_draw_w: 350,
        bandwidth_mbps: 20,
        validity: Validity::Temporary {
            until: chrono::NaiveDate::from_ymd_opt(2027, 1, 31).expect("date"),
        },
        host_admin_user: Some("admin".into()),
        host_admin_password: Some(SecretString::new("Lama#123")),
        contact: None,
    };
    let stored = env
        .app
        .register_server(KASI, register("kendal-web", "SN-KDL-1", 10), env.now())
        .await
        .expect("registered");
    assert_eq!(stored.u_position, Some(10));
    assert_eq!(stored.noc.as_deref(), Some("NOC-1"));
    assert!(!stored.permanent);
    assert_error(
        env.app
            .register_server(KASI, register("kendal-db", "SN-KDL-2", 11), env.now())
            .await,
        conflict,
        "overlaps kendal-web",
    );
    assert_error(
        env.app
            .register_server(KASI, register("kendal-db", "SN-KDL-2", 42), env.now())
            .await,
        invalid,
        "does not fit in rack R01 (U1–U42)",
    );
    assert_error(
        env.app
            .register_server(KASI, register("kendal-dup", "SN-KDL-1", 20), env.now())
            .await,
        conflict,
        "duplicate",
    );
    assert_error(
        env.app
            .register_server(PETUGAS, register("kendal-db", "SN-KDL-2", 20), env.now())
            .await,
        forbidden,
        "only ADMIN or KASI_INFRAS may register servers",
    );
    let live = env.app.live_allocations().await.expect("allocations");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].server_id, Some(stored.id));
    assert_eq!(
        (live[0].u_start, live[0].power_w, live[0].bandwidth_mbps),
        (Some(10), 350, 20)
    );
    assert_eq!(
        env.app
            .servers_of(env.kendal.id)
            .await
            .expect("servers")
            .len(),
        1
    );
}

/// SQLite only: the database file and its write-ahead log, byte for byte, never contain
/// the password.
#[tokio::test]
async fn the_sqlite_files_never_hold_the_password() {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = Catalog::open_sqlite(dir.path(), &SqliteOptions::default())
        .await
        .expect("open");
    let env = Env::new(catalog.clone()).await;
    env.handed_over().await;
    catalog.close().await;
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        scanned += bytes.len();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|window| window == PASSWORD.as_bytes()),
            "{} holds the password",
            path.display()
        );
    }
    assert!(scanned > 0);
}
