//! Backup windows, notifications (delivered to real local HTTP and SMTP receivers, with
//! retry) and the reports of the Head of Infrastructure Section.

use std::sync::{Arc, Mutex};

use chrono::TimeDelta;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::plans::{backup_request, caller, ok, parts, runs_of, spec};
use super::*;
use crate::app::{RunFilter, Window};
use crate::catalog::{Catalog, PlanId, RunEnd};
use crate::notify::{Notifier, NotifySection, SmtpSecurity, deliver_due};
use crate::workflow::Answer;

/// A backup request whose plan (with `spec`) has been run once and is active.
async fn active_plan(env: &Env, spec: crate::app::PlanSpec) -> PlanId {
    let id = backup_request(env).await;
    env.complete(KADIN, id, 1).await;
    let plan = env
        .app
        .create_plan(KASI, id, "simkes", spec, env.now())
        .await
        .unwrap()
        .id;
    env.complete(KASI, id, 2).await;
    env.app.apply_plan_actions("d1", env.now()).await.unwrap();
    let now = env.now();
    let (run, _, _) = env
        .app
        .claim_run("d1", TimeDelta::minutes(5), now)
        .await
        .unwrap()
        .map(parts)
        .expect("the first run is claimable");
    assert!(env.app.finish_run(run.id, "d1", &ok(), now).await.unwrap());
    env.complete(PETUGAS, id, 3).await;
    env.decide(KASI, id, 4, Answer::Yes, "lanjut").await;
    env.app.apply_plan_actions("d1", env.now()).await.unwrap();
    plan
}

pub(crate) async fn a_backup_waits_for_its_window(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let mut windowed = spec("0 23 * * *");
    windowed.window = Some(Window {
        start: "22:00".into(),
        end: "05:00".into(),
    });
    let id = backup_request(&env).await;
    env.complete(KADIN, id, 1).await;
    let plan = env
        .app
        .create_plan(KASI, id, "malam", windowed, env.now())
        .await
        .unwrap();
    // An ad-hoc run during office hours: claimed, found outside the window, put back.
    let now = env.now();
    let run = env.app.run_now(KASI, plan.id, now).await.unwrap();
    assert!(
        env.app
            .claim_run("d1", TimeDelta::minutes(5), now)
            .await
            .unwrap()
            .is_none(),
        "nothing runs outside the window"
    );
    let opens = wib(2026, 3, 2, 22, 0);
    let waiting = runs_of(&env, plan.id).await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (
            waiting[0].status.as_str(),
            waiting[0].not_before,
            waiting[0].attempts
        ),
        ("queued", Some(opens), 0),
        "queued until the window opens, the claim undone"
    );
    assert!(
        env.app
            .claim_run("d1", TimeDelta::minutes(5), opens - TimeDelta::seconds(1))
            .await
            .unwrap()
            .is_none()
    );
    let claimed = env
        .app
        .claim_run("d1", TimeDelta::minutes(5), opens)
        .await
        .unwrap()
        .expect("claimable once the window opens");
    assert_eq!(claimed.run.id, run);
    assert_eq!(
        claimed.window_closes_at,
        Some(wib(2026, 3, 3, 5, 0)),
        "the scheduler is told when to stop it"
    );
}

/// A local webhook receiver: answers 500 to the first `failures` requests, then 200,
/// and keeps every body it accepted.
async fn webhook_receiver(failures: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut authorised = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                authorised |= lower.starts_with("authorization: bearer hook-secret");
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await.unwrap();
            seen += 1;
            let status = if seen <= failures || !authorised {
                "500 Internal Server Error"
            } else {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "200 OK"
            };
            let reply =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = reader.get_mut().write_all(reply.as_bytes()).await;
        }
    });
    (format!("http://{address}/hooks/cadang"), bodies)
}

/// A local SMTP receiver (plain text, as a relay on the same host would be): keeps the
/// DATA of every message.
async fn smtp_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let kept = messages.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 receiver ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 receiver\r\n",
                        "DATA" => {
                            let _ = write.write_all(b"354 go ahead\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(&line);
                                data.push('\n');
                            }
                            kept.lock().unwrap().push(data);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    (port, messages)
}

fn failed() -> RunEnd {
    RunEnd {
        status: "failed",
        stats_json: "{}".into(),
        snapshot_id: None,
        error: Some("cannot read /srv/simkes: permission denied".into()),
    }
}

pub(crate) async fn bad_runs_notify_once_and_delivery_retries(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let plan = active_plan(&env, spec("0 * * * *")).await;
    let now = env.now();
    env.app.run_now(KASI, plan, now).await.unwrap();
    let claimed = env
        .app
        .claim_run("d1", TimeDelta::minutes(5), now)
        .await
        .unwrap()
        .unwrap();
    assert!(
        env.app
            .finish_run(claimed.run.id, "d1", &failed(), now)
            .await
            .unwrap()
    );
    // One notification per channel, in the run's own transaction.
    let queued = {
        let mut tx = env.app.catalog().begin_read().await.unwrap();
        tx.notifications(100).await.unwrap()
    };
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(queued.iter().all(|n| n.kind == "run_failed"
        && n.event_key == format!("run:{}", claimed.run.id)
        && n.status == "pending"));

    let (url, hooks) = webhook_receiver(1).await;
    let (port, mails) = smtp_receiver().await;
    let section = NotifySection {
        webhook_url: Some(url),
        smtp_host: Some("127.0.0.1".into()),
        smtp_port: Some(port),
        smtp_security: SmtpSecurity::None,
        mail_from: Some("cadang <cadang@diskominfo.example>".into()),
        mail_to: vec!["kasi.infras@diskominfo.example".into()],
        max_attempts: 3,
        ..NotifySection::default()
    };
    let notifier = Notifier::new(&section, |name| {
        (name == "CADANG_WEBHOOK_TOKEN").then(|| "hook-secret".to_owned())
    })
    .unwrap()
    .expect("two channels");
    assert_eq!(notifier.channels(), ["webhook", "email"]);

    // First pass: the webhook answers 500 (kept for a retry), the email goes out.
    let at = env.now();
    assert_eq!(deliver_due(&env.app, &notifier, at).await.unwrap(), 1);
    assert_eq!(mails.lock().unwrap().len(), 1);
    let mail = mails.lock().unwrap()[0].clone();
    assert!(
        mail.contains("ended failed") && mail.contains("permission denied"),
        "{mail}"
    );
    assert!(hooks.lock().unwrap().is_empty());
    // Backing off: nothing is due ten seconds later; thirty seconds later it is.
    assert_eq!(
        deliver_due(&env.app, &notifier, at + TimeDelta::seconds(10))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        deliver_due(&env.app, &notifier, at + TimeDelta::seconds(31))
            .await
            .unwrap(),
        1
    );
    let body: serde_json::Value = serde_json::from_str(&hooks.lock().unwrap()[0]).unwrap();
    assert_eq!(body["event"], "run_failed");
    assert_eq!(body["run"]["id"], serde_json::json!(claimed.run.id));
    assert_eq!(body["agency"]["code"], "DINKES");
    let log = {
        let mut tx = env.app.catalog().begin_read().await.unwrap();
        tx.notifications(100).await.unwrap()
    };
    assert!(log.iter().all(|n| n.status == "sent"), "{log:?}");
    assert_eq!(
        log.iter()
            .find(|n| n.channel == "webhook")
            .unwrap()
            .attempts,
        2
    );
    let webhook = log.iter().find(|n| n.channel == "webhook").unwrap();
    assert!(
        !webhook.body_json.contains("hook-secret"),
        "no secret in the outbox"
    );

    // The plan is now late (no good backup since the first run): found once, however
    // often the scheduler looks.
    let late = env.now() + TimeDelta::hours(3);
    let new = env.app.queue_overdue_notifications(late).await.unwrap();
    assert!(new >= 1, "the overdue plan is notified");
    assert_eq!(env.app.queue_overdue_notifications(late).await.unwrap(), 0);
    let overdue: Vec<_> = {
        let mut tx = env.app.catalog().begin_read().await.unwrap();
        tx.notifications(100).await.unwrap()
    }
    .into_iter()
    .filter(|n| n.kind == "plan_overdue")
    .collect();
    assert_eq!(overdue.len(), 2, "one per channel");

    // A receiver that never answers well: given up after max_attempts, kept as failed.
    let (url, _) = webhook_receiver(usize::MAX).await;
    let stubborn = Notifier::new(
        &NotifySection {
            webhook_url: Some(url),
            max_attempts: 2,
            ..NotifySection::default()
        },
        |_| None,
    )
    .unwrap()
    .unwrap();
    let mut at = late;
    for _ in 0..4 {
        deliver_due(&env.app, &stubborn, at).await.unwrap();
        at += TimeDelta::hours(2);
    }
    let log = {
        let mut tx = env.app.catalog().begin_read().await.unwrap();
        tx.notifications(100).await.unwrap()
    };
    let hook = log
        .iter()
        .find(|n| n.kind == "plan_overdue" && n.channel == "webhook")
        .unwrap();
    assert_eq!((hook.status.as_str(), hook.attempts), ("failed", 2));
    assert!(hook.last_error.as_deref().unwrap_or("").contains("500"));
}

fn backup_end(read: u64, added: u64, stored: u64, unique: u64, total: u64) -> RunEnd {
    RunEnd {
        status: "ok",
        stats_json: serde_json::json!({
            "bytes_read": read, "bytes_added": added, "bytes_total": total,
            "dedup_ratio": read as f64 / added as f64, "duration_seconds": 12.5,
            "throughput_bytes_per_second": read as f64 / 12.5,
            "repository_stored_bytes": stored, "repository_raw_bytes": unique,
        })
        .to_string(),
        snapshot_id: Some("cd".repeat(32)),
        error: None,
    }
}

pub(crate) async fn reports_show_failures_overdue_plans_and_storage(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let plan = active_plan(&env, spec("0 * * * *")).await;
    // Two more backups: one good with statistics, one failed.
    for end in [
        backup_end(1000, 400, 300, 600, 2000),
        failed(),
        backup_end(1000, 100, 350, 700, 2100),
    ] {
        let now = env.now();
        env.app.run_now(KASI, plan, now).await.unwrap();
        let claimed = env
            .app
            .claim_run("d1", TimeDelta::minutes(5), now)
            .await
            .unwrap()
            .unwrap();
        assert!(
            env.app
                .finish_run(claimed.run.id, "d1", &end, now)
                .await
                .unwrap()
        );
    }
    let kasi = caller(&env, KASI).await;
    let now = env.now();

    let runs = env
        .app
        .runs_report(&kasi, &RunFilter::default(), now)
        .await
        .unwrap();
    assert_eq!(runs.plans.len(), 1);
    let lines = &runs.plans[0].runs;
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0].status, "failed", "failures first");
    assert!(
        lines[0]
            .error
            .as_deref()
            .unwrap()
            .contains("permission denied")
    );
    assert_eq!(runs.plans[0].counts.get("ok"), Some(&3));
    assert_eq!(runs.plans[0].bytes_added, 500);
    // A period before the runs is empty; a backwards one is refused.
    let empty = env
        .app
        .runs_report(
            &kasi,
            &RunFilter {
                until: Some(t0()),
                ..RunFilter::default()
            },
            now,
        )
        .await
        .unwrap();
    assert!(empty.plans.is_empty());
    assert_error(
        env.app
            .runs_report(
                &kasi,
                &RunFilter {
                    since: Some(now),
                    until: Some(t0()),
                    ..RunFilter::default()
                },
                now,
            )
            .await,
        invalid,
        "before",
    );

    let storage = env
        .app
        .storage_report(&kasi, None, None, now)
        .await
        .unwrap();
    assert_eq!(storage.agencies.len(), 1);
    let dinkes = &storage.agencies[0];
    assert_eq!(
        (
            dinkes.stored_bytes,
            dinkes.unique_bytes,
            dinkes.logical_bytes,
            dinkes.growth_bytes
        ),
        (350, 700, 2100, 50)
    );
    assert!((dinkes.dedup_savings - (1.0 - 700.0 / 2100.0)).abs() < 1e-9);
    assert!((dinkes.compression_savings - 0.5).abs() < 1e-9);
    assert_eq!(dinkes.history.len(), 2);

    // On time now; overdue once the next hourly slot and the hour of grace have passed.
    let schedule = env.app.schedule_report(&kasi, None, now).await.unwrap();
    assert_eq!(schedule.plans.len(), 1);
    assert!(!schedule.plans[0].overdue, "{schedule:?}");
    let later = env
        .app
        .schedule_report(&kasi, None, now + TimeDelta::hours(3))
        .await
        .unwrap();
    assert!(later.plans[0].overdue);
    assert!(later.plans[0].late_by_seconds > 0);
    assert_eq!(later.plans[0].last_status.as_deref(), Some("ok"));

    // SLA: the backup request's steps were done at once; a colocation request left at
    // step 1 for days is past its time standard, and named with its role.
    let request = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .unwrap()
        .request
        .id;
    let sla = env
        .app
        .sla_report(&kasi, now + TimeDelta::days(10))
        .await
        .unwrap();
    assert!(
        sla.overruns
            .iter()
            .any(|o| o.request_id == request && !o.roles.is_empty()),
        "{sla:?}"
    );
    assert!(
        sla.groups
            .iter()
            .any(|g| g.procedure == "colocation_handover" && g.open >= 1)
    );

    // An agency's account sees its own agency only.
    let skpd = caller(&env, SKPD).await;
    let own = env
        .app
        .storage_report(&skpd, None, None, now)
        .await
        .unwrap();
    assert_eq!(own.agencies.len(), 1);
    assert_error(
        env.app
            .schedule_report(&skpd, Some(env.kendal.id), now)
            .await,
        forbidden,
        "another agency",
    );
}
