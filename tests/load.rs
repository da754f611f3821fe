//! Load: many agents and many concurrent officers' clients on one daemon over loopback,
//! for a bounded time.
//!
//! Every agent is a real agent (`cadang::agent::run`, in this process), enrolled for its
//! own server and backing it up on a ten-second schedule; every client makes the calls
//! the CLI makes (who am I, requests, plans, runs) over its own connection, in a loop.
//! It passes when no call failed and every scheduled slot of the window ran exactly once
//! and `ok` (none lost to a catch-up, none twice); it prints the call latencies.
//!
//! Sized by `CADANG_LOAD_AGENTS` (50), `CADANG_LOAD_CLIENTS` (200) and
//! `CADANG_LOAD_SECS` (20 here; docs/RELIABILITY.md has the long run).

mod e2e;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cadang::rpc::pb;
use chrono::{DateTime, Utc};
use e2e::*;
use serde_json::Value;

/// Seconds between two scheduled backups of a plan.
const INTERVAL_SECS: i64 = 10;

fn sized(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn authorised<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("an ASCII token"),
    );
    request
}

/// What the clients saw.
#[derive(Default)]
struct Calls {
    latencies_us: Vec<u64>,
    errors: Vec<String>,
}

/// One client: its own connection, the officers' calls in turn, a short pause between.
async fn client(
    server: String,
    token: String,
    seed: usize,
    until: Instant,
    calls: Arc<Mutex<Calls>>,
) {
    let channel = match tonic::transport::Endpoint::from_shared(server)
        .expect("a valid address")
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(error) => {
            calls
                .lock()
                .unwrap()
                .errors
                .push(format!("connect: {error}"));
            return;
        }
    };
    let mut auth = pb::auth_service_client::AuthServiceClient::new(channel.clone());
    let mut requests = pb::request_service_client::RequestServiceClient::new(channel.clone());
    let mut plans = pb::plan_service_client::PlanServiceClient::new(channel.clone());
    let mut runs = pb::run_service_client::RunServiceClient::new(channel);
    let mut turn = seed;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let result = match turn % 4 {
            0 => auth
                .who_am_i(authorised(pb::WhoAmIRequest {}, &token))
                .await
                .map(drop),
            1 => requests
                .list_requests(authorised(
                    pb::ListRequestsRequest {
                        active_only: true,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(drop),
            2 => plans
                .list_plans(authorised(pb::ListPlansRequest::default(), &token))
                .await
                .map(drop),
            _ => runs
                .list_runs(authorised(
                    pb::ListRunsRequest {
                        limit: 20,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(drop),
        };
        let took = started.elapsed();
        match result {
            Ok(()) => latencies.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX)),
            Err(status) => errors.push(format!("{:?}: {}", status.code(), status.message())),
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut calls = calls.lock().unwrap();
    calls.latencies_us.extend(latencies);
    calls.errors.extend(errors);
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank] as f64 / 1000.0
}

fn time_of(run: &Value, field: &str) -> Option<DateTime<Utc>> {
    run[field]
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

#[test]
fn many_agents_and_clients_on_one_daemon() {
    let agents = sized("CADANG_LOAD_AGENTS", 50);
    let clients = sized("CADANG_LOAD_CLIENTS", 200);
    let secs = sized("CADANG_LOAD_SECS", 20) as u64;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let config = dir.path().join("cadang.toml");
    std::fs::write(
        &config,
        "[daemon]\nlisten = \"127.0.0.1:0\"\n[scheduler]\ntick_secs = 1\nlease_secs = 10\nmax_parallel_runs = 4\n",
    )
    .unwrap();
    let (daemon, _admin, server, site) = Daemon::with_site(&data, Some(&config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The agency's servers, each with its agent and a little data of its own.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let mut running = Vec::new();
    for n in 0..agents {
        let id = register_server(
            dir.path(),
            &server,
            &site.kasi,
            site.dinkes,
            &format!("beban-{n:02}"),
            &format!("SN-LOAD-{n:02}"),
        );
        let token = enrollment_token(&server, &site.petugas, id);
        let state = cadang::agent::StateDir(dir.path().join(format!("agent-{n:02}")));
        runtime
            .block_on(cadang::agent::enroll(&state, &server, None, &token))
            .unwrap_or_else(|error| panic!("agent {n} enrols: {error:#}"));
        running.push(runtime.spawn(cadang::agent::run(
            state,
            cadang::agent::programs::AllowedPrograms::default(),
            stopped.clone(),
        )));
        let source = dir.path().join(format!("srv-{n:02}"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("data.bin"), noise(n as u64 + 1, 64 << 10)).unwrap();
        servers.push((id, source));
    }

    // One backup request, one plan per server every ten seconds, on schedule (B5).
    let request = active_backup_request(&server, &site, site.dinkes, dir.path(), "beban");
    let plans: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(n, (id, source))| {
            ok(
                &server,
                &site.kasi,
                &[
                    "plan",
                    "create",
                    "--request",
                    &request.to_string(),
                    "--name",
                    &format!("beban-{n:02}"),
                    "--path",
                    &source.display().to_string(),
                    "--on-server",
                    &id.to_string(),
                    "--schedule",
                    &format!("*/{INTERVAL_SECS} * * * * *"),
                ],
            )[0]["id"]
                .as_i64()
                .unwrap()
                .to_string()
        })
        .collect();
    step(&server, &site.kasi, request, "complete", 2, &[]);
    for plan in &plans {
        let first = wait_for_run(&server, &site.kasi, plan, 1);
        assert_eq!(first["status"], "ok", "{first}");
    }
    step(&server, &site.petugas, request, "complete", 3, &[]);
    step(
        &server,
        &site.kasi,
        request,
        "decide",
        4,
        &["--yes", "--reason", "lanjut"],
    );
    step(&server, &site.petugas, request, "complete", 5, &[]);

    // The window: every client calls until its end.
    let window_start = Utc::now();
    let until = Instant::now() + Duration::from_secs(secs);
    let calls = Arc::new(Mutex::new(Calls::default()));
    let tokens = [
        site.kasi.clone(),
        site.petugas.clone(),
        site.kabid.clone(),
        site.admin.clone(),
        site.skpd.clone(),
    ];
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..clients {
            tasks.push(tokio::spawn(client(
                server.clone(),
                tokens[n % tokens.len()].clone(),
                n,
                until,
                calls.clone(),
            )));
        }
        for task in tasks {
            task.await.expect("a client task ends");
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let window_end = Utc::now();

    // Every slot due in the window ends before the runs are judged.
    let deadline = Instant::now() + Duration::from_secs(120);
    let all_runs = || -> Vec<Value> {
        plans
            .iter()
            .flat_map(|plan| {
                ok(
                    &server,
                    &site.kasi,
                    &["run", "list", "--plan", plan, "--limit", "1000"],
                )
                .as_array()
                .unwrap()
                .clone()
            })
            .collect()
    };
    let runs: Vec<Value> = loop {
        let runs = all_runs();
        let pending = runs.iter().any(|run| {
            ["queued", "running"].contains(&run["status"].as_str().unwrap_or(""))
                && time_of(run, "due_at").is_some_and(|due| due <= window_end)
        });
        if !pending {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "runs of the window still pending"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = stop.send(true);
    runtime.block_on(async {
        for agent in running {
            let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
        }
    });

    // Calls: none failed.
    let calls = Arc::try_unwrap(calls).ok().unwrap().into_inner().unwrap();
    let mut latencies = calls.latencies_us;
    latencies.sort_unstable();
    assert!(
        calls.errors.is_empty(),
        "{} call(s) failed, first: {:?}",
        calls.errors.len(),
        calls.errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(!latencies.is_empty());

    // Runs: every slot of the window ran once, on schedule, ok.
    let mut slots: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut in_window = 0usize;
    for run in &runs {
        let Some(due) = time_of(run, "due_at") else {
            continue;
        };
        if run["kind"] != "backup" || due < window_start || due > window_end {
            continue;
        }
        in_window += 1;
        assert_eq!(run["status"], "ok", "{run}");
        assert_eq!(
            run["trigger"], "schedule",
            "a slot was lost to a catch-up: {run}"
        );
        slots
            .entry(run["plan_id"].to_string())
            .or_default()
            .push(due);
    }
    let expected_per_plan = (secs as i64 / INTERVAL_SECS).saturating_sub(1).max(1) as usize;
    assert_eq!(slots.len(), plans.len(), "every plan ran in the window");
    for (plan, mut due) in slots {
        due.sort();
        let count = due.len();
        due.dedup();
        assert_eq!(due.len(), count, "plan {plan}: a slot ran twice");
        assert!(
            due.len() >= expected_per_plan,
            "plan {plan}: {} slot(s) in a {secs} s window",
            due.len()
        );
        for pair in due.windows(2) {
            assert_eq!(
                (pair[1] - pair[0]).num_seconds(),
                INTERVAL_SECS,
                "plan {plan}: a slot between {} and {} was lost",
                pair[0],
                pair[1]
            );
        }
    }
    let total = latencies.len();
    eprintln!(
        "load: {agents} agents + {clients} clients for {elapsed:.0} s: {total} calls ({:.0}/s), 0 errors, p50 = {:.1} ms, p99 = {:.1} ms, max = {:.1} ms; {in_window} scheduled backups in the window, all ok, none lost or twice",
        total as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    drop(daemon);
}
