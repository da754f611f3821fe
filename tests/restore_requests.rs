//! Restore requests (procedure C) end to end: the real daemon with an agency repository
//! and its replica on local disk, two agents on "the agency's servers", the officers at
//! the CLI. The restore plan is written at C2 and approved at C3; the system restores,
//! verifies (with the plan's check), decides C5, runs the fallback chain at C6 — from the
//! replica when the primary is damaged, the previous snapshot only once confirmed, to
//! verify differences when nothing is left — and the letter of C7 states what happened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod e2e;
use e2e::*;

struct Bench {
    server: String,
    site: Site,
    dir: PathBuf,
    web: i64,
    spare: i64,
    backup_request: i64,
    source: PathBuf,
}

impl Bench {
    /// Opens a restore request for the web server and takes it to step 2.
    fn open(&self, name: &str) -> i64 {
        let form = write(
            &self.dir,
            &format!("restore-{name}.toml"),
            &format!(
                "server_id = {}\nbackup_request = {}\nrestore_point = \"terbaru\"\ntarget = \"server simkes-web-01\"\nreason = \"{name}\"\n",
                self.web, self.backup_request
            ),
        );
        let id = ok(
            &self.server,
            &self.site.skpd,
            &[
                "request",
                "restore",
                "submit",
                "--agency",
                &self.site.dinkes.to_string(),
                "--subject",
                &format!("Restore {name}"),
                "--form",
                &form,
            ],
        )["request"]["id"]
            .as_i64()
            .unwrap();
        step(&self.server, &self.site.kadin, id, "complete", 1, &[]);
        id
    }

    /// Writes the plan at C2 (the options after the request id), completes C2 and
    /// approves it at C3.
    fn plan_and_approve(&self, request: i64, options: &[&str]) -> Value {
        let id = request.to_string();
        let mut args = vec!["restore-request", "plan", &id, "--source"];
        let web = self.web.to_string();
        args.push(&web);
        args.extend_from_slice(options);
        let planned = ok(&self.server, &self.site.petugas, &args);
        assert_eq!(planned["state"], "planning", "{planned}");
        step(
            &self.server,
            &self.site.petugas,
            request,
            "complete",
            2,
            &[],
        );
        step(
            &self.server,
            &self.site.kabid,
            request,
            "decide",
            3,
            &["--yes", "--reason", "rencana restore disetujui"],
        );
        planned
    }

    /// Waits until the restore of `request` is verified, ends in verify differences or
    /// waits for a confirmation.
    fn settle(&self, request: i64) -> Value {
        let output = cli(
            &self.server,
            &self.site.kasi,
            &["restore-request", "show", &request.to_string(), "--wait"],
        );
        assert!(
            matches!(output.status.code(), Some(0 | 3)),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
        if shown["state"] == "verify_differences" {
            assert_eq!(output.status.code(), Some(3), "verify differences exits 3");
        }
        shown
    }

    /// Waits until the request is at `step` (the system moves it); returns the steps it
    /// went through.
    fn wait_for_step(&self, request: i64, step: u64) -> Vec<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let state = request_state(&self.server, &self.site.kasi, request);
            if state["current_step"] == step || std::time::Instant::now() > deadline {
                assert_eq!(state["current_step"], step, "{state}");
                return state["state"]["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|record| record["step"].as_u64().unwrap())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The letter of C7, rendered.
    fn letter(&self, request: i64) -> String {
        self.document(request, "letter_restore_result")
    }

    /// The restore execution form of C7, rendered.
    fn form(&self, request: i64) -> String {
        self.document(request, "restore_execution_form")
    }

    fn document(&self, request: i64, kind: &str) -> String {
        let out = self.dir.join(format!("{kind}-{request}.html"));
        ok(
            &self.server,
            &self.site.kasi,
            &[
                "form",
                "render",
                &request.to_string(),
                "--form",
                kind,
                "--out",
                &out.display().to_string(),
            ],
        );
        std::fs::read_to_string(out).unwrap()
    }

    fn restored(&self, target: &Path) -> PathBuf {
        target.join(self.source.strip_prefix("/").unwrap())
    }
}

/// Packs of a repository (path → size).
fn packs(repo: &Path) -> std::collections::BTreeMap<PathBuf, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(repo.join("data")) else {
        return out;
    };
    for dir in dirs {
        for pack in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            let size = std::fs::metadata(&path).unwrap().len();
            out.insert(path, size);
        }
    }
    out
}

/// Flips a byte in every 512 of a file: every blob in it bigger than that fails
/// authentication, whatever the pack's layout (which follows the repository's random
/// chunker seed).
fn flip(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(path).unwrap();
    for byte in bytes.iter_mut().step_by(512) {
        *byte ^= 0x5a;
    }
    // Packs are written read-only.
    let mut permissions = std::fs::metadata(path).unwrap().permissions();
    permissions.set_mode(0o600);
    std::fs::set_permissions(path, permissions).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn attempts(shown: &Value) -> Vec<(String, String)> {
    shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The data directory and config of a daemon with Dinkes' replica on local disk under
/// `dir`, and the replica root.
fn replica_config(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let replica_root = dir.join("replica");
    let config = dir.join("cadang.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\n[scheduler]\ntick_secs = 1\nlease_secs = 5\nagent_wait_secs = 30\n[repositories]\nreplica_root = \"{}\"\n",
            replica_root.display()
        ),
    )
    .unwrap();
    (dir.join("var"), config, replica_root)
}

/// Dinkes' backup request for the web server taken to B2 with a plan backing `source`
/// up through the server's agent (B2 completed: its first run is queued).
fn simkes_plan(server: &str, site: &Site, dir: &Path, source: &Path, web: i64) -> (i64, String) {
    let backup_request = active_backup_request(server, site, site.dinkes, dir, "simkes");
    let path = source.display().to_string();
    let plan = agent_plan(server, &site.kasi, backup_request, "simkes", &path, web);
    step(server, &site.kasi, backup_request, "complete", 2, &[]);
    (backup_request, plan)
}

/// The location and password of Dinkes' repository (or its replica) from `cadang admin
/// repository`: break glass, for the engine's own commands.
fn break_glass(data: &Path, config: &Path, replica: bool) -> (String, String) {
    let mut command = std::process::Command::new(BIN);
    command
        .args(["admin", "repository", "--agency", "DINKES", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .env_remove("CADANG_CATALOG_URL")
        .env_remove("CADANG_MASTER_KEY");
    if replica {
        command.arg("--replica");
    }
    let printed = command.output().unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).unwrap();
    let mut lines = printed.lines().map(str::to_owned);
    (lines.next().unwrap(), lines.next().unwrap())
}

/// The engine's own command on a repository: break glass.
fn engine_cli(location: &str, password: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["-r", location])
        .args(args)
        .env("CADANG_PASSWORD", password)
        .output()
        .unwrap()
}

#[test]
fn restore_requests_run_their_plan_verify_fall_back_and_fill_the_letter() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config, replica_root) = replica_config(dir.path());
    let (_daemon, _admin, server, site) = Daemon::with_site(&data, Some(&config));
    let web = register_server(
        dir.path(),
        &server,
        &site.kasi,
        site.dinkes,
        "simkes-web-01",
        "SN-W1",
    );
    let spare = register_server(
        dir.path(),
        &server,
        &site.kasi,
        site.dinkes,
        "simkes-spare-01",
        "SN-S1",
    );
    let kendal = register_server(
        dir.path(),
        &server,
        &site.kasi,
        site.kendal,
        "kendal-01",
        "SN-K1",
    );
    let mut agents = Vec::new();
    let allowed_checks = path_directories();
    let allowed_checks: Vec<&str> = allowed_checks.iter().map(String::as_str).collect();
    for (name, id) in [("web", web), ("spare", spare)] {
        let token = enrollment_token(&server, &site.petugas, id);
        let state = dir.path().join(format!("agent-{name}"));
        let enrolled = enroll(&server, &token, &state);
        assert!(
            enrolled.status.success(),
            "{}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
        // The restore checks below run programs found in PATH.
        agents.push(AgentProcess::start_allowing(
            &state,
            &dir.path().join(format!("agent-{name}.log")),
            &allowed_checks,
        ));
    }

    // The agency's data, backed up twice through the agent and replicated after each.
    let source = dir.path().join("srv-simkes");
    std::fs::create_dir_all(source.join("html")).unwrap();
    std::fs::create_dir_all(source.join("db")).unwrap();
    std::fs::write(
        source.join("html/index.html"),
        "<h1>SIMKES</h1>\n".repeat(300),
    )
    .unwrap();
    std::fs::write(source.join("db/dump.sql"), noise(11, 2 << 20)).unwrap();
    std::fs::write(source.join("db/config.ini"), "port = 5432\n").unwrap();
    let (backup_request, plan) = simkes_plan(&server, &site, dir.path(), &source, web);
    assert_eq!(wait_for_run(&server, &site.kasi, &plan, 1)["status"], "ok");
    ok(
        &server,
        &site.petugas,
        &["plan", "run-now", &plan, "--kind", "replicate"],
    );
    let replicated = wait_for_run(&server, &site.kasi, &plan, 2);
    assert_eq!(replicated["status"], "ok", "{replicated}");
    // Break glass on the replica: its location and password open it with the engine's
    // own commands (a rewrite must reach the replica too); the primary's password does
    // not.
    let repository = |replica: bool| break_glass(&data, &config, replica);
    let ((primary_at, primary_password), (replica_at, replica_password)) =
        (repository(false), repository(true));
    assert_eq!(PathBuf::from(&replica_at), replica_root.join("dinkes"));
    let snapshots =
        |location: &str, password: &str| engine_cli(location, password, &["--json", "snapshots"]);
    let listed = snapshots(&replica_at, &replica_password);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let primary_listed: Value =
        serde_json::from_slice(&snapshots(&primary_at, &primary_password).stdout).unwrap();
    assert_eq!(listed[0]["original"], primary_listed[0]["id"], "{listed}");
    assert!(!snapshots(&replica_at, &primary_password).status.success());
    let first_tree = tree_of(&source);
    let primary = data.join("repositories/dinkes");
    let replica = replica_root.join("dinkes");
    let primary_first = packs(&primary);
    let replica_first = packs(&replica);
    assert!(!replica_first.is_empty(), "the replica holds packs");

    std::fs::write(source.join("db/new.bin"), noise(12, 1 << 20)).unwrap();
    std::fs::write(source.join("db/config.ini"), "port = 5433\n").unwrap();
    ok(&server, &site.petugas, &["plan", "run-now", &plan]);
    assert_eq!(wait_for_run(&server, &site.kasi, &plan, 3)["status"], "ok");
    ok(
        &server,
        &site.petugas,
        &["plan", "run-now", &plan, "--kind", "replicate"],
    );
    assert_eq!(wait_for_run(&server, &site.kasi, &plan, 4)["status"], "ok");
    let second_tree = tree_of(&source);
    // The packs only the second backup wrote (its new file's data), in both copies.
    let big = |packs: std::collections::BTreeMap<PathBuf, u64>,
               before: &std::collections::BTreeMap<PathBuf, u64>| {
        packs
            .into_iter()
            .filter(|(path, size)| !before.contains_key(path) && *size > 256 << 10)
            .map(|(path, _)| path)
            .collect::<Vec<_>>()
    };
    let primary_second = big(packs(&primary), &primary_first);
    let replica_second = big(packs(&replica), &replica_first);
    assert!(!primary_second.is_empty() && !replica_second.is_empty());

    let bench = Bench {
        server: server.clone(),
        site,
        dir: dir.path().to_owned(),
        web,
        spare,
        backup_request,
        source: source.clone(),
    };
    let site = &bench.site;

    // C3 approves a plan: without one it is refused, and the plan is written at C2 only.
    let no_plan = bench.open("tanpa-rencana");
    step(&server, &site.petugas, no_plan, "complete", 2, &[]);
    let why = refused(
        &server,
        &site.kabid,
        &[
            "step",
            "decide",
            &no_plan.to_string(),
            "3",
            "--yes",
            "--reason",
            "ok",
        ],
        "FAILED_PRECONDITION",
    );
    assert!(why.contains("no restore plan"), "{why}");
    refused(
        &server,
        &site.petugas,
        &[
            "restore-request",
            "plan",
            &no_plan.to_string(),
            "--source",
            &web.to_string(),
            "--target",
            "/tmp/x",
        ],
        "FAILED_PRECONDITION",
    );
    step(
        &server,
        &site.kabid,
        no_plan,
        "decide",
        3,
        &["--no", "--reason", "tidak ada rencana"],
    );

    // Who may plan, and what: never the agency itself, never another agency's server.
    let happy = bench.open("utama");
    refused(
        &server,
        &site.skpd,
        &[
            "restore-request",
            "plan",
            &happy.to_string(),
            "--source",
            &web.to_string(),
            "--target",
            "/tmp/x",
        ],
        "PERMISSION_DENIED",
    );
    refused(
        &server,
        &site.petugas,
        &[
            "restore-request",
            "plan",
            &happy.to_string(),
            "--source",
            &web.to_string(),
            "--target-server",
            &kendal.to_string(),
            "--target",
            "/tmp/x",
        ],
        "PERMISSION_DENIED",
    );
    refused(
        &server,
        &site.skpd_other,
        &["restore-request", "show", &happy.to_string()],
        "PERMISSION_DENIED",
    );

    // The happy path: restored, every file verified, the check passes, C4–C5 by the
    // system, the letter states it, the officer confirms C7.
    let target = dir.path().join("restored-happy");
    let restored = bench.restored(&target);
    let check = format!("test -s {}", restored.join("db/dump.sql").display());
    let planned = bench.plan_and_approve(
        happy,
        &[
            "--target",
            &target.display().to_string(),
            "--check",
            &check,
            "--fallback",
            "replica",
        ],
    );
    assert_eq!(planned["plan"]["check"]["command"][0], "test");
    let shown = bench.settle(happy);
    assert_eq!(shown["state"], "verified", "{shown}");
    assert_eq!(
        attempts(&shown),
        vec![("primary".to_owned(), "ok".to_owned())]
    );
    assert_eq!(
        shown["attempts"][0]["stats"]["check"]["passed"], true,
        "{shown}"
    );
    assert!(
        shown["approved_by"].as_str().unwrap().contains("kabid"),
        "{shown}"
    );
    assert_eq!(tree_of(&source), tree_of(&restored));
    assert_eq!(bench.wait_for_step(happy, 7), vec![1, 2, 3, 4, 5, 7]);
    let letter = bench.letter(happy);
    assert!(letter.contains("seluruh berkas terverifikasi"), "{letter}");
    assert!(letter.contains("lulus"), "the check is reported: {letter}");
    assert!(
        letter.contains("tidak diperlukan"),
        "no fallback step ran: {letter}"
    );
    let form = bench.form(happy);
    for expected in [
        "FORMULIR PELAKSANAAN RESTORE DATA BACK UP",
        "Rencana Restore",
        "simkes-web-01",
        "restore utama",
        "lulus",
        "Mengetahui,",
    ] {
        assert!(form.contains(expected), "the form lacks {expected}: {form}");
    }
    // A copy on demand: numbered anew; not the agency's to issue; a kind must exist.
    let copy = ok(
        &server,
        &site.kasi,
        &[
            "form",
            "issue",
            &happy.to_string(),
            "--kind",
            "restore_execution_form",
        ],
    );
    assert_eq!(copy["kind"], "restore_execution_form", "{copy}");
    assert!(
        copy["number"].as_str().unwrap().contains("/FPRD/"),
        "{copy}"
    );
    refused(
        &server,
        &site.skpd,
        &[
            "form",
            "issue",
            &happy.to_string(),
            "--kind",
            "restore_execution_form",
        ],
        "PERMISSION_DENIED",
    );
    refused(
        &server,
        &site.kasi,
        &["form", "issue", &happy.to_string(), "--kind", "surat_cinta"],
        "INVALID_ARGUMENT",
    );
    let done = step(&server, &site.petugas, happy, "complete", 7, &[]);
    assert_eq!(done["request"]["outcome"], "completed");

    // A plan may leave things out (a pattern a backup plan would read the same way); one
    // that cannot be read is refused at C2. What is restored verifies without them.
    let partial = bench.open("tanpa-db");
    let partial_target = dir.path().join("restored-partial");
    // The plan also deletes what the target holds and the snapshot does not, except
    // under what it leaves out.
    let stale = bench.restored(&partial_target).join("html/stale.php");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"<?php planted").unwrap();
    let local_db = bench.restored(&partial_target).join("db/local.conf");
    std::fs::create_dir_all(local_db.parent().unwrap()).unwrap();
    std::fs::write(&local_db, b"left out, so kept").unwrap();
    refused(
        &server,
        &site.petugas,
        &[
            "restore-request",
            "plan",
            &partial.to_string(),
            "--source",
            &web.to_string(),
            "--target",
            &partial_target.display().to_string(),
            "--exclude",
            "db/[",
        ],
        "INVALID_ARGUMENT",
    );
    let planned = bench.plan_and_approve(
        partial,
        &[
            "--target",
            &partial_target.display().to_string(),
            "--exclude",
            &source.join("db").display().to_string(),
            "--delete",
        ],
    );
    assert_eq!(planned["plan"]["delete"], true, "{planned}");
    assert_eq!(
        planned["plan"]["excludes"][0],
        source.join("db").display().to_string(),
        "{planned}"
    );
    let shown = bench.settle(partial);
    assert_eq!(shown["state"], "verified", "{shown}");
    let restored = bench.restored(&partial_target);
    assert_eq!(
        std::fs::read(restored.join("html/index.html")).unwrap(),
        std::fs::read(source.join("html/index.html")).unwrap()
    );
    let db: Vec<_> = std::fs::read_dir(restored.join("db"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        db,
        ["local.conf"],
        "the excluded directory stays out, and is kept"
    );
    assert!(!stale.exists(), "deleted: the snapshot does not hold it");
    // The form the approver signs says what was left out.
    bench.wait_for_step(partial, 7);
    let form = bench.form(partial);
    assert!(
        form.contains("Dikecualikan") && form.contains(&source.join("db").display().to_string()),
        "{form}"
    );
    assert!(
        form.contains("Penghapusan") && form.contains("tidak ada dalam snapshot dihapus"),
        "{form}"
    );
    step(&server, &site.petugas, partial, "complete", 7, &[]);

    // A check that fails (non-zero exit) or hangs (timeout) leads to C6; with nothing
    // left to try the result is verify differences, and the letter says so.
    for (name, check, expect) in [
        ("cek-gagal", "false", "exit status 1"),
        ("cek-macet", "sleep 30", "timed out"),
    ] {
        let request = bench.open(name);
        let target = dir.path().join(format!("restored-{name}"));
        bench.plan_and_approve(
            request,
            &[
                "--target",
                &target.display().to_string(),
                "--check",
                check,
                "--check-timeout",
                "2",
            ],
        );
        let shown = bench.settle(request);
        assert_eq!(shown["state"], "verify_differences", "{shown}");
        let summary = shown["verdicts"][0]["summary"].as_str().unwrap();
        assert!(summary.contains(expect), "{summary}");
        assert_eq!(
            bench.wait_for_step(request, 7),
            vec![1, 2, 3, 4, 5, 6, 7],
            "C6 ran"
        );
        let letter = bench.letter(request);
        assert!(letter.contains("verify differences"), "{letter}");
        step(&server, &site.kasi, request, "complete", 7, &[]);
    }

    // Damage in the primary: several packs garbled, one deleted. The restore finds it,
    // falls back to the replica, and every file matches the source.
    let mut primary_packs: Vec<PathBuf> = packs(&primary).into_keys().collect();
    primary_packs.sort();
    // Each pack once: flipping the same bytes twice would undo the damage.
    let garbled: std::collections::BTreeSet<&PathBuf> = primary_packs
        .iter()
        .filter(|p| primary_second.contains(p))
        .chain(primary_packs.iter().take(2))
        .collect();
    for pack in garbled {
        flip(pack);
    }
    let deleted = primary_packs
        .iter()
        .find(|p| {
            !primary_second.contains(p)
                && primary_first.get(*p).is_some_and(|size| *size > 256 << 10)
        })
        .expect("a data pack of the first backup");
    std::fs::remove_file(deleted).unwrap();
    let primary_before: std::collections::BTreeMap<PathBuf, Vec<u8>> = packs(&primary)
        .into_keys()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let repaired = bench.open("replika");
    let target = dir.path().join("restored-replica");
    bench.plan_and_approve(
        repaired,
        &[
            "--target",
            &target.display().to_string(),
            "--fallback",
            "replica,previous-snapshot",
        ],
    );
    let shown = bench.settle(repaired);
    assert_eq!(shown["state"], "verified", "{shown}");
    let tried = attempts(&shown);
    assert_eq!(tried.len(), 2, "{shown}");
    assert_ne!(tried[0].1, "ok", "the damage is found: {shown}");
    assert_eq!(tried[1], ("replica".to_owned(), "ok".to_owned()));
    assert!(
        shown["attempts"][1]["stats"]["repaired"].as_u64().unwrap() > 0,
        "{shown}"
    );
    assert_eq!(tree_of(&source), tree_of(&bench.restored(&target)));
    // The primary was not touched: the damage stays for repair, and is reported.
    let primary_after: std::collections::BTreeMap<PathBuf, Vec<u8>> = packs(&primary)
        .into_keys()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert_eq!(primary_before, primary_after);
    bench.wait_for_step(repaired, 7);
    let letter = bench.letter(repaired);
    assert!(letter.contains("replika"), "{letter}");
    let form = bench.form(repaired);
    for expected in [
        "restore utama",
        "baca chunk rusak dari replika",
        "dibaca dari repositori replika",
        "tidak berhasil",
    ] {
        assert!(form.contains(expected), "the form lacks {expected}: {form}");
    }
    step(&server, &site.petugas, repaired, "complete", 7, &[]);

    // Damage in the replica too: the new file is lost in both copies. The restore lists
    // it and the older snapshot waits for the approving role's confirmation.
    for pack in &replica_second {
        flip(pack);
    }
    let older = bench.open("snapshot-lama");
    let target = dir.path().join("restored-older");
    bench.plan_and_approve(
        older,
        &[
            "--target",
            &target.display().to_string(),
            "--fallback",
            "replica,previous-snapshot",
        ],
    );
    let shown = bench.settle(older);
    assert_eq!(shown["state"], "awaiting_confirmation", "{shown}");
    assert_eq!(attempts(&shown).len(), 2, "{shown}");
    let failed = shown["verdicts"][1]["report"]["failed"].to_string();
    let paths: Vec<&str> = shown["verdicts"][1]["report"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["path"].as_str().unwrap().trim_start_matches('/'))
        .collect();
    let once: std::collections::BTreeSet<&&str> = paths.iter().collect();
    assert_eq!(paths.len(), once.len(), "each file listed once: {shown}");
    assert!(
        failed.contains("new.bin"),
        "the affected file is listed: {shown}"
    );
    assert!(
        !failed.contains("dump.sql"),
        "only the affected file: {shown}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let still = ok(
        &server,
        &site.kasi,
        &["restore-request", "show", &older.to_string()],
    );
    assert_eq!(
        attempts(&still).len(),
        2,
        "nothing older runs unconfirmed: {still}"
    );
    refused(
        &server,
        &site.petugas,
        &[
            "restore-request",
            "confirm-older",
            &older.to_string(),
            "--reason",
            "x",
        ],
        "PERMISSION_DENIED",
    );
    ok(
        &server,
        &site.kabid,
        &[
            "restore-request",
            "confirm-older",
            &older.to_string(),
            "--reason",
            "data kemarin cukup",
        ],
    );
    let shown = bench.settle(older);
    assert_eq!(shown["state"], "verified", "{shown}");
    let tried = attempts(&shown);
    assert_eq!(
        tried[2],
        ("previous_snapshot".to_owned(), "ok".to_owned()),
        "{shown}"
    );
    assert_eq!(first_tree, tree_of(&bench.restored(&target)));
    assert_ne!(first_tree, second_tree);
    bench.wait_for_step(older, 7);
    assert!(bench.letter(older).contains("snapshot sebelumnya"));
    let form = bench.form(older);
    for expected in [
        "Konfirmasi snapshot sebelumnya",
        "new.bin",
        "snapshot sebelumnya",
    ] {
        assert!(form.contains(expected), "the form lacks {expected}: {form}");
    }

    // With only the replica to fall back on, the chain is exhausted: verify differences,
    // the affected file listed. While the restore waits for its agent, the officer
    // cannot complete C4 over it.
    let lost = bench.open("hilang");
    let target = dir.path().join("restored-lost");
    drop(agents.remove(0));
    std::thread::sleep(Duration::from_millis(500));
    let alternate = dir.path().join("restored-alternate");
    let spare = bench.spare.to_string();
    bench.plan_and_approve(
        lost,
        &[
            "--target",
            &target.display().to_string(),
            "--fallback",
            "replica,alternate-target",
            "--alternate-server",
            &spare,
            "--alternate-dir",
            &alternate.display().to_string(),
        ],
    );
    bench.wait_for_step(lost, 4);
    let why = refused(
        &server,
        &site.petugas,
        &["step", "complete", &lost.to_string(), "4"],
        "FAILED_PRECONDITION",
    );
    assert!(why.contains("has not ended"), "{why}");
    agents.push(AgentProcess::start_allowing(
        &dir.path().join("agent-web"),
        &dir.path().join("agent-web.log"),
        &allowed_checks,
    ));
    let shown = bench.settle(lost);
    assert_eq!(shown["state"], "verify_differences", "{shown}");
    let tried: Vec<String> = attempts(&shown)
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    assert_eq!(tried, ["primary", "replica", "alternate_target"], "{shown}");
    assert_eq!(
        shown["attempts"][2]["target_server_id"], bench.spare,
        "{shown}"
    );
    assert!(
        shown["verdicts"][1]["report"]["failed"]
            .to_string()
            .contains("new.bin")
    );
    // The alternate target got everything that could be read, verified.
    assert_eq!(
        std::fs::read(bench.restored(&alternate).join("db/dump.sql")).unwrap(),
        second_tree["db/dump.sql"]
    );
    bench.wait_for_step(lost, 7);
    let letter = bench.letter(lost);
    assert!(letter.contains("tidak berhasil"), "{letter}");

    // A hold keeps the web server's latest snapshot past every retention: set and released
    // by the heads of section and division (and the administrator), with a reason.
    let web_id = web.to_string();
    let hold = |reason: &str, extra: &[&str]| {
        let mut args = vec!["restore-job", "hold", web_id.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--reason", reason]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    fn as_strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    for token in [&site.petugas, &site.skpd] {
        refused(
            &server,
            token,
            &as_strs(&hold("pemeriksaan BPK 2026", &["latest"])),
            "PERMISSION_DENIED",
        );
    }
    refused(
        &server,
        &site.kasi,
        &as_strs(&hold(" ", &["latest"])),
        "INVALID_ARGUMENT",
    );
    refused(
        &server,
        &site.kasi,
        &as_strs(&hold("pemeriksaan BPK 2026", &["ffffffff"])),
        "INVALID_ARGUMENT",
    );
    let held = ok(
        &server,
        &site.kasi,
        &as_strs(&hold("pemeriksaan BPK 2026", &["latest"])),
    );
    assert_eq!(
        (held["held"].as_bool(), held["changed"].as_bool()),
        (Some(true), Some(true)),
        "{held}"
    );
    let held_id = held["snapshot"].as_str().unwrap().to_owned();
    let listed = ok(&server, &site.kasi, &["restore-job", "snapshots", &web_id]);
    let newest = listed.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (newest["id"].as_str(), newest["held"].as_bool()),
        (Some(held_id.as_str()), Some(true)),
        "{listed}"
    );
    let again = ok(
        &server,
        &site.kabid,
        &as_strs(&hold("sekali lagi", &["latest"])),
    );
    assert_eq!(
        (again["snapshot"].as_str(), again["changed"].as_bool()),
        (Some(held_id.as_str()), Some(false))
    );
    let released = ok(
        &server,
        &site.kabid,
        &as_strs(&hold("pemeriksaan selesai", &[&held_id[..12], "--release"])),
    );
    assert_eq!(
        (released["held"].as_bool(), released["changed"].as_bool()),
        (Some(false), Some(true))
    );
    let listed = ok(&server, &site.kasi, &["restore-job", "snapshots", &web_id]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["held"] == false),
        "{listed}"
    );

    // Every attempt and every step is in the audit trail.
    let audit = ok(&server, &site.admin, &["audit", "export"]).to_string();
    for needle in [
        "snapshot.hold",
        "pemeriksaan BPK 2026",
        "snapshot.release",
        "restore_plan.set",
        "restore_plan.approve",
        "restore_plan.confirm_older",
        "previous_snapshot",
        "system:",
    ] {
        assert!(audit.contains(needle), "audit lacks {needle}");
    }
    drop(agents);
}

/// An erasure takes a file out of every backup of a server, in the agency's repository and
/// its replica: only the head of the division (and the administrator) may, with a
/// reason; a dry run shows what would go; a held snapshot stops it; the audit trail keeps
/// the patterns and the snapshots, not the paths; afterwards no snapshot of either
/// repository holds the file, both check clean, the replica restores without it, and
/// the next replication copies nothing again.
#[test]
fn an_erasure_takes_files_out_of_every_backup_and_of_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config, _) = replica_config(dir.path());
    let (_daemon, _admin, server, site) = Daemon::with_site(&data, Some(&config));
    let web = register_server(
        dir.path(),
        &server,
        &site.kasi,
        site.dinkes,
        "simkes-web-01",
        "SN-W1",
    );
    let state = dir.path().join("agent-web");
    let enrolled = enroll(
        &server,
        &enrollment_token(&server, &site.petugas, web),
        &state,
    );
    assert!(enrolled.status.success(), "{enrolled:?}");
    let _agent = AgentProcess::start(&state, &dir.path().join("agent-web.log"));

    let source = dir.path().join("srv-simkes");
    std::fs::create_dir_all(source.join("html")).unwrap();
    std::fs::create_dir_all(source.join("data")).unwrap();
    std::fs::write(source.join("html/index.html"), "<h1>SIMKES</h1>\n").unwrap();
    std::fs::write(source.join("data/ktp-warga.csv"), noise(21, 300 << 10)).unwrap();
    std::fs::write(source.join("data/jadwal.csv"), "senin,dokter umum\n").unwrap();
    let (_, plan) = simkes_plan(&server, &site, dir.path(), &source, web);
    assert_eq!(wait_for_run(&server, &site.kasi, &plan, 1)["status"], "ok");
    std::fs::write(source.join("html/index.html"), "<h1>SIMKES v2</h1>\n").unwrap();
    ok(&server, &site.petugas, &["plan", "run-now", &plan]);
    assert_eq!(wait_for_run(&server, &site.kasi, &plan, 2)["status"], "ok");
    ok(
        &server,
        &site.petugas,
        &["plan", "run-now", &plan, "--kind", "replicate"],
    );
    let replicated = wait_for_run(&server, &site.kasi, &plan, 3);
    assert_eq!(replicated["stats"]["snapshots_copied"], 2, "{replicated}");
    let (primary_at, primary_password) = break_glass(&data, &config, false);
    let (replica_at, replica_password) = break_glass(&data, &config, true);
    let holding = |location: &str, password: &str| {
        let found = engine_cli(location, password, &["--json", "find", "ktp-warga.csv"]);
        assert!(found.status.success(), "{found:?}");
        String::from_utf8_lossy(&found.stdout)
            .matches("ktp-warga.csv")
            .count()
    };
    assert!(holding(&primary_at, &primary_password) >= 2);
    assert!(holding(&replica_at, &replica_password) >= 2);

    let web_id = web.to_string();
    let erase = |token: &str, reason: &str, extra: &[&str]| {
        let mut args = vec!["restore-job", "erase", web_id.as_str(), "--reason", reason];
        args.extend_from_slice(extra);
        (
            token.to_owned(),
            args.into_iter().map(str::to_owned).collect::<Vec<_>>(),
        )
    };
    let refuse = |(token, args): (String, Vec<String>), code: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&server, &token, &args, code)
    };
    let run_erase = |(token, args): (String, Vec<String>)| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&server, &token, &args)
    };
    let reason = "permintaan penghapusan data pribadi 12/2026";
    for token in [&site.petugas, &site.kasi, &site.skpd] {
        refuse(
            erase(token, reason, &["-e", "ktp-*.csv"]),
            "PERMISSION_DENIED",
        );
    }
    refuse(
        erase(&site.kabid, " ", &["-e", "ktp-*.csv"]),
        "INVALID_ARGUMENT",
    );
    refuse(
        erase(&site.kabid, reason, &["-e", "a["]),
        "INVALID_ARGUMENT",
    );
    let emptied = refuse(
        erase(&site.kabid, reason, &["-e", &source.display().to_string()]),
        "INVALID_ARGUMENT",
    );
    assert!(
        emptied.contains("every path") && emptied.contains("narrow the patterns"),
        "{emptied}"
    );

    // A dry run lists what would go and changes nothing.
    let before = ok(&server, &site.kasi, &["restore-job", "snapshots", &web_id]);
    let preview = run_erase(erase(
        &site.kabid,
        reason,
        &["-e", "ktp-*.csv", "--dry-run"],
    ));
    assert_eq!(preview["dry_run"], true, "{preview}");
    let snapshots = preview["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{preview}");
    let csv = source.join("data/ktp-warga.csv").display().to_string();
    for snapshot in snapshots {
        assert_eq!(snapshot["paths"], serde_json::json!([csv]), "{preview}");
        assert_eq!(snapshot["replaced_by"], "", "{preview}");
    }
    assert_eq!(
        ok(&server, &site.kasi, &["restore-job", "snapshots", &web_id]),
        before
    );

    // A held snapshot it would change stops it, until the hold is released.
    ok(
        &server,
        &site.kasi,
        &[
            "restore-job",
            "hold",
            &web_id,
            "latest",
            "--reason",
            "audit BPK",
        ],
    );
    let why = refuse(
        erase(&site.kabid, reason, &["-e", "ktp-*.csv"]),
        "FAILED_PRECONDITION",
    );
    assert!(why.contains("held"), "{why}");
    ok(
        &server,
        &site.kasi,
        &[
            "restore-job",
            "hold",
            &web_id,
            "latest",
            "--reason",
            "selesai",
            "--release",
        ],
    );

    let erased = run_erase(erase(&site.kabid, reason, &["-e", "ktp-*.csv"]));
    assert_eq!(erased["dry_run"], false, "{erased}");
    assert_eq!(erased["snapshots"].as_array().unwrap().len(), 2, "{erased}");
    assert_eq!(erased["replica"], true, "{erased}");
    assert_eq!(erased["replica_copies_replaced"], 2, "{erased}");
    assert!(erased["packs_repacked"].as_u64().unwrap() >= 1, "{erased}");
    assert!(
        erased["bytes_marked"].as_u64().unwrap() >= 300 << 10,
        "{erased}"
    );
    assert!(!erased["deletable_after"].as_str().unwrap().is_empty());
    assert_eq!(erased["notes"], serde_json::json!([]), "{erased}");
    assert_eq!(erased["remaining"], serde_json::json!([]), "{erased}");
    let listed = ok(&server, &site.kasi, &["restore-job", "snapshots", &web_id]);
    let ids = |list: &Value, field: &str| {
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[field].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&listed, "id"),
        ids(&erased["snapshots"], "replaced_by"),
        "{listed}"
    );
    let found = ok(
        &server,
        &site.kasi,
        &["restore-job", "find", &web_id, "ktp-warga.csv"],
    );
    assert_eq!(found["snapshots"], serde_json::json!([]), "{found}");
    // Again: nothing left to take out.
    let again = run_erase(erase(&site.kabid, reason, &["-e", "ktp-*.csv"]));
    assert_eq!(again["snapshots"], serde_json::json!([]), "{again}");

    // Neither repository holds it; both check clean; the replica restores without it.
    for (location, password) in [
        (&primary_at, &primary_password),
        (&replica_at, &replica_password),
    ] {
        assert_eq!(holding(location, password), 0, "{location}");
        let checked = engine_cli(location, password, &["check", "--read-data"]);
        assert!(checked.status.success(), "{checked:?}");
    }
    let target = dir.path().join("from-replica");
    let restored = engine_cli(
        &replica_at,
        &replica_password,
        &[
            "restore",
            "latest",
            "--verify",
            "--target",
            &target.display().to_string(),
        ],
    );
    assert!(restored.status.success(), "{restored:?}");
    let root = target.join(source.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(root.join("html/index.html")).unwrap(),
        b"<h1>SIMKES v2</h1>\n"
    );
    assert!(root.join("data/jadwal.csv").exists());
    assert!(!root.join("data/ktp-warga.csv").exists());
    // The replica already holds copies of the replacements.
    ok(
        &server,
        &site.petugas,
        &["plan", "run-now", &plan, "--kind", "replicate"],
    );
    let replicated = wait_for_run(&server, &site.kasi, &plan, 4);
    assert_eq!(replicated["stats"]["snapshots_copied"], 0, "{replicated}");

    let audit = ok(&server, &site.admin, &["audit", "export"]).to_string();
    assert!(audit.contains("snapshot.erase") && audit.contains(reason));
    assert!(audit.contains("ktp-*.csv"));
    assert!(
        !audit.contains("ktp-warga.csv"),
        "the audit trail names no path erased"
    );
}
