//! Power loss: the repository lives on `cutfs`, a file system that keeps after a power
//! cut what POSIX promises (what a completed fsync covered) and, of everything never
//! synced, an arbitrary part. The power goes at a chosen point of a day's work — backups,
//! `forget --prune`, an erasure by `rewrite --forget` — and the file system found at the
//! next boot must hold a valid repository: `check --read-data` passes, every snapshot an
//! acknowledged command left is there and restores identically, nothing an acknowledged
//! forget or erasure removed comes back, and the next backup succeeds.
//!
//! FUSE needs root and `/dev/fuse`; without them the test says so and passes, unless
//! `CADANG_REQUIRE_FUSE=1` (set by `.ci/run`) makes it mandatory.

mod common;
mod cutfs;

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

#[test]
fn a_power_cut_at_any_point_leaves_a_valid_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let calibration = match CutFs::mount(&mnt) {
        Ok(fs) => fs,
        Err(e) => {
            assert!(
                std::env::var_os("CADANG_REQUIRE_FUSE").is_none(),
                "CADANG_REQUIRE_FUSE is set but cutfs cannot be mounted: {e}"
            );
            eprintln!("skipped: cannot mount a FUSE file system here ({e})");
            return;
        }
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
        // Trial t cuts during step t % (steps + 1), 0 meaning just after init and the
        // last meaning after the whole day.
        let at = trial % (STEPS.len() + 1);
        let init_end = spans[0].1;
        let offset = match at {
            0 => Some(1),
            a if a < STEPS.len() => {
                let (from, to) = spans[a];
                Some(from - init_end + 1 + rng.below(to - from))
            }
            _ => None,
        };
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
