//! Document numbers are drawn inside the issuing transaction: sequential, unique per
//! year, never reused under concurrency, not consumed by a refused issue; and issued
//! documents escape what users typed.

use std::collections::BTreeSet;

use crate::app::tests::*;
use crate::catalog::{AgencyKind, Catalog, NewAgency};
use crate::workflow::DocumentKind;

pub(crate) async fn numbers_are_unique_and_yearly(catalog: Catalog) {
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
    let first = env
        .app
        .issue_document(KADIN, id, DocumentKind::ApplicationForm, env.now())
        .await
        .expect("form 1");
    assert_eq!(first.number, "001/FPC/DISKOMINFO/2026");
    assert_error(
        env.app
            .issue_document(KADIN, id, DocumentKind::LetterBackupStopped, env.now())
            .await,
        invalid,
        "document letter_backup_stopped cannot be issued for a colocation request",
    );
    assert_error(
        env.app
            .issue_document(PETUGAS, id, DocumentKind::ApplicationForm, env.now())
            .await,
        forbidden,
        "only KADIN, KABID_TIK or ADMIN may issue documents for this request",
    );
    let second = env
        .app
        .issue_document(KABID, id, DocumentKind::ApplicationForm, env.now())
        .await
        .expect("a copy");
    assert_eq!(
        second.number, "002/FPC/DISKOMINFO/2026",
        "refused issues used no number"
    );
    // 1 January 2027, 09:00 WIB: a new year starts again at 1.
    let next_year = wib(2027, 1, 1, 9, 0);
    let third = env
        .app
        .issue_document(KADIN, id, DocumentKind::ApplicationForm, next_year)
        .await
        .expect("next year");
    assert_eq!(third.number, "001/FPC/DISKOMINFO/2027");
    // 1 January 2027, 05:00 WIB is still 31 December in UTC: the local date decides.
    let early = wib(2027, 1, 1, 5, 0);
    assert_eq!(early.format("%Y").to_string(), "2026");
    let fourth = env
        .app
        .issue_document(KADIN, id, DocumentKind::ApplicationForm, early)
        .await
        .expect("2027 locally");
    assert_eq!(fourth.number, "002/FPC/DISKOMINFO/2027");
    let fifth = env
        .app
        .issue_document(KADIN, id, DocumentKind::ApplicationForm, env.now())
        .await
        .expect("2026 goes on");
    assert_eq!(fifth.number, "003/FPC/DISKOMINFO/2026");

    let stored = env.app.document(&first.number).await.expect("stored");
    assert_eq!(stored.kind, DocumentKind::ApplicationForm);
    assert_eq!(stored.request_id, Some(id));
    assert_eq!(stored.issued_by, KADIN);
    assert_eq!((stored.year, stored.seq), (2026, 1));
    assert!(stored.html.contains("FORMULIR PENGAJUAN COLOCATION"));
    assert!(stored.html.contains("19750812 200003 2 004"));
    assert!(stored.html.contains("simkes.jatengprov.go.id"));
    assert!(stored.html.contains("&#9745;</span> Permanen"));
    assert_eq!(
        stored.content_hash,
        blake3::hash(stored.html.as_bytes()).to_hex().to_string()
    );
    let trail = env
        .app
        .audit_trail("document", &stored.id.to_string())
        .await
        .expect("trail");
    assert_eq!(trail[0].action, "document.issue");
    assert!(
        trail[0]
            .after_json
            .as_deref()
            .is_some_and(|json| json.contains(&stored.content_hash))
    );
}

pub(crate) async fn concurrent_issuance_never_reuses_a_number(catalog: Catalog) {
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
    let now = env.now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = env.app.clone();
        tasks.push(tokio::spawn(async move {
            app.issue_document(KADIN, id, DocumentKind::ApplicationForm, now)
                .await
        }));
    }
    let mut numbers = BTreeSet::new();
    for task in tasks {
        let issued = task.await.expect("task").expect("issued");
        assert!(
            numbers.insert(issued.number.clone()),
            "{} twice",
            issued.number
        );
    }
    let expected: BTreeSet<String> = (1..=8)
        .map(|seq| format!("{seq:03}/FPC/DISKOMINFO/2026"))
        .collect();
    assert_eq!(numbers, expected);
    env.assert_audit_intact().await;
}

pub(crate) async fn documents_escape_user_data(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let hostile = env
        .app
        .create_agency(
            ADMIN,
            NewAgency {
                code: "HOSTILE".into(),
                name: "Badan <script>alert('x')</script> & \"Co\"".into(),
                kind: AgencyKind::Kota,
                address: "Jl. <b>Tebal</b> 1".into(),
                phone: None,
            },
            env.now(),
        )
        .await
        .expect("agency");
    let person = env
        .app
        .create_person(
            ADMIN,
            crate::app::NewPersonInput {
                name: "Ir. <i>Miring</i>".into(),
                nip: "19820202 200801 1 003".into(),
                position: None,
                agency_id: Some(hostile.id),
                phone: None,
            },
            env.now(),
        )
        .await
        .expect("person");
    let mut input = env.colocation(Env::two_servers());
    input.agency_id = hostile.id;
    if let crate::app::RequestDetails::Colocation(application) = &mut input.details {
        application.responsible_person = person.id;
        application.contact_number = "<img src=x onerror=alert(1)>".into();
    }
    let id = env
        .open(KADIN, "colocation_handover", input)
        .await
        .expect("the Head of Agency opens it for the agency")
        .request
        .id;
    let issued = env
        .app
        .issue_document(KADIN, id, DocumentKind::ApplicationForm, env.now())
        .await
        .expect("form 1");
    let html = env.app.document(&issued.number).await.expect("stored").html;
    assert!(!html.contains("<script>"));
    assert!(!html.contains("<img"));
    assert!(!html.contains("<b>Tebal"));
    assert!(!html.contains("<i>Miring"));
    assert!(html.contains("Ir. &lt;i&gt;Miring&lt;/i&gt;"));
    assert!(
        html.contains("Badan &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;Co&quot;")
    );
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
}
