//! What the end-to-end tests share: the real daemon on a free port with a temporary data
//! directory, the real CLI as different users, a directory set up through it, agents.
#![allow(dead_code)]

#[path = "../common/unprivileged.rs"]
pub mod unprivileged;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cadang");

/// The daemon's log, beside its data directory (appended across restarts).
pub fn log_file(data: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data))
        .expect("the log file opens")
}

/// Where the daemon of `data` logs (`CADANG_E2E_LOG` gathers every daemon's log).
pub fn log_path(data: &Path) -> PathBuf {
    match std::env::var_os("CADANG_E2E_LOG") {
        Some(path) => PathBuf::from(path),
        None => data.with_extension("log"),
    }
}

/// Every byte the daemon left on disk: catalog, WAL, key file, log.
pub fn bytes_under(path: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            all.extend(bytes_under(&entry.unwrap().path()));
        }
    } else if let Ok(bytes) = std::fs::read(path) {
        all.extend(bytes);
    }
    all
}

/// A running daemon; stopped with SIGTERM on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub env: Vec<(String, String)>,
    pub config: Option<PathBuf>,
}

impl Daemon {
    pub fn start(data: &Path, env: &[(&str, &str)], config: Option<&Path>) -> Daemon {
        Self::try_start(data, env, config).unwrap_or_else(|| {
            panic!(
                "the daemon did not start; its log:\n{}",
                std::fs::read_to_string(log_path(data)).unwrap_or_default()
            )
        })
    }

    /// Starts the daemon; `None` when it exits before it listens (its error is in its
    /// log).
    pub fn try_start(data: &Path, env: &[(&str, &str)], config: Option<&Path>) -> Option<Daemon> {
        let mut command = Command::new(BIN);
        command.arg("daemon").arg("--data-dir").arg(data);
        let config = match config {
            Some(config) => config.to_owned(),
            None => {
                // Tests do not wait ten seconds for a scheduler tick. Replicas go to a
                // second directory beside the data directory. The authorisation tests
                // present hundreds of refused tokens from loopback on purpose: the
                // lockout (tested on its own) is set beyond them.
                let path = data.with_extension("toml");
                std::fs::write(
                    &path,
                    format!(
                        "[daemon]\nlisten = \"127.0.0.1:0\"\nauth_max_failures = 100000\n[scheduler]\ntick_secs = 1\nlease_secs = 5\n[repositories]\nreplica_root = \"{}\"\n",
                        data.with_extension("replica").display()
                    ),
                )
                .unwrap();
                path
            }
        };
        command.arg("--config").arg(&config);
        command
            .env_remove("CADANG_CATALOG_URL")
            .env_remove("CADANG_MASTER_KEY")
            .env("CADANG_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log_file(data));
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the daemon starts");
        let stdout = child.stdout.take().expect("stdout");
        // A daemon that neither listens nor exits within a minute (its disk dead under
        // it) did not start either.
        let (said, first_line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = said.send(line);
        });
        let line = first_line
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("cadang daemon listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let addr = addr.to_owned();
        Some(Daemon {
            child,
            addr,
            data: data.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            config: Some(config),
        })
    }

    /// Stops with SIGTERM and waits; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// SIGKILL, then the same daemon started again: a crash and its recovery.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again();
    }

    pub fn restart(&mut self) {
        assert!(self.stop(), "the daemon stops cleanly on SIGTERM");
        self.start_again();
    }

    fn start_again(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let next = Daemon::start(&self.data, &env, self.config.as_deref());
        *self = next;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A daemon on `data` (with `config`, or the tests' default), its first
    /// administrator's token, its URL, and the people and agencies of [`set_up`].
    pub fn with_site(data: &Path, config: Option<&Path>) -> (Daemon, String, String, Site) {
        let daemon = Daemon::start(data, &[], config);
        let admin = Daemon::bootstrap(data, &[]);
        let server = daemon.url();
        let site = set_up(&server, &admin);
        (daemon, admin, server, site)
    }

    pub fn bootstrap(data: &Path, env: &[(&str, &str)]) -> String {
        Self::try_bootstrap(data, env).unwrap_or_else(|stderr| panic!("bootstrap: {stderr}"))
    }

    /// The first administrator's token, or what `cadang admin bootstrap` said.
    pub fn try_bootstrap(data: &Path, env: &[(&str, &str)]) -> Result<String, String> {
        let mut command = Command::new(BIN);
        command
            .args(["admin", "bootstrap", "--username", "admin", "--data-dir"])
            .arg(data)
            .env_remove("CADANG_CATALOG_URL")
            .env_remove("CADANG_MASTER_KEY");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("bootstrap runs");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(String::from_utf8(output.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Runs the CLI against `server` with `token`.
pub fn cli(server: &str, token: &str, args: &[&str]) -> Output {
    client(server, token)
        .arg("--json")
        .args(args)
        .output()
        .expect("the CLI runs")
}

/// The CLI pointed at `server` with `token`, and nothing from the environment or a
/// `cli.toml` that could point it elsewhere.
fn client(server: &str, token: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--server")
        .arg(server)
        .env("CADANG_TOKEN", token)
        .env("CADANG_CLI_CONFIG", "/nonexistent/cadang-cli.toml")
        .env_remove("CADANG_SERVER")
        .env_remove("CADANG_CA");
    command
}

/// Runs the CLI without `--json` and expects success; returns the text an officer reads.
pub fn cli_text(server: &str, token: &str, args: &[&str]) -> String {
    let output = client(server, token)
        .args(args)
        .output()
        .expect("the CLI runs");
    assert!(
        output.status.success(),
        "`cadang {}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("text output")
}

/// Runs the CLI and expects success; returns its JSON output.
pub fn ok(server: &str, token: &str, args: &[&str]) -> Value {
    let output = cli(server, token, args);
    assert!(
        output.status.success(),
        "`cadang {}` failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()))
}

/// Runs the CLI and expects failure with `code` in its one-line error.
pub fn refused(server: &str, token: &str, args: &[&str], code: &str) -> String {
    let output = cli(server, token, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "`cadang {}` should fail with {code}",
        args.join(" ")
    );
    assert!(
        stderr.contains(code),
        "`cadang {}`: expected {code}, got: {stderr}",
        args.join(" ")
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// The tokens of a fully set-up directory.
pub struct Site {
    pub admin: String,
    pub kadin: String,
    pub kabid: String,
    pub kasi: String,
    pub petugas: String,
    pub skpd: String,
    pub skpd_other: String,
    pub dinkes: i64,
    pub kendal: i64,
    pub responsible: i64,
}

pub fn token_for(server: &str, admin: &str, user: &str) -> String {
    let created = ok(
        server,
        admin,
        &["token", "create", "--user", user, "--label", "e2e"],
    );
    created["token"].as_str().expect("a token").to_owned()
}

/// Directory, accounts, tokens and capacity through the CLI, as ADMIN and KASI_INFRAS.
pub fn set_up(server: &str, admin: &str) -> Site {
    let dinkes = ok(
        server,
        admin,
        &[
            "agency",
            "add",
            "--code",
            "DINKES",
            "--name",
            "Dinas Kesehatan Provinsi Jawa Tengah",
            "--address",
            "Jl. Piere Tendean No. 24, Semarang",
        ],
    )[0]["id"]
        .as_i64()
        .unwrap();
    let kendal = ok(
        server,
        admin,
        &[
            "agency",
            "add",
            "--code",
            "KAB-KENDAL",
            "--kind",
            "kabupaten",
            "--name",
            "Diskominfo Kabupaten Kendal",
            "--address",
            "Jl. Soekarno-Hatta No. 193, Kendal",
        ],
    )[0]["id"]
        .as_i64()
        .unwrap();
    let responsible = ok(
        server,
        admin,
        &[
            "person",
            "add",
            "--name",
            "dr. Siti Rahayu, M.Kes.",
            "--nip",
            "19750812 200003 2 004",
            "--agency",
            &dinkes.to_string(),
        ],
    )["id"]
        .as_i64()
        .unwrap();
    let dinkes_s = dinkes.to_string();
    let kendal_s = kendal.to_string();
    for (user, role, agency) in [
        ("kadin", "KADIN", None),
        ("kabid", "KABID_TIK", None),
        ("kasi", "KASI_INFRAS", None),
        ("petugas", "PETUGAS", None),
        ("skpd-dinkes", "SKPD", Some(dinkes_s.as_str())),
        ("skpd-kendal", "SKPD", Some(kendal_s.as_str())),
    ] {
        let mut args = vec!["user", "add", user, "--role", role];
        if let Some(agency) = agency {
            args.extend(["--agency", agency]);
        }
        ok(server, admin, &args);
    }
    let site = Site {
        admin: admin.to_owned(),
        kadin: token_for(server, admin, "kadin"),
        kabid: token_for(server, admin, "kabid"),
        kasi: token_for(server, admin, "kasi"),
        petugas: token_for(server, admin, "petugas"),
        skpd: token_for(server, admin, "skpd-dinkes"),
        skpd_other: token_for(server, admin, "skpd-kendal"),
        dinkes,
        kendal,
        responsible,
    };
    let feed = ok(
        server,
        admin,
        &[
            "capacity", "add-feed", "--name", "PLN-A", "--watts", "20000",
        ],
    )["id"]
        .as_i64()
        .unwrap();
    ok(
        server,
        &site.kasi,
        &[
            "capacity",
            "add-rack",
            "--name",
            "R01",
            "--noc",
            "NOC-1",
            "--location",
            "Ruang Server Lt. 2",
            "--units",
            "42",
            "--watts",
            "5000",
            "--feed",
            &feed.to_string(),
        ],
    );
    ok(
        server,
        admin,
        &[
            "capacity",
            "add-uplink",
            "--name",
            "ISP-A",
            "--mbps",
            "1000",
        ],
    );
    site
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

pub fn step(
    server: &str,
    token: &str,
    request: i64,
    verb: &str,
    number: u32,
    extra: &[&str],
) -> Value {
    let request = request.to_string();
    let number = number.to_string();
    let mut args = vec!["step", verb, request.as_str(), number.as_str()];
    args.extend_from_slice(extra);
    ok(server, token, &args)
}

pub fn request_state(server: &str, token: &str, id: i64) -> Value {
    ok(server, token, &["request", "show", &id.to_string()])
}

/// Waits until the plan has at least `count` runs and the newest has finished.
pub fn wait_for_run(server: &str, token: &str, plan: &str, count: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let runs = ok(server, token, &["run", "list", "--plan", plan]);
        let runs = runs.as_array().unwrap();
        if runs.len() >= count
            && !["queued", "running"].contains(&runs[0]["status"].as_str().unwrap())
        {
            return runs[0].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = ok(server, token, &["run", "list", "--plan", plan]);
    panic!("plan {plan} did not finish run {count} in time: {runs}");
}

/// Waits until the plan has `status`.
pub fn wait_for_plan_status(server: &str, token: &str, plan: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let shown = ok(server, token, &["plan", "show", plan]);
        if shown["plan"]["status"] == status {
            return shown["plan"].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("plan {plan} did not become {status}");
}

/// A running `cadang agent run`; killed on drop.
pub struct AgentProcess {
    pub child: Child,
}

impl AgentProcess {
    /// An agent that runs no program for the daemon.
    pub fn start(state: &Path, log: &Path) -> AgentProcess {
        Self::start_allowing(state, log, &[])
    }

    /// An agent that runs the programs (or directories ending in `/`) `allowed`.
    pub fn start_allowing(state: &Path, log: &Path, allowed: &[&str]) -> AgentProcess {
        Self::spawn(Command::new(BIN), state, log, allowed)
    }

    /// An agent bound by mode bits even as root: files and directories of mode 0 are
    /// unreadable to it.
    pub fn start_unprivileged(state: &Path, log: &Path) -> AgentProcess {
        let mut command = Command::new(BIN);
        unprivileged::without_read_override(&mut command);
        Self::spawn(command, state, log, &[])
    }

    fn spawn(mut command: Command, state: &Path, log: &Path, allowed: &[&str]) -> AgentProcess {
        command.args(["agent", "run", "--state-dir"]).arg(state);
        for program in allowed {
            command.args(["--allow-program", program]);
        }
        let child = command
            .env_remove("CADANG_AGENT_ALLOW_PROGRAMS")
            .env("CADANG_LOG", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .expect("the agent starts");
        AgentProcess { child }
    }

    /// Waits up to `limit` for the agent to exit; its status if it did.
    pub fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every absolute directory of this process's `PATH`, as `--allow-program` entries.
pub fn path_directories() -> Vec<String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .filter(|dir| dir.is_absolute())
        .map(|dir| format!("{}/", dir.display()))
        .collect()
}

/// A one-time enrolment token for the agent of `asset` (`cadang agent enroll-token`),
/// created by the officer holding `token`.
pub fn enrollment_token(server: &str, token: &str, asset: impl std::fmt::Display) -> String {
    ok(
        server,
        token,
        &["agent", "enroll-token", &asset.to_string()],
    )["token"]
        .as_str()
        .expect("the enrolment token in the answer")
        .to_owned()
}

pub fn enroll(server: &str, token: &str, state: &Path) -> Output {
    Command::new(BIN)
        .args(["agent", "enroll", "--server", server, "--state-dir"])
        .arg(state)
        .env("CADANG_ENROLL_TOKEN", token)
        .output()
        .unwrap()
}

pub fn register_server(
    dir: &Path,
    server: &str,
    token: &str,
    agency: i64,
    name: &str,
    serial: &str,
) -> i64 {
    let file = write(
        dir,
        &format!("{name}.json"),
        &format!(
            "{{\"name\": \"{name}\", \"serial_number\": \"{serial}\", \"server_type\": \"PowerEdge R740\", \"brand\": \"Dell\", \"processor\": \"Intel Xeon Silver 4214\", \"ram\": \"16 GB\", \"ip_addresses\": [\"10.20.30.40\"], \"u_size\": 2, \"power_draw_w\": 450, \"bandwidth_mbps\": 100}}"
        ),
    );
    ok(
        server,
        token,
        &[
            "asset",
            "register",
            "--agency",
            &agency.to_string(),
            "--file",
            &file,
        ],
    )["id"]
        .as_i64()
        .unwrap()
}

/// Pseudo-random bytes that do not compress (so wire and storage figures mean something).
/// A plan of backup request `request` that backs `path` up through the agent of server
/// `on_server` every night at 01:00; its id.
pub fn agent_plan(
    server: &str,
    token: &str,
    request: i64,
    name: &str,
    path: &str,
    on_server: impl std::fmt::Display,
) -> String {
    let (request, on_server) = (request.to_string(), on_server.to_string());
    let args = [
        "plan",
        "create",
        "--request",
        &request,
        "--name",
        name,
        "--path",
        path,
        "--on-server",
        &on_server,
        "--schedule",
        "0 1 * * *",
    ];
    ok(server, token, &args)[0]["id"]
        .as_i64()
        .unwrap()
        .to_string()
}

pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn active_backup_request(
    server: &str,
    site: &Site,
    agency: i64,
    dir: &Path,
    name: &str,
) -> i64 {
    let form = write(
        dir,
        &format!("{name}.toml"),
        "scope = \"/srv\"\nschedule = \"harian 01:00\"\nretention = \"7 hari\"\n",
    );
    let token = if agency == site.dinkes {
        &site.skpd
    } else {
        &site.skpd_other
    };
    let b = ok(
        server,
        token,
        &[
            "request",
            "backup",
            "submit",
            "--agency",
            &agency.to_string(),
            "--subject",
            name,
            "--form",
            &form,
        ],
    )["request"]["id"]
        .as_i64()
        .unwrap();
    step(server, &site.kadin, b, "complete", 1, &[]);
    b
}

/// Every file under `root` with its bytes, by relative path (symlinks by target).
pub fn tree_of(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    pub fn walk(base: &Path, p: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(p).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &path, out);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}
