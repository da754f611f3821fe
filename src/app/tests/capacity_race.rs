//! Capacity: concurrent approvals of the capacity decision (A4 "yes") race for one rack;
//! the reservation taken in the same transaction, against locked capacity rows, lets no
//! more through than fits.

use crate::app::tests::*;
use crate::app::{AppError, CapacityNeeds};
use crate::catalog::{AllocationStatus, Catalog};
use crate::workflow::{Answer, DocumentKind, Event, StepNumber};

pub(crate) async fn concurrent_approvals_cannot_over_commit_a_rack(catalog: Catalog) {
    // One 10 U rack; five requests of 4 U each: only two fit.
    let env = Env::with(
        catalog,
        Capacity::OneRack {
            u: 10,
            watts: 10_000,
        },
    )
    .await;
    let mut requests = Vec::new();
    for index in 0..5 {
        let server = Env::server(
            &format!("srv-{index}"),
            &format!("SN-RACE-{index}"),
            4,
            500,
            10,
        );
        let id = env.colocation_at_step_4(vec![server]).await;
        let report = env.app.capacity_report(id).await.expect("checked");
        assert_eq!(report.proposal, Answer::Yes, "each alone fits");
        requests.push(id);
    }
    let now = env.now();
    let mut tasks = Vec::new();
    for id in requests.clone() {
        let app = env.app.clone();
        tasks.push(tokio::spawn(async move {
            app.submit(
                KASI,
                id,
                Event::decide(4, Answer::Yes, "kapasitas tersedia"),
                now,
            )
            .await
        }));
    }
    let mut approved = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("the task runs") {
            Ok(outcome) => {
                approved += 1;
                assert_eq!(outcome.request.state.current_step(), Some(StepNumber(5)));
            }
            Err(AppError::Conflict(message)) => {
                refused += 1;
                assert!(message.contains("no longer available"), "{message}");
                assert!(
                    message.contains("largest free block 2 U, 4 U needed"),
                    "{message}"
                );
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((approved, refused), (2, 3));

    let live = env.app.live_allocations().await.expect("allocations");
    assert_eq!(live.len(), 2);
    let used: i64 = live.iter().map(|allocation| allocation.u_count).sum();
    assert!(used <= 10);
    let mut ranges: Vec<(i64, i64)> = live
        .iter()
        .map(|allocation| {
            let start = allocation.u_start.expect("racked");
            (start, start + allocation.u_count - 1)
        })
        .collect();
    ranges.sort();
    assert!(
        ranges[0].1 < ranges[1].0,
        "no two reservations overlap: {ranges:?}"
    );
    assert!(ranges.iter().all(|(start, end)| *start >= 1 && *end <= 10));

    // The refused requests are still at step 4 and can take the other branch.
    for id in requests {
        let view = env.app.request(id).await.expect("view");
        if view.state.current_step() == Some(StepNumber(4)) {
            let letter = env
                .decide(KASI, id, 4, Answer::No, "rak sudah terisi")
                .await;
            assert_eq!(
                letter.documents[0].kind,
                DocumentKind::LetterCapacityUnavailable
            );
        }
    }
    env.assert_audit_intact().await;
}

pub(crate) async fn a_taken_rack_turns_yes_into_a_conflict(catalog: Catalog) {
    let env = Env::with(
        catalog,
        Capacity::OneRack {
            u: 10,
            watts: 10_000,
        },
    )
    .await;
    let first = env
        .colocation_at_step_4(vec![Env::server("a", "SN-A", 8, 500, 10)])
        .await;
    let second = env
        .colocation_at_step_4(vec![Env::server("b", "SN-B", 8, 500, 10)])
        .await;
    // Both were checked while the rack was empty.
    for id in [first, second] {
        assert_eq!(
            env.app.capacity_report(id).await.expect("checked").proposal,
            Answer::Yes
        );
    }
    let taken = env.decide(KASI, first, 4, Answer::Yes, "tersedia").await;
    let report = taken.capacity.expect("reservation report");
    assert_eq!(report.u_start, Some(1));
    assert_error(
        env.try_decide(KASI, second, 4, Answer::Yes, "tersedia")
            .await,
        conflict,
        "the capacity is no longer available, answer step 4 \"no\"",
    );
    env.decide(
        KASI,
        second,
        4,
        Answer::No,
        "rak terisi oleh permohonan lain",
    )
    .await;
    // The first request gives its room back when the Head of Agency refuses it.
    env.decide(KADIN, first, 5, Answer::No, "ditolak").await;
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    assert!(
        tx.allocations_for_request(first)
            .await
            .expect("allocations")
            .iter()
            .all(|allocation| allocation.status == AllocationStatus::Released)
    );
}

pub(crate) async fn the_capacity_check_reports_numbers(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let needs = CapacityNeeds {
        servers: vec![crate::app::capacity::ServerNeed {
            name: "x".into(),
            u_size: 12,
            power_w: 1200,
            bandwidth_mbps: 600,
        }],
    };
    let report = env.app.capacity_for(&needs).await.expect("report");
    assert_eq!(report.proposal, Answer::Yes);
    assert_eq!(report.rack, Some(env.racks[0].id), "12 U only fit in R01");
    let r01 = report.chosen_rack().expect("R01");
    assert_eq!(
        (r01.free_u, r01.largest_free_block, r01.power_headroom_w),
        (42, 42, 5000)
    );
    let r02 = &report.racks[1];
    assert!(!r02.fits);
    assert_eq!(report.chosen_uplink().expect("ISP-A").free_mbps, 1000);
    assert!(report.reason_id.contains("rak R01"), "{}", report.reason_id);
    assert!(
        report
            .reason_id
            .contains("bandwidth ISP-A tersisa 1.000 Mbps"),
        "{}",
        report.reason_id
    );

    // Fill the uplink: the same needs now fail on bandwidth, with the numbers.
    env.handed_over().await;
    let needs = CapacityNeeds {
        servers: vec![crate::app::capacity::ServerNeed {
            name: "x".into(),
            u_size: 1,
            power_w: 10,
            bandwidth_mbps: 900,
        }],
    };
    let report = env.app.capacity_for(&needs).await.expect("report");
    assert_eq!(report.proposal, Answer::No);
    assert!(
        report
            .reason_en
            .contains("bandwidth: largest headroom 850 Mbps, 900 Mbps needed"),
        "{}",
        report.reason_en
    );
}
