//! The backends the conformance suite runs on, and the fixture every scenario starts
//! from: an opened [`App`] with the SOP definitions, a directory (agencies, people, one
//! account per role) and a small capacity model, on a clock that advances only when
//! asked.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use crate::app::{
    App, AppConfig, AppError, ColocationApplication, DeclaredServer, EventOutcome, MasterKey,
    NewAccountInput, NewPersonInput, ObservedServer, OpenRequest, RegisterServer, RequestDetails,
    SecretString, Signatory, Validity,
};
use crate::catalog::{
    Agency, AgencyKind, Catalog, HardwareSpec, NewAgency, NewRack, Person, PostgresOptions, Rack,
    RequestId, Server, SqliteOptions, Uplink,
};
use crate::workflow::{Answer, Event, Role};

pub(crate) const ADMIN: &str = "admin";
pub(crate) const KADIN: &str = "kadin";
pub(crate) const KABID: &str = "kabid";
pub(crate) const KASI: &str = "kasi";
pub(crate) const PETUGAS: &str = "petugas";
/// The SKPD account of the Dinas Kesehatan.
pub(crate) const SKPD: &str = "skpd.dinkes";
/// The SKPD account of another agency (Kabupaten Kendal).
pub(crate) const SKPD_OTHER: &str = "skpd.kendal";

/// The password used for host admin secrets in the scenarios.
pub(crate) const PASSWORD: &str = "Rahasia#Colo-2026!";

/// Every `config/sop/*.toml`, as (file name, text).
pub(crate) fn sop_files() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sop");
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("config/sop exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                std::fs::read_to_string(&path).expect("readable definition"),
            )
        })
        .collect();
    files.sort();
    files
}

/// The text of one definition file.
pub(crate) fn sop_file(name: &str) -> String {
    sop_files()
        .into_iter()
        .find(|(file, _)| file == name)
        .unwrap_or_else(|| panic!("{name} is in config/sop"))
        .1
}

/// Monday 2 March 2026, 08:00 in Asia/Jakarta (WIB).
pub(crate) fn t0() -> DateTime<Utc> {
    chrono_tz::Asia::Jakarta
        .with_ymd_and_hms(2026, 3, 2, 8, 0, 0)
        .single()
        .expect("a valid local time")
        .with_timezone(&Utc)
}

/// A local WIB time as UTC.
pub(crate) fn wib(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    chrono_tz::Asia::Jakarta
        .with_ymd_and_hms(year, month, day, hour, minute, 0)
        .single()
        .expect("a valid local time")
        .with_timezone(&Utc)
}

/// Runs a scenario on a fresh SQLite catalog file.
pub(crate) async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Catalog) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("a temporary directory");
    let catalog = Catalog::open_sqlite(dir.path(), &SqliteOptions::default())
        .await
        .expect("the SQLite catalog opens");
    scenario(catalog.clone()).await;
    catalog.close().await;
}

static SCHEMAS: AtomicU64 = AtomicU64::new(0);

/// Runs a scenario in a fresh PostgreSQL schema, dropped afterwards even when the scenario
/// panics; skipped loudly without `CADANG_TEST_POSTGRES_URL`.
pub(crate) async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Catalog) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(url) = std::env::var("CADANG_TEST_POSTGRES_URL") else {
        // Written to the process's stderr directly, not with `eprintln!`: the test harness
        // captures (and hides) the print macros of passing tests, and a skip must show.
        let test = std::thread::current()
            .name()
            .unwrap_or("a PostgreSQL test")
            .to_owned();
        let line = format!(
            "SKIPPED: CADANG_TEST_POSTGRES_URL not set — {test} did NOT run against PostgreSQL\n"
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    };
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("operating system randomness");
    let schema = format!(
        "cadang_test_{}_{}_{}",
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed),
        hex::encode(random)
    );
    let catalog = Catalog::open_postgres(
        &url,
        &PostgresOptions {
            max_connections: 8,
            schema: Some(schema.clone()),
            create_schema: true,
            ..PostgresOptions::default()
        },
    )
    .await
    .expect("the PostgreSQL catalog opens");
    let outcome = tokio::spawn(scenario(catalog.clone())).await;
    catalog.close().await;
    if let Err(error) = crate::catalog::drop_postgres_schema(&url, &schema).await {
        eprintln!("warning: could not drop test schema {schema}: {error}");
    }
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("the scenario task failed: {error}"),
        }
    }
}

/// The fixture.
pub(crate) struct Env {
    pub app: App,
    pub minutes: AtomicI64,
    pub dinkes: Agency,
    pub kendal: Agency,
    /// The Dinas Kesehatan's responsible person.
    pub responsible: Person,
    pub racks: Vec<Rack>,
    pub uplink: Option<Uplink>,
}

/// The capacity the fixture installs.
pub(crate) enum Capacity {
    /// R01 42 U 5000 W and R02 10 U 1500 W on feed PLN-A (20 kW), uplink ISP-A 1000 Mbps.
    Standard,
    /// One rack of `u` units and `watts`, and a roomy uplink.
    OneRack { u: i64, watts: i64 },
}

pub(crate) fn test_config() -> AppConfig {
    let mut config = AppConfig::default();
    config.office.signatories = vec![Signatory {
        role: Role::KabidTik,
        name: "Ir. Budi Santoso, M.T.".into(),
        nip: Some("197001011995031001".into()),
        rank: Some("Pembina Tk. I".into()),
    }];
    config.notify_channels = vec!["webhook".into(), "email".into()];
    config
}

pub(crate) fn master_key() -> MasterKey {
    MasterKey::from_bytes([42; 32])
}

impl Env {
    pub(crate) async fn new(catalog: Catalog) -> Env {
        Env::with(catalog, Capacity::Standard).await
    }

    pub(crate) async fn with(catalog: Catalog, capacity: Capacity) -> Env {
        let start = t0();
        let app = App::open(catalog, sop_files(), test_config(), &master_key(), start)
            .await
            .expect("the app opens");
        app.bootstrap_admin(ADMIN, start).await.expect("bootstrap");
        let dinkes = app
            .create_agency(
                ADMIN,
                NewAgency {
                    code: "DINKES".into(),
                    name: "Dinas Kesehatan Provinsi Jawa Tengah".into(),
                    kind: AgencyKind::Skpd,
                    address: "Jl. Piere Tendean No. 24, Semarang".into(),
                    phone: Some("(024) 3511351".into()),
                },
                start,
            )
            .await
            .expect("agency");
        let kendal = app
            .create_agency(
                ADMIN,
                NewAgency {
                    code: "KAB-KENDAL".into(),
                    name: "Dinas Komunikasi dan Informatika Kabupaten Kendal".into(),
                    kind: AgencyKind::Kabupaten,
                    address: "Jl. Soekarno-Hatta No. 193, Kendal".into(),
                    phone: None,
                },
                start,
            )
            .await
            .expect("agency");
        let responsible = app
            .create_person(
                ADMIN,
                NewPersonInput {
                    name: "dr. Siti Rahayu, M.Kes.".into(),
                    nip: "19750812 200003 2 004".into(),
                    position: Some("Kepala Seksi Sistem Informasi".into()),
                    agency_id: Some(dinkes.id),
                    phone: None,
                },
                start,
            )
            .await
            .expect("person");
        let officer = app
            .create_person(
                ADMIN,
                NewPersonInput {
                    name: "Rudi Hartono, S.Kom.".into(),
                    nip: "198805142011011002".into(),
                    position: Some("Petugas Jaringan".into()),
                    agency_id: None,
                    phone: None,
                },
                start,
            )
            .await
            .expect("person");
        for (username, role, person, agency) in [
            (KADIN, Role::Kadin, None, None),
            (KABID, Role::KabidTik, None, None),
            (KASI, Role::KasiInfras, None, None),
            (PETUGAS, Role::Petugas, Some(officer.id), None),
            (SKPD, Role::Skpd, Some(responsible.id), Some(dinkes.id)),
            (SKPD_OTHER, Role::Skpd, None, Some(kendal.id)),
        ] {
            app.create_account(
                ADMIN,
                NewAccountInput {
                    username: username.into(),
                    person_id: person,
                    agency_id: agency,
                    roles: vec![role],
                },
                start,
            )
            .await
            .expect("account");
        }
        let (racks, uplink) = match capacity {
            Capacity::Standard => {
                let feed = app
                    .add_power_feed(ADMIN, "PLN-A", 20_000, start)
                    .await
                    .expect("feed");
                let mut racks = Vec::new();
                for (name, u, watts) in [("R01", 42, 5000), ("R02", 10, 1500)] {
                    racks.push(
                        app.add_rack(
                            KASI,
                            NewRack {
                                name: name.into(),
                                noc: "NOC-1".into(),
                                location: "Ruang Server Lt. 2".into(),
                                u_size: u,
                                power_budget_w: watts,
                                power_feed_id: Some(feed.id),
                            },
                            start,
                        )
                        .await
                        .expect("rack"),
                    );
                }
                let uplink = app
                    .add_uplink(ADMIN, "ISP-A", 1000, start)
                    .await
                    .expect("uplink");
                (racks, Some(uplink))
            }
            Capacity::OneRack { u, watts } => {
                let rack = app
                    .add_rack(
                        ADMIN,
                        NewRack {
                            name: "R01".into(),
                            noc: "NOC-1".into(),
                            location: "Ruang Server Lt. 2".into(),
                            u_size: u,
                            power_budget_w: watts,
                            power_feed_id: None,
                        },
                        start,
                    )
                    .await
                    .expect("rack");
                let uplink = app
                    .add_uplink(ADMIN, "ISP-A", 100_000, start)
                    .await
                    .expect("uplink");
                (vec![rack], Some(uplink))
            }
        };
        Env {
            app,
            minutes: AtomicI64::new(0),
            dinkes,
            kendal,
            responsible,
            racks,
            uplink,
        }
    }

    /// The next instant: ten minutes after the previous one.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let minutes = self.minutes.fetch_add(10, Ordering::Relaxed) + 10;
        t0() + TimeDelta::minutes(minutes)
    }

    /// A declared server.
    pub(crate) fn server(
        name: &str,
        serial: &str,
        u: i64,
        watts: i64,
        mbps: i64,
    ) -> DeclaredServer {
        DeclaredServer {
            name: name.into(),
            hardware: HardwareSpec {
                serial_number: serial.into(),
                server_type: "PowerEdge R740".into(),
                brand: "Dell".into(),
                processor: "Intel Xeon Silver 4214".into(),
                ram: "64 GB".into(),
                motherboard: "Dell 0WXD1Y".into(),
                storage: "2 x 1.2 TB SAS".into(),
                psu: "2 x 750 W".into(),
            },
            u_size: u,
            power_draw_w: watts,
            bandwidth_mbps: mbps,
            ip_addresses: vec!["103.9.227.10".into()],
            host_admin_user: None,
            host_admin_password: None,
            host_admin_secret: None,
        }
    }

    /// A colocation application of the Dinas Kesehatan.
    pub(crate) fn colocation(&self, servers: Vec<DeclaredServer>) -> OpenRequest {
        OpenRequest {
            agency_id: self.dinkes.id,
            subject: "Permohonan colocation server SIMKES".into(),
            details: RequestDetails::Colocation(ColocationApplication {
                responsible_person: self.responsible.id,
                contact_number: "0812-2800-1234".into(),
                domain: "SIMKES.jatengprov.go.id".into(),
                domain_activation_date: chrono::NaiveDate::from_ymd_opt(2026, 4, 1),
                validity: Validity::Permanent,
                contact_person: Some("Andi (0812-2800-1234)".into()),
                servers,
            }),
        }
    }

    /// The two servers most scenarios declare: a web server with a host admin password
    /// and a database server.
    pub(crate) fn two_servers() -> Vec<DeclaredServer> {
        let mut web = Env::server("simkes-web-01", "CN7016389F0012", 2, 400, 100);
        web.host_admin_user = Some("root".into());
        web.host_admin_password = Some(SecretString::new(PASSWORD));
        web.ip_addresses = vec!["103.9.227.10".into(), "10.10.20.5".into()];
        let mut db = Env::server("simkes-db-01", "CN7016389F0013", 1, 300, 50);
        db.ip_addresses = vec!["10.10.20.6".into()];
        vec![web, db]
    }

    pub(crate) async fn open(
        &self,
        user: &str,
        procedure: &str,
        input: OpenRequest,
    ) -> Result<EventOutcome, AppError> {
        self.app
            .open_request(user, procedure, input, self.now())
            .await
    }

    pub(crate) async fn try_complete(
        &self,
        user: &str,
        request: RequestId,
        step: u32,
    ) -> Result<EventOutcome, AppError> {
        self.app
            .submit(user, request, Event::complete(step), self.now())
            .await
    }

    pub(crate) async fn complete(&self, user: &str, request: RequestId, step: u32) -> EventOutcome {
        self.try_complete(user, request, step)
            .await
            .unwrap_or_else(|error| panic!("{user} completes step {step} of {request}: {error}"))
    }

    pub(crate) async fn try_decide(
        &self,
        user: &str,
        request: RequestId,
        step: u32,
        answer: Answer,
        reason: &str,
    ) -> Result<EventOutcome, AppError> {
        self.app
            .submit(
                user,
                request,
                Event::decide(step, answer, reason),
                self.now(),
            )
            .await
    }

    pub(crate) async fn decide(
        &self,
        user: &str,
        request: RequestId,
        step: u32,
        answer: Answer,
        reason: &str,
    ) -> EventOutcome {
        self.try_decide(user, request, step, answer, reason)
            .await
            .unwrap_or_else(|error| panic!("{user} decides step {step} of {request}: {error}"))
    }

    /// Opens a colocation request and brings it to step 4 (capacity checked).
    pub(crate) async fn colocation_at_step_4(&self, servers: Vec<DeclaredServer>) -> RequestId {
        let opened = self
            .open(SKPD, "colocation_handover", self.colocation(servers))
            .await
            .expect("the colocation request opens");
        let id = opened.request.id;
        self.complete(KADIN, id, 1).await;
        self.complete(KASI, id, 2).await;
        self.complete(PETUGAS, id, 3).await;
        id
    }

    /// Runs a colocation of [`Env::two_servers`] through to the end; returns the request
    /// and the registered servers.
    pub(crate) async fn handed_over(&self) -> (RequestId, Vec<Server>) {
        let id = self.colocation_at_step_4(Env::two_servers()).await;
        self.decide(KASI, id, 4, Answer::Yes, "kapasitas tersedia")
            .await;
        self.decide(KADIN, id, 5, Answer::Yes, "disetujui").await;
        self.complete(KABID, id, 6).await;
        self.app
            .record_handover_observation(
                PETUGAS,
                id,
                vec![
                    ObservedServer {
                        serial_number: Some("CN7016389F0012".into()),
                        ..ObservedServer::default()
                    },
                    ObservedServer {
                        serial_number: Some("CN7016389F0013".into()),
                        ..ObservedServer::default()
                    },
                ],
                self.now(),
            )
            .await
            .expect("observation");
        let done = self.complete(PETUGAS, id, 7).await;
        (id, done.servers)
    }

    /// A server of the Dinas Kesehatan entered directly in the register.
    pub(crate) async fn existing_server(&self, name: &str, serial: &str) -> Server {
        let declared = Env::server(name, serial, 1, 200, 0);
        self.app
            .register_server(
                ADMIN,
                RegisterServer {
                    agency_id: self.dinkes.id,
                    name: name.into(),
                    hardware: declared.hardware,
                    ip_addresses: vec!["10.10.30.7".into()],
                    domain: Some("arsip.dinkes.jatengprov.go.id".into()),
                    domain_activated_on: None,
                    placement: None,
                    uplink_id: None,
                    u_size: 1,
                    power_draw_w: 200,
                    bandwidth_mbps: 0,
                    validity: Validity::Permanent,
                    host_admin_user: None,
                    host_admin_password: None,
                    contact: None,
                },
                self.now(),
            )
            .await
            .expect("the server is registered")
    }

    /// A server of the agency with an enrolled agent, and the restore plan of `request`
    /// (written at C2) restoring it in place through that agent, with `fallback`.
    pub(crate) async fn restore_plan(
        &self,
        request: RequestId,
        fallback: Vec<crate::app::restore_requests::FallbackStep>,
        now: DateTime<Utc>,
    ) -> crate::catalog::ServerId {
        let server = self
            .existing_server(&format!("simkes-db-{request}"), &format!("SN-C-{request}"))
            .await;
        let (_, token) = self
            .app
            .create_enrollment_token(PETUGAS, server.id, None, now)
            .await
            .expect("an enrolment token");
        self.app
            .enroll_agent(token.expose(), "simkes-db", "test", now)
            .await
            .expect("the agent enrols");
        let caller = crate::app::tests::plans::caller(self, PETUGAS).await;
        self.app
            .set_restore_plan(
                &caller,
                request,
                crate::app::restore_requests::RestorePlan {
                    server: server.id,
                    backup_plan: None,
                    snapshot: "latest".into(),
                    paths: Vec::new(),
                    excludes: Vec::new(),
                    overwrite: crate::engine::restore::Overwrite::Always,
                    delete: false,
                    target: crate::app::restore_requests::RestoreTarget {
                        server: server.id,
                        dir: "/srv/restore".into(),
                    },
                    check: None,
                    fallback,
                },
                now,
            )
            .await
            .expect("the plan is written");
        server.id
    }

    /// Carries the restore requests forward as a daemon does, ending each restore the
    /// system starts with the next of `statuses` (`ok`, or a failure with one damaged
    /// file).
    pub(crate) async fn run_restores(&self, statuses: &[&str], now: DateTime<Utc>) {
        for status in statuses {
            self.app
                .advance_restore_requests("test", now)
                .await
                .expect("restore requests advance");
            self.end_next_restore(status, now).await;
        }
        self.app
            .advance_restore_requests("test", now)
            .await
            .expect("restore requests advance");
    }

    /// Claims the next queued restore and ends it with `status`, as its agent would.
    pub(crate) async fn end_next_restore(&self, status: &str, now: DateTime<Utc>) {
        let claimed = self
            .app
            .claim_restore(
                "test",
                TimeDelta::minutes(5),
                now,
                &|_| true,
                TimeDelta::minutes(5),
            )
            .await
            .expect("claim")
            .expect("a restore is queued");
        let stats = if status == "ok" {
            serde_json::json!({ "snapshot": "ab".repeat(32), "files_verified": 3, "files_failed": 0 })
        } else {
            serde_json::json!({
                "snapshot": "ab".repeat(32), "files_verified": 2, "files_failed": 1,
                "failed": [{ "path": "/srv/db/base.dat", "reason": "chunk 1234abcd is damaged" }],
            })
        };
        let end = crate::app::RestoreEnd {
            status: status.to_owned(),
            stats_json: stats.to_string(),
            error: None,
        };
        assert!(
            self.app
                .finish_restore(claimed.id, "test", &end, now)
                .await
                .expect("finish")
        );
    }

    /// A backup plan for a backup request (B2 needs one before it is completed).
    pub(crate) async fn backup_plan(&self, request: RequestId) {
        self.app
            .create_plan(
                KASI,
                request,
                &format!("plan-{request}"),
                crate::app::PlanSpec {
                    server: None,
                    paths: vec!["/srv/simkes".into()],
                    excludes: vec![],
                    exclude_if_present: vec![],
                    exclude_caches: false,
                    exclude_larger_than: None,
                    schedule: "0 2 * * *".into(),
                    time_zone: "Asia/Jakarta".into(),
                    retention: crate::app::Retention::default(),
                    retention_schedule: None,
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
                },
                self.now(),
            )
            .await
            .expect("the backup plan is created");
    }

    /// Asserts the audit chain is intact.
    pub(crate) async fn assert_audit_intact(&self) {
        let verification = self.app.verify_audit(None).await.expect("verify");
        assert!(
            verification.is_intact(),
            "audit chain broken: {:?}",
            verification.problem
        );
    }
}

/// Asserts an error's class and that its message contains `text`.
#[track_caller]
pub(crate) fn assert_error<T: std::fmt::Debug>(
    result: Result<T, AppError>,
    class: fn(&AppError) -> bool,
    text: &str,
) {
    match result {
        Ok(value) => panic!("expected an error containing `{text}`, got {value:?}"),
        Err(error) => {
            assert!(class(&error), "wrong class for `{text}`: {error:?}");
            assert!(
                error.to_string().contains(text),
                "`{error}` does not contain `{text}`"
            );
        }
    }
}

pub(crate) fn forbidden(error: &AppError) -> bool {
    matches!(error, AppError::Forbidden(_))
}
pub(crate) fn conflict(error: &AppError) -> bool {
    matches!(error, AppError::Conflict(_))
}
pub(crate) fn invalid(error: &AppError) -> bool {
    matches!(error, AppError::InvalidInput(_))
}
pub(crate) fn not_found(error: &AppError) -> bool {
    matches!(error, AppError::NotFound(_))
}
