//! Agencies, people and accounts: who may manage them, NIP validation, duplicates, and
//! the SKPD-belongs-to-an-agency rule.

use crate::app::NewAccountInput;
use crate::app::NewPersonInput;
use crate::app::tests::*;
use crate::catalog::{AgencyKind, Catalog, NewAgency};
use crate::workflow::Role;

fn person(nip: &str) -> NewPersonInput {
    NewPersonInput {
        name: "Agus Prasetyo".into(),
        nip: nip.into(),
        position: None,
        agency_id: None,
        phone: None,
    }
}

fn agency(code: &str) -> NewAgency {
    NewAgency {
        code: code.into(),
        name: "Badan Pendapatan Daerah".into(),
        kind: AgencyKind::Skpd,
        address: "Jl. Pemuda No. 1, Semarang".into(),
        phone: None,
    }
}

pub(crate) async fn the_first_admin_is_bootstrapped_once(catalog: Catalog) {
    let env = Env::new(catalog).await;
    assert_error(
        env.app.bootstrap_admin("admin2", env.now()).await,
        conflict,
        "only be created once",
    );
    let admin = env.app.account(ADMIN).await.expect("admin");
    assert_eq!(admin.roles, vec![Role::Admin]);
    let trail = env
        .app
        .audit_trail("account", &admin.id.to_string())
        .await
        .expect("trail");
    assert_eq!(trail[0].action, "account.bootstrap");
    assert_eq!(trail[0].actor, "system");
}

pub(crate) async fn only_admins_manage_the_directory(catalog: Catalog) {
    let env = Env::new(catalog).await;
    assert_error(
        env.app
            .create_agency(KASI, agency("BAPENDA"), env.now())
            .await,
        forbidden,
        "only ADMIN may register agencies (`kasi` holds: KASI_INFRAS)",
    );
    assert_error(
        env.app
            .create_person(KADIN, person("19800101 200501 1 001"), env.now())
            .await,
        forbidden,
        "only ADMIN may register people",
    );
    assert_error(
        env.app
            .create_account(
                SKPD,
                NewAccountInput {
                    username: "x".repeat(3),
                    person_id: None,
                    agency_id: None,
                    roles: vec![Role::Admin],
                },
                env.now(),
            )
            .await,
        forbidden,
        "only ADMIN may create accounts",
    );
    assert_error(
        env.app
            .add_rack(
                PETUGAS,
                crate::catalog::NewRack {
                    name: "R09".into(),
                    noc: "NOC-1".into(),
                    location: "Lt. 2".into(),
                    u_size: 42,
                    power_budget_w: 1000,
                    power_feed_id: None,
                },
                env.now(),
            )
            .await,
        forbidden,
        "only ADMIN or KASI_INFRAS may manage the capacity model",
    );
    assert_error(
        env.app
            .create_agency("nobody", agency("X"), env.now())
            .await,
        forbidden,
        "there is no account `nobody`",
    );
    let created = env
        .app
        .create_agency(ADMIN, agency(" BAPENDA "), env.now())
        .await
        .expect("admin registers");
    assert_eq!(created.code, "BAPENDA");
    env.assert_audit_intact().await;
}

pub(crate) async fn nip_errors_are_clear(catalog: Catalog) {
    let env = Env::new(catalog).await;
    for (nip, expected) in [
        ("1980010120050110", "has 16 digits; a NIP has exactly 18"),
        ("19800101-200501-1-001", "contains `-`"),
        (
            "19801301 200501 1 001",
            "digits 1–8 must be the birth date as YYYYMMDD; `19801301` is not a valid date",
        ),
        ("19800101 200513 1 001", "`200513` is not a valid month"),
        ("19800101 199001 1 001", "at age 10"),
        (
            "19800101 200501 7 001",
            "must be 1 (male) or 2 (female), not 7",
        ),
        ("19800101 200501 1 000", "cannot be 000"),
    ] {
        assert_error(
            env.app.create_person(ADMIN, person(nip), env.now()).await,
            invalid,
            expected,
        );
    }
    let stored = env
        .app
        .create_person(ADMIN, person(" 19800101 200501 1 001 "), env.now())
        .await
        .expect("a valid NIP with spaces");
    assert_eq!(stored.nip, "198001012005011001");
    assert_error(
        env.app
            .create_person(
                ADMIN,
                NewPersonInput {
                    agency_id: Some(crate::catalog::AgencyId(999)),
                    ..person("19800101 200501 1 002")
                },
                env.now(),
            )
            .await,
        not_found,
        "agency 999 does not exist",
    );
}

pub(crate) async fn duplicates_are_conflicts(catalog: Catalog) {
    let env = Env::new(catalog).await;
    assert_error(
        env.app
            .create_person(ADMIN, person("197508122000032004"), env.now())
            .await,
        conflict,
        "NIP 19750812 200003 2 004 is already registered to dr. Siti Rahayu",
    );
    assert_error(
        env.app
            .create_agency(ADMIN, agency("DINKES"), env.now())
            .await,
        conflict,
        "agency code `DINKES` is already registered",
    );
    assert_error(
        env.app
            .create_account(
                ADMIN,
                NewAccountInput {
                    username: KASI.into(),
                    person_id: None,
                    agency_id: None,
                    roles: vec![Role::KasiInfras],
                },
                env.now(),
            )
            .await,
        conflict,
        "user name `kasi` is taken",
    );
}

pub(crate) async fn skpd_accounts_belong_to_an_agency(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let account = |username: &str, agency, roles| NewAccountInput {
        username: username.into(),
        person_id: None,
        agency_id: agency,
        roles,
    };
    assert_error(
        env.app
            .create_account(ADMIN, account("skpd.x", None, vec![Role::Skpd]), env.now())
            .await,
        invalid,
        "holds the SKPD role and must belong to an agency",
    );
    assert_error(
        env.app
            .create_account(
                ADMIN,
                account("petugas2", Some(env.dinkes.id), vec![Role::Petugas]),
                env.now(),
            )
            .await,
        invalid,
        "does not hold the SKPD role, so it cannot belong to an agency",
    );
    assert_error(
        env.app
            .create_account(ADMIN, account("nobody", None, vec![]), env.now())
            .await,
        invalid,
        "needs at least one role",
    );
    assert_error(
        env.app
            .create_account(
                ADMIN,
                account("Bad Name", None, vec![Role::Kadin]),
                env.now(),
            )
            .await,
        invalid,
        "user name `Bad Name` is not valid",
    );
    assert_error(
        env.app
            .create_account(
                ADMIN,
                account(
                    "skpd.y",
                    Some(crate::catalog::AgencyId(404)),
                    vec![Role::Skpd],
                ),
                env.now(),
            )
            .await,
        not_found,
        "agency 404 does not exist",
    );
    let kasi = env.app.account(KASI).await.expect("kasi");
    assert_error(
        env.app
            .set_account_roles(
                ADMIN,
                kasi.id,
                vec![Role::KasiInfras, Role::Skpd],
                env.now(),
            )
            .await,
        invalid,
        "must belong to an agency",
    );
    let changed = env
        .app
        .set_account_roles(
            ADMIN,
            kasi.id,
            vec![Role::KasiInfras, Role::Petugas],
            env.now(),
        )
        .await
        .expect("roles change");
    assert_eq!(changed.roles, vec![Role::KasiInfras, Role::Petugas]);
}

pub(crate) async fn disabled_accounts_cannot_act(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let opened = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .expect("open");
    let kadin = env.app.account(KADIN).await.expect("kadin");
    env.app
        .set_account_active(ADMIN, kadin.id, false, env.now())
        .await
        .expect("disable");
    assert_error(
        env.try_complete(KADIN, opened.request.id, 1).await,
        forbidden,
        "account `kadin` is disabled",
    );
    let admin = env.app.account(ADMIN).await.expect("admin");
    assert_error(
        env.app
            .set_account_active(ADMIN, admin.id, false, env.now())
            .await,
        conflict,
        "cannot disable your own account",
    );
    env.app
        .set_account_active(ADMIN, kadin.id, true, env.now())
        .await
        .expect("enable");
    env.complete(KADIN, opened.request.id, 1).await;
}
