//! Power loss: the repository lives on `cutfs`, a file system that keeps after a power
//! cut what POSIX promises (what a completed fsync covered) and, of everything never
//! synced, an arbitrary part. The power goes at a chosen point of a day's work — backups,
//! `forget --prune`, an erasure by `rewrite --forget` — and the file system found at the
//! next boot must hold a valid repository: `check --read-data` passes, every snapshot an
//! acknowledged command left is there and restores identically, nothing an acknowledged
//! forget or erasure removed comes back, and the next backup succeeds.
//!
//! The daemon is put to the same test: its data directory (catalog, master key, the
//! agencies' repositories) on `cutfs`, the power goes while officers work through it,
//! and the daemon that boots on what the disk kept must hold every step it acknowledged
//! (accounts, agencies, tokens that still work), an intact audit trail, and nothing of
//! a step that never ran. A second day puts an agent's backups and the approval steps
//! of procedure B under the cut: every acknowledged snapshot must be kept, a backup cut
//! short must be taken back at once and finished by the agent, the newest snapshot must
//! restore its version, the repository must check clean, and each approval must be
//! there exactly when it was acknowledged. The first start and the bootstrap are cut
//! too: the daemon must boot on what was kept and the operator must get in.
//!
//! FUSE needs root and `/dev/fuse`; without them the tests say so and pass, unless
//! `CADANG_REQUIRE_FUSE=1` (set by `.ci/run`) makes them mandatory.

mod common;
mod cutfs;
mod e2e;

use common::*;
use cutfs::{Cut, CutFs, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

type Tree = BTreeMap<String, Vec<u8>>;

/// The source tree backed up at each version; `v3e` is v3 after the erasure.
fn tree(version: &str) -> Tree {
    let mut t = Tree::new();
    for i in 0..40u64 {
        t.insert(
            format!("docs/note{i}.txt"),
            format!("{i} ").repeat(50).into_bytes(),
        );
    }
    t.insert("big.bin".into(), bytes(3 << 20, 1));
    let mut db = bytes(3 << 19, 2);
    if version != "v1" {
        db[600_000..800_000].copy_from_slice(&bytes(200_000, 3));
        t.remove("docs/note7.txt");
        t.insert("new2.bin".into(), bytes(1 << 20, 4));
    }
    t.insert("db.bin".into(), db);
    if version == "v3" || version == "v3e" {
        t.insert("new3.bin".into(), bytes(1 << 20, 5));
        if version == "v3" {
            t.insert(
                "docs/secret.txt".into(),
                b"a record the agency asked to erase".to_vec(),
            );
        }
    }
    if version == "v4" {
        t.insert(
            "after.txt".into(),
            b"written after the power came back".to_vec(),
        );
    }
    t
}

fn materialize(dir: &Path, t: &Tree) {
    let _ = std::fs::remove_dir_all(dir);
    for (name, data) in t {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn read_tree(dir: &Path) -> Tree {
    files_under(dir)
        .into_iter()
        .map(|rel| {
            let data = std::fs::read(dir.join(&rel)).unwrap();
            (rel.to_str().unwrap().to_string(), data)
        })
        .collect()
}

/// One command of the day's work, and the snapshot tags the repository holds once it
/// is acknowledged.
struct Step {
    args: &'static [&'static str],
    source: Option<&'static str>,
    after: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        args: &["init"],
        source: None,
        after: &[],
    },
    Step {
        args: &["backup", "-q", "--tag", "v1"],
        source: Some("v1"),
        after: &["v1"],
    },
    Step {
        args: &["backup", "-q", "--tag", "v2"],
        source: Some("v2"),
        after: &["v1", "v2"],
    },
    Step {
        args: &["forget", "--keep-last", "1", "--prune", "--grace", "0h"],
        source: None,
        after: &["v2"],
    },
    Step {
        args: &["backup", "-q", "--tag", "v3"],
        source: Some("v3"),
        after: &["v2", "v3"],
    },
    Step {
        args: &[
            "rewrite",
            "--tag",
            "v3",
            "--forget",
            "--exclude",
            "secret.txt",
        ],
        source: None,
        after: &["v2", "v3"],
    },
];
const ERASURE: usize = 5;

/// Runs the steps from `first` on until the power goes; returns the last acknowledged
/// step, the step that was running when it went (none when every step finished), and
/// the span of changes each step made.
fn run_steps(
    fs: &CutFs,
    repo: &str,
    src: &Path,
    first: usize,
) -> (usize, Option<usize>, Vec<(u64, u64)>) {
    let mut spans = Vec::new();
    for (i, step) in STEPS.iter().enumerate().skip(first) {
        if let Some(v) = step.source {
            materialize(src, &tree(v));
        }
        let start = fs.changes();
        let mut c = cadang(repo);
        c.args(step.args);
        if step.source.is_some() {
            c.arg(src);
        }
        let out = run_until_the_power_goes(fs, &mut c);
        spans.push((start, fs.changes()));
        if out.status.success() {
            if fs.dead() {
                return (i, None, spans);
            }
            continue;
        }
        assert!(
            fs.dead(),
            "step {i} {:?} failed with the power on:\n{}",
            step.args,
            String::from_utf8_lossy(&out.stderr)
        );
        return (i - 1, Some(i), spans);
    }
    (STEPS.len() - 1, None, spans)
}

/// Runs a command; when the power goes, the process goes with it (SIGKILL).
fn run_until_the_power_goes(fs: &CutFs, c: &mut std::process::Command) -> Output {
    let mut child = c
        // stdout is not read while the command runs: it must not fill a pipe.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cadang");
    loop {
        if child.try_wait().expect("wait for cadang").is_some() {
            break;
        }
        if fs.dead() {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.wait_with_output().expect("wait for cadang")
}

/// A fresh cutfs at `mnt`, or `None` (the test skips) where FUSE cannot mount and
/// `CADANG_REQUIRE_FUSE` is not set.
fn mount_or_skip(mnt: &Path) -> Option<CutFs> {
    std::fs::create_dir_all(mnt).unwrap();
    match CutFs::mount(mnt) {
        Ok(fs) => Some(fs),
        Err(e) => {
            assert!(
                std::env::var_os("CADANG_REQUIRE_FUSE").is_none(),
                "CADANG_REQUIRE_FUSE is set but cutfs cannot be mounted: {e}"
            );
            eprintln!("skipped: cannot mount a FUSE file system here ({e})");
            None
        }
    }
}

/// Where trial `trial` of `steps` steps cuts the power, as a number of changes after
/// the trial's setup: trial t cuts during step t % (steps + 1) (step 0 being the
/// setup's last change), at a random change of the span the calibration run measured
/// for it; `None` lets the whole day finish first.
fn cut_offset(trial: usize, spans: &[(u64, u64)], rng: &mut Rng) -> Option<u64> {
    let at = trial % (spans.len() + 1);
    let setup_end = spans[0].1;
    match at {
        0 => Some(1),
        a if a < spans.len() => {
            let (from, to) = spans[a];
            Some(from - setup_end + 1 + rng.below(to - from))
        }
        _ => None,
    }
}

#[test]
fn a_power_cut_at_any_point_leaves_a_valid_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(calibration) = mount_or_skip(&mnt) else {
        return;
    };
    let repo_path = mnt.join("repo");
    let repo = repo_path.to_str().unwrap();
    let src = tmp.path().join("src");

    // A day without a cut: where each step's changes fall.
    let (done, running, spans) = run_steps(&calibration, repo, &src, 0);
    assert_eq!((done, running), (STEPS.len() - 1, None));
    drop(calibration);

    let seed = seed_from("CADANG_POWER_SEED");
    let trials: usize = env_number("CADANG_POWER_TRIALS", 4 * (STEPS.len() + 1));
    eprintln!(
        "power-loss seed {seed} (CADANG_POWER_SEED replays), {trials} trials, spans {spans:?}"
    );
    let mut rng = Rng(seed | 1);

    for trial in 0..trials {
        let offset = cut_offset(trial, &spans, &mut rng);
        let _ = std::fs::remove_dir_all(&mnt);
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = CutFs::mount(&mnt).expect("mount cutfs");
        run(cadang(repo).arg("init"), 0);
        let cut = offset.map(|o| Cut(fs.changes() + o));
        if let Some(cut) = cut {
            fs.cut_at(cut);
        }
        let (done, running, _) = run_steps(&fs, repo, &src, 1);
        let fs = fs
            .after_power_loss(&mnt, &mut rng)
            .expect("remount after the cut");
        eprintln!(
            "trial {trial}: the power went at {cut:?}; step {done} acknowledged, running {running:?}"
        );
        let what = format!(
            "trial {trial} (seed {seed}, cut {cut:?}, acknowledged through step {done}, running {running:?})"
        );
        after_the_cut(repo, &src, tmp.path(), done, running, &what);
        drop(fs);
        eprintln!("trial {trial}: ok");
    }
}

fn after_the_cut(
    repo: &str,
    src: &Path,
    tmp: &Path,
    done: usize,
    running: Option<usize>,
    what: &str,
) {
    let check = run(cadang(repo).args(["check", "--read-data", "--json"]), 0);
    let rep = last_json(&check);
    assert_eq!(rep["ok"], true, "{what}: check after the cut: {rep}");

    let acknowledged: BTreeSet<&str> = STEPS[done].after.iter().copied().collect();
    let maybe: BTreeSet<&str> = running
        .map(|r| STEPS[r].after.iter().copied().collect())
        .unwrap_or_else(|| acknowledged.clone());
    let listed = last_json(&run(cadang(repo).args(["snapshots", "--json"]), 0));
    let snapshots: Vec<(String, String)> = listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| {
            let tags: Vec<&str> = s["tags"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
                .unwrap_or_default();
            let version = tags
                .iter()
                .find(|t| t.starts_with('v'))
                .unwrap_or_else(|| panic!("{what}: a snapshot without a version tag: {s}"));
            (s["id"].as_str().unwrap().to_string(), version.to_string())
        })
        .collect();
    let present: BTreeSet<&str> = snapshots.iter().map(|(_, v)| v.as_str()).collect();
    for v in acknowledged.intersection(&maybe) {
        assert!(
            present.contains(v),
            "{what}: snapshot {v} is lost: {snapshots:?}"
        );
    }
    for v in &present {
        assert!(
            acknowledged.contains(v) || maybe.contains(v),
            "{what}: snapshot {v} came back: {snapshots:?}"
        );
    }
    let erased = done >= ERASURE;
    let v3_count = snapshots.iter().filter(|(_, v)| v == "v3").count();
    if erased {
        assert_eq!(
            v3_count, 1,
            "{what}: the erased original came back: {snapshots:?}"
        );
    }

    for (id, version) in &snapshots {
        let target = tmp.join(format!("restore-{}", &id[..8]));
        let _ = std::fs::remove_dir_all(&target);
        run(
            cadang(repo)
                .args(["restore", id, "--verify", "--target"])
                .arg(&target),
            0,
        );
        let got = read_tree(&restored_path(&target, src));
        let fits = |v: &str| got == tree(v);
        let ok = match version.as_str() {
            "v3" if erased => fits("v3e"),
            "v3" => fits("v3") || fits("v3e"),
            v => fits(v),
        };
        assert!(
            ok,
            "{what}: snapshot {id} ({version}) does not restore as backed up"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }

    // Work goes on: the next backup succeeds and leaves the repository clean.
    materialize(src, &tree("v4"));
    run(
        cadang(repo).args(["backup", "-q", "--tag", "v4"]).arg(src),
        0,
    );
    let rep = last_json(&run(cadang(repo).args(["check", "--json"]), 0));
    assert_eq!(
        rep["ok"], true,
        "{what}: check after the next backup: {rep}"
    );
}

/// One officer's action through the daemon in the daemon's day, and what it leaves.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// `agency add`: the agency is listed.
    Agency(usize),
    /// `user add`: the account is listed.
    User(usize),
    /// `token create` for that user: the token authenticates as that user.
    Token(usize),
}

const ACTS: &[Act] = &[
    Act::Agency(0),
    Act::User(0),
    Act::Token(0),
    Act::Agency(1),
    Act::User(1),
    Act::Token(1),
    Act::Agency(2),
    Act::User(2),
    Act::Token(2),
];

fn act_args(act: Act) -> Vec<String> {
    let words: Vec<String> = match act {
        Act::Agency(k) => format!("agency add --code AG{k} --name Agency-{k} --address Street-{k}")
            .split(' ')
            .map(String::from)
            .collect(),
        Act::User(k) => vec![
            "user".into(),
            "add".into(),
            format!("officer{k}"),
            "--role".into(),
            "PETUGAS".into(),
        ],
        Act::Token(k) => vec![
            "token".into(),
            "create".into(),
            "--user".into(),
            format!("officer{k}"),
            "--label".into(),
            "shift".into(),
        ],
    };
    words
}

/// The daemon's day from the setup on: runs the acts until the power goes. Returns the
/// number of acts acknowledged, whether one was running when the power went, the
/// tokens issued, and the span of changes of each act (the setup being span 0).
struct Day {
    acknowledged: usize,
    running: Option<usize>,
    tokens: BTreeMap<usize, String>,
    spans: Vec<(u64, u64)>,
}

fn daemon_day(fs: &CutFs, server: &str, admin: &str, setup: (u64, u64)) -> Day {
    let mut day = Day {
        acknowledged: 0,
        running: None,
        tokens: BTreeMap::new(),
        spans: vec![setup],
    };
    for (i, act) in ACTS.iter().enumerate() {
        let start = fs.changes();
        let args = act_args(*act);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = e2e::cli(server, admin, &args);
        day.spans.push((start, fs.changes()));
        if !out.status.success() {
            assert!(
                fs.dead(),
                "act {i} {act:?} failed with the power on:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            day.running = Some(i);
            return day;
        }
        if let Act::Token(k) = act {
            let answer: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("the token as JSON");
            let token = answer["token"].as_str().expect("a token").to_string();
            day.tokens.insert(*k, token);
        }
        day.acknowledged = i + 1;
        if fs.dead() {
            return day;
        }
    }
    day
}

/// A daemon on the mount's data directory; the set-up (first start, the first
/// administrator) is done before any cut, as `init` is for the repository.
fn start_daemon(mnt: &Path) -> (e2e::Daemon, String) {
    let daemon = e2e::Daemon::start(mnt, &[], None);
    let admin = e2e::Daemon::bootstrap(mnt, &[]);
    (daemon, admin)
}

fn listed(server: &str, token: &str, what: &str, field: &str) -> BTreeSet<String> {
    e2e::ok(server, token, &[what, "list"])
        .as_array()
        .unwrap_or_else(|| panic!("{what} list is a JSON array"))
        .iter()
        .filter_map(|entry| entry[field].as_str().map(String::from))
        .collect()
}

#[test]
fn a_power_cut_under_the_daemon_loses_no_acknowledged_step() {
    let tmp = tempfile::tempdir().unwrap();
    // The data directory is the mount itself: the daemon's log and configuration lie
    // beside it (`mnt.log`, `mnt.toml`), off the disk that loses power.
    let mnt = tmp.path().join("mnt");
    let Some(calibration) = mount_or_skip(&mnt) else {
        return;
    };
    let mut daemon = e2e::Daemon::start(&mnt, &[], None);
    let listening = calibration.changes();
    let admin = e2e::Daemon::bootstrap(&mnt, &[]);
    let day = daemon_day(
        &calibration,
        &daemon.url(),
        &admin,
        (0, calibration.changes()),
    );
    assert_eq!((day.acknowledged, day.running), (ACTS.len(), None));
    let spans = day.spans;
    daemon.stop();
    drop(daemon);
    drop(calibration);

    let seed = seed_from("CADANG_POWER_SEED");
    let trials: usize = env_number("CADANG_DAEMON_POWER_TRIALS", 2 * (ACTS.len() + 2));
    eprintln!("daemon power-loss seed {seed} (CADANG_POWER_SEED replays), {trials} trials");
    let mut rng = Rng(seed | 1);
    for trial in 0..trials {
        let offset = cut_offset(trial, &spans, &mut rng);
        let _ = std::fs::remove_dir_all(&mnt);
        let _ = std::fs::remove_file(mnt.with_extension("log"));
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = CutFs::mount(&mnt).expect("mount cutfs");
        let (mut daemon, admin) = start_daemon(&mnt);
        let setup_end = fs.changes();
        let cut = offset.map(|o| Cut(setup_end + o));
        if let Some(cut) = cut {
            fs.cut_at(cut);
        }
        let day = daemon_day(&fs, &daemon.url(), &admin, (0, setup_end));
        // The daemon goes with the power.
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
        let fs = fs
            .after_power_loss(&mnt, &mut rng)
            .expect("remount after the cut");
        let what = format!(
            "trial {trial} (seed {seed}, cut {cut:?}, {} acts acknowledged, running {:?})",
            day.acknowledged, day.running
        );
        eprintln!("{what}");
        let log = String::from_utf8_lossy(&std::fs::read(mnt.with_extension("log")).unwrap())
            .into_owned();
        assert!(
            !log.contains("panicked"),
            "{what}: the daemon panicked when its disk died:\n{log}"
        );
        // The daemon boots on what the disk kept.
        daemon.kill_and_restart();
        daemon_after_the_cut(&daemon.url(), &admin, &day, &what);
        daemon.stop();
        drop(daemon);
        drop(fs);
    }

    // The power also goes during the first start and the bootstrap: the daemon must
    // boot on what the disk kept (a master key whole or none, a catalog it can open),
    // and the operator must get in — with the acknowledged bootstrap token, by
    // bootstrapping again when nothing of it was kept, or by breaking the glass when
    // the administrator was kept but its token never reached the operator.
    let setup_trials: usize = env_number("CADANG_DAEMON_SETUP_POWER_TRIALS", 8);
    for trial in 0..setup_trials {
        // Half of them while the daemon starts, half during the bootstrap.
        let cut = if trial % 2 == 0 {
            Cut(1 + rng.below(listening))
        } else {
            Cut(listening + 1 + rng.below(spans[0].1 - listening))
        };
        let _ = std::fs::remove_dir_all(&mnt);
        let _ = std::fs::remove_file(mnt.with_extension("log"));
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = CutFs::mount(&mnt).expect("mount cutfs");
        fs.cut_at(cut);
        let started = e2e::Daemon::try_start(&mnt, &[], None);
        let bootstrapped = started
            .as_ref()
            .and_then(|_| e2e::Daemon::try_bootstrap(&mnt, &[]).ok());
        let what = format!(
            "set-up trial {trial} (seed {seed}, cut {cut:?}, started {}, bootstrapped {})",
            started.is_some(),
            bootstrapped.is_some()
        );
        eprintln!("{what}");
        if let Some(mut daemon) = started {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        let fs = fs
            .after_power_loss(&mnt, &mut rng)
            .expect("remount after the cut");
        let log = std::fs::read_to_string(mnt.with_extension("log")).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{what}: the daemon panicked when its disk died:\n{log}"
        );
        let mut daemon = e2e::Daemon::start(&mnt, &[], None);
        let server = daemon.url();
        let admin = match bootstrapped {
            Some(token) => token,
            None => match e2e::Daemon::try_bootstrap(&mnt, &[]) {
                Ok(token) => {
                    eprintln!("  nothing of the bootstrap was kept: bootstrapped again");
                    token
                }
                Err(said) => {
                    eprintln!("  the administrator was kept, its token never shown: break glass");
                    assert!(
                        said.contains("can only be created once"),
                        "{what}: bootstrap after the cut: {said}"
                    );
                    let out = std::process::Command::new(e2e::BIN)
                        .args(["admin", "recover-token", "--data-dir"])
                        .arg(&mnt)
                        .env_remove("CADANG_CATALOG_URL")
                        .env_remove("CADANG_MASTER_KEY")
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{what}: break glass: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    String::from_utf8(out.stdout).unwrap().trim().to_owned()
                }
            },
        };
        let me = e2e::ok(&server, &admin, &["whoami"]);
        assert!(me.to_string().contains("\"admin\""), "{what}: {me}");
        let day = Day {
            acknowledged: 0,
            running: None,
            tokens: BTreeMap::new(),
            spans: Vec::new(),
        };
        daemon_after_the_cut(&server, &admin, &day, &what);
        daemon.stop();
        drop(daemon);
        drop(fs);
    }
}

fn daemon_after_the_cut(server: &str, admin: &str, day: &Day, what: &str) {
    let verdict = e2e::ok(server, admin, &["audit", "verify"]);
    assert_eq!(
        verdict["intact"], true,
        "{what}: the audit trail after the cut: {verdict}"
    );
    let agencies = listed(server, admin, "agency", "code");
    let users = listed(server, admin, "user", "username");
    for (i, act) in ACTS.iter().enumerate() {
        let acknowledged = i < day.acknowledged;
        let may_exist = acknowledged || day.running == Some(i);
        let (present, name) = match act {
            Act::Agency(k) => {
                let code = format!("AG{k}");
                (agencies.contains(&code), code)
            }
            Act::User(k) => {
                let name = format!("officer{k}");
                (users.contains(&name), name)
            }
            Act::Token(k) => {
                let Some(token) = day.tokens.get(k) else {
                    continue;
                };
                let out = e2e::cli(server, token, &["whoami"]);
                let me: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
                assert!(
                    out.status.success() && me.to_string().contains(&format!("officer{k}")),
                    "{what}: the acknowledged token of officer{k} no longer works: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
        };
        if acknowledged {
            assert!(present, "{what}: acknowledged {name} is lost");
        }
        if !may_exist {
            assert!(!present, "{what}: {name} was never created, yet is there");
        }
    }
    // Work goes on where it stopped: the next act is accepted and the trail stays whole.
    e2e::ok(
        server,
        admin,
        &[
            "agency",
            "add",
            "--code",
            "NEXT",
            "--name",
            "Next",
            "--address",
            "Street",
        ],
    );
    let verdict = e2e::ok(server, admin, &["audit", "verify"]);
    assert_eq!(
        verdict["intact"], true,
        "{what}: the audit trail after the next act: {verdict}"
    );
}

/// What officers and an agent do through the daemon in the agent day: a backup of
/// the server's tree at a version (`plan run-now`, then waiting for the run), and the
/// first steps of a second backup request (procedure B: submitted, approved at B1).
#[derive(Clone, Copy, Debug)]
enum Work {
    Backup(u32),
    Submit,
    Approve,
}

const WORK: &[Work] = &[
    Work::Backup(2),
    Work::Submit,
    Work::Backup(3),
    Work::Approve,
    Work::Backup(4),
];

/// The server's tree at `version`: a file that never changes, one that does, and one
/// of each version's own.
fn server_tree(src: &Path, version: u32) {
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("db/base.dat"), e2e::noise(7, 600 << 10)).unwrap();
    std::fs::write(
        src.join("db/current.dat"),
        e2e::noise(100 + u64::from(version), 300 << 10),
    )
    .unwrap();
    std::fs::write(
        src.join(format!("laporan-{version}.csv")),
        format!("versi,{version}\n"),
    )
    .unwrap();
}

/// A daemon (data directory on the mount, `config` beside it) with the site's people,
/// a server of Dinkes with its agent (state off the mount: the server keeps its power),
/// and a backup plan through that agent whose first backup has run.
struct AgentSite {
    daemon: e2e::Daemon,
    admin: String,
    site: e2e::Site,
    server_id: i64,
    plan: String,
    /// Held so the agent runs as long as the site (killed on drop).
    _agent: e2e::AgentProcess,
}

fn agent_site(mnt: &Path, out: &Path, config: &Path) -> AgentSite {
    let (daemon, admin, server, site) = e2e::Daemon::with_site(mnt, Some(config));
    let server_id = e2e::register_server(
        out,
        &server,
        &site.kasi,
        site.dinkes,
        "simkes-web-01",
        "SN-WEB-01",
    );
    let state = out.join("agent");
    let _ = std::fs::remove_dir_all(&state);
    let token = e2e::enrollment_token(&server, &site.petugas, server_id);
    let enrolled = e2e::enroll(&server, &token, &state);
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let agent = e2e::AgentProcess::start(&state, &out.join("agent.log"));
    let src = out.join("srv");
    let _ = std::fs::remove_dir_all(&src);
    server_tree(&src, 1);
    let b = e2e::active_backup_request(&server, &site, site.dinkes, out, "web");
    let plan = e2e::agent_plan(
        &server,
        &site.kasi,
        b,
        "web",
        &src.display().to_string(),
        server_id,
    );
    e2e::step(&server, &site.kasi, b, "complete", 2, &[]);
    let first = e2e::wait_for_run(&server, &site.kasi, &plan, 1);
    assert_eq!(first["status"], "ok", "the first backup: {first}");
    AgentSite {
        daemon,
        admin,
        site,
        server_id,
        plan,
        _agent: agent,
    }
}

/// The agent day from the set-up on, until the power goes: how much work was
/// acknowledged, what was running when the power went, the snapshot of each
/// acknowledged backup, the second request, and each work item's span of changes.
struct AgentDay {
    acknowledged: usize,
    running: Option<usize>,
    snapshots: BTreeMap<u32, String>,
    request: Option<i64>,
    spans: Vec<(u64, u64)>,
}

/// The plan's runs, newest first; `None` when the daemon cannot answer.
fn runs_of(server: &str, token: &str, plan: &str) -> Option<Vec<serde_json::Value>> {
    let out = e2e::cli(server, token, &["run", "list", "--plan", plan]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()?
        .as_array()
        .cloned()
}

fn agent_day(fs: &CutFs, s: &AgentSite, out: &Path, setup: (u64, u64)) -> AgentDay {
    let server = s.daemon.url();
    let mut day = AgentDay {
        acknowledged: 0,
        running: None,
        snapshots: BTreeMap::new(),
        request: None,
        spans: vec![setup],
    };
    let form = e2e::write(
        out,
        "second.toml",
        "scope = \"/srv/db\"\nschedule = \"harian 03:00\"\nretention = \"30 hari\"\n",
    );
    for (i, work) in WORK.iter().enumerate() {
        let start = fs.changes();
        let done = match *work {
            Work::Backup(version) => {
                server_tree(&out.join("srv"), version);
                let asked = e2e::cli(&server, &s.site.petugas, &["plan", "run-now", &s.plan]);
                // The runs before this one: the set-up's and the day's.
                let before = 1 + day.snapshots.len();
                let mut finished = None;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
                while asked.status.success() && std::time::Instant::now() < deadline {
                    let Some(runs) = runs_of(&server, &s.site.kasi, &s.plan) else {
                        break;
                    };
                    let status = runs[0]["status"].as_str().unwrap_or_default();
                    if runs.len() > before && !["queued", "running"].contains(&status) {
                        finished = Some(runs[0].clone());
                        break;
                    }
                    if fs.dead() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                match finished {
                    Some(run) if run["status"] == "ok" => {
                        let snapshot = run["snapshot_id"].as_str().expect("a snapshot id");
                        day.snapshots.insert(version, snapshot.to_owned());
                        true
                    }
                    other => {
                        assert!(
                            fs.dead(),
                            "backup of v{version} did not end well with the power on: {other:?}\n{}",
                            String::from_utf8_lossy(&asked.stderr)
                        );
                        false
                    }
                }
            }
            Work::Submit => {
                let agency = s.site.dinkes.to_string();
                let args = [
                    "request",
                    "backup",
                    "submit",
                    "--agency",
                    &agency,
                    "--subject",
                    "second",
                    "--form",
                    &form,
                ];
                let answer = e2e::cli(&server, &s.site.skpd, &args);
                if answer.status.success() {
                    let shown: serde_json::Value =
                        serde_json::from_slice(&answer.stdout).expect("the request as JSON");
                    day.request = shown["request"]["id"].as_i64();
                }
                answer.status.success() || !assert_dead(fs, *work, &answer)
            }
            Work::Approve => {
                let request = day.request.expect("submitted before").to_string();
                let answer = e2e::cli(&server, &s.site.kadin, &["step", "complete", &request, "1"]);
                answer.status.success() || !assert_dead(fs, *work, &answer)
            }
        };
        day.spans.push((start, fs.changes()));
        if !done {
            day.running = Some(i);
            return day;
        }
        day.acknowledged = i + 1;
        if fs.dead() {
            return day;
        }
    }
    day
}

/// A step refused while the power was on is a failure of the test; returns `true`.
fn assert_dead(fs: &CutFs, work: Work, answer: &Output) -> bool {
    assert!(
        fs.dead(),
        "{work:?} failed with the power on:\n{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    true
}

/// A daemon configuration beside the mount with a fixed port (the agent finds the
/// daemon again where it was) and leases of ten minutes: work the dead daemon held
/// must be taken back at once, not when its lease lapses.
///
/// The port lies below the kernel's ephemeral range: while this daemon is down, the
/// daemons of the other tests (listening on port 0) and every outgoing connection
/// draw from that range, and could take a port from it.
fn agent_day_config(path: &Path, rng: &mut Rng) {
    let ephemeral_from: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let port = (0..100)
        .map(|_| {
            20000
                + u16::try_from(rng.below(u64::from(ephemeral_from.saturating_sub(20000)))).unwrap()
        })
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range");
    std::fs::write(
        path,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:{port}\"\nauth_max_failures = 100000\n[scheduler]\ntick_secs = 1\nlease_secs = 600\n"
        ),
    )
    .unwrap();
}

#[test]
fn a_power_cut_under_agent_backups_and_approvals_loses_no_acknowledged_step() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let out = tmp.path().join("server");
    std::fs::create_dir_all(&out).unwrap();
    let config = tmp.path().join("daemon.toml");
    let seed = seed_from("CADANG_POWER_SEED");
    let mut rng = Rng(seed | 1);
    agent_day_config(&config, &mut rng);
    let Some(calibration) = mount_or_skip(&mnt) else {
        return;
    };
    let mut site = agent_site(&mnt, &out, &config);
    let day = agent_day(&calibration, &site, &out, (0, calibration.changes()));
    assert_eq!((day.acknowledged, day.running), (WORK.len(), None));
    let spans = day.spans;
    site.daemon.stop();
    drop(site);
    drop(calibration);

    let trials: usize = env_number("CADANG_AGENT_POWER_TRIALS", 2 * (WORK.len() + 2));
    eprintln!("agent-day power-loss seed {seed} (CADANG_POWER_SEED replays), {trials} trials");
    for trial in 0..trials {
        let offset = cut_offset(trial, &spans, &mut rng);
        let _ = std::fs::remove_dir_all(&mnt);
        let _ = std::fs::remove_file(mnt.with_extension("log"));
        let _ = std::fs::remove_file(out.join("agent.log"));
        std::fs::create_dir_all(&mnt).unwrap();
        let fs = CutFs::mount(&mnt).expect("mount cutfs");
        let mut site = agent_site(&mnt, &out, &config);
        let setup_end = fs.changes();
        let cut = offset.map(|o| Cut(setup_end + o));
        if let Some(cut) = cut {
            fs.cut_at(cut);
        }
        let day = agent_day(&fs, &site, &out, (0, setup_end));
        // The daemon's host loses its power; the agency's server keeps running.
        let _ = site.daemon.child.kill();
        let _ = site.daemon.child.wait();
        let fs = fs
            .after_power_loss(&mnt, &mut rng)
            .expect("remount after the cut");
        let what = format!(
            "trial {trial} (seed {seed}, cut {cut:?}, {} acknowledged, running {:?})",
            day.acknowledged,
            day.running.map(|i| WORK[i])
        );
        eprintln!("{what}");
        let log = std::fs::read_to_string(mnt.with_extension("log")).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{what}: the daemon panicked when its disk died:\n{log}"
        );
        site.daemon.kill_and_restart();
        agent_day_after_the_cut(&site, &out, &day, trial, &what);
        let said = std::fs::read_to_string(out.join("agent.log")).unwrap_or_default();
        assert!(
            !said.contains("panicked"),
            "{what}: the agent panicked:\n{said}"
        );
        site.daemon.stop();
        drop(site);
        drop(fs);
    }
}

fn agent_day_after_the_cut(s: &AgentSite, out: &Path, day: &AgentDay, trial: usize, what: &str) {
    let server = s.daemon.url();
    let verdict = e2e::ok(&server, &s.admin, &["audit", "verify"]);
    assert_eq!(
        verdict["intact"], true,
        "{what}: the audit trail: {verdict}"
    );
    // Every run settles, and settles well: one the dead daemon held is taken back at
    // once (its ten-minute lease notwithstanding) and its agent finishes it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let runs = loop {
        let runs = runs_of(&server, &s.site.kasi, &s.plan).expect("the runs after the cut");
        if runs
            .iter()
            .all(|run| !["queued", "running"].contains(&run["status"].as_str().unwrap_or("")))
        {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: runs still unsettled two minutes after the restart: {runs:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for run in &runs {
        assert_eq!(run["status"], "ok", "{what}: a run after the cut: {run}");
    }
    let kept: BTreeSet<&str> = runs
        .iter()
        .filter_map(|run| run["snapshot_id"].as_str())
        .collect();
    for (version, snapshot) in &day.snapshots {
        assert!(
            kept.contains(snapshot.as_str()),
            "{what}: the acknowledged backup of v{version} ({snapshot}) is lost: {runs:?}"
        );
    }
    let backups_begun = WORK[..day.acknowledged + usize::from(day.running.is_some())]
        .iter()
        .filter(|w| matches!(w, Work::Backup(_)))
        .count();
    assert!(
        runs.len() <= 1 + backups_begun && runs.len() > day.snapshots.len(),
        "{what}: {} runs for {backups_begun} backups begun: {runs:?}",
        runs.len()
    );
    // The newest snapshot holds the server's tree of its version (the set-up's backup
    // was v1, the day's are v2, v3, ...), whether its backup was acknowledged before the
    // cut or finished after it.
    let newest = runs[0]["snapshot_id"].as_str().expect("a snapshot");
    let expected = out.join("expected");
    let _ = std::fs::remove_dir_all(&expected);
    for version in 1..=u32::try_from(runs.len()).unwrap() {
        server_tree(&expected, version);
    }
    let target = out.join(format!("restored-{trial}"));
    let restored = e2e::ok(
        &server,
        &s.site.petugas,
        &[
            "restore-job",
            "start",
            "--source",
            &s.server_id.to_string(),
            "--snapshot",
            newest,
            "--target",
            &target.display().to_string(),
            "--wait",
        ],
    );
    assert_eq!(restored["status"], "ok", "{what}: {restored}");
    let src = out.join("srv");
    assert_eq!(
        e2e::tree_of(&expected),
        e2e::tree_of(&target.join(src.strip_prefix("/").unwrap())),
        "{what}: the newest snapshot restores the tree of v{}",
        runs.len()
    );
    std::fs::remove_dir_all(&target).unwrap();
    // The approvals: an acknowledged submission is there, an acknowledged B1 is done,
    // and nothing of a step that never ran.
    let requests = e2e::ok(&server, &s.site.kasi, &["request", "list"]);
    let seconds = requests
        .as_array()
        .expect("the requests")
        .iter()
        .filter(|r| r["subject"] == "second")
        .count();
    let submit = WORK.iter().position(|w| matches!(w, Work::Submit)).unwrap();
    let approve = WORK
        .iter()
        .position(|w| matches!(w, Work::Approve))
        .unwrap();
    if day.acknowledged > submit {
        assert_eq!(seconds, 1, "{what}: the acknowledged request: {requests}");
    } else if day.running != Some(submit) {
        assert_eq!(seconds, 0, "{what}: a request never submitted: {requests}");
    }
    if let Some(request) = day.request {
        let state = e2e::request_state(&server, &s.site.kasi, request);
        let step = state["current_step"].as_i64().expect("a current step");
        if day.acknowledged > approve {
            assert_eq!(step, 2, "{what}: the acknowledged B1: {state}");
        } else if day.running != Some(approve) {
            assert_eq!(step, 1, "{what}: B1 was never approved: {state}");
        }
    }
    // Work goes on: the repository checks clean and the next backup runs.
    e2e::ok(
        &server,
        &s.site.petugas,
        &["plan", "run-now", &s.plan, "--kind", "verify"],
    );
    let verify = e2e::wait_for_run(&server, &s.site.kasi, &s.plan, runs.len() + 1);
    assert_eq!(
        verify["status"], "ok",
        "{what}: the check after the cut: {verify}"
    );
    server_tree(&src, 5);
    e2e::ok(&server, &s.site.petugas, &["plan", "run-now", &s.plan]);
    let next = e2e::wait_for_run(&server, &s.site.kasi, &s.plan, runs.len() + 2);
    assert_eq!(next["status"], "ok", "{what}: the next backup: {next}");
    let verdict = e2e::ok(&server, &s.admin, &["audit", "verify"]);
    assert_eq!(
        verdict["intact"], true,
        "{what}: the audit trail at the end: {verdict}"
    );
}
