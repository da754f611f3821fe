//! Bad input gets a clear message and the right exit code.

mod common;
use common::*;
#[path = "common/unprivileged.rs"]
mod unprivileged;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn wrong_password_missing_repo_and_unknown_version() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    // Not a repository: exit 10.
    let o = run(cadang(r).arg("snapshots"), 10);
    assert!(stderr(&o).contains("not a cadang repository"));
    run(cadang(r).arg("init"), 0);
    // Wrong password: exit 12, and the password never appears.
    let o = run(
        cadang(r)
            .arg("snapshots")
            .env("CADANG_PASSWORD", "hunter2-wrong"),
        12,
    );
    assert!(stderr(&o).contains("wrong password"));
    assert!(!stderr(&o).contains("hunter2"));
    // Password from a file works; a missing file is explained.
    let pwf = tmp.path().join("pw");
    std::fs::write(&pwf, format!("{PASSWORD}\n")).unwrap();
    run(
        cadang(r)
            .arg("snapshots")
            .env_remove("CADANG_PASSWORD")
            .arg("--password-file")
            .arg(&pwf),
        0,
    );
    let o = run(
        cadang(r)
            .arg("snapshots")
            .env_remove("CADANG_PASSWORD")
            .arg("--password-file")
            .arg(tmp.path().join("nope")),
        1,
    );
    assert!(stderr(&o).contains("cannot read password file"));
    // No password and no terminal.
    let o = run(cadang(r).arg("snapshots").env_remove("CADANG_PASSWORD"), 1);
    assert!(stderr(&o).contains("no password given"));
    // A future format version is refused before any key is tried.
    let cfg = repo.join("config");
    let mut b = std::fs::read(&cfg).unwrap();
    b[8] = 2;
    std::fs::write(&cfg, &b).unwrap();
    let o = run(cadang(r).arg("snapshots"), 1);
    assert!(
        stderr(&o).contains("format version 2 is not supported"),
        "{}",
        stderr(&o)
    );
    b[8] = 1;
    std::fs::write(&cfg, &b).unwrap();
    // An edited key slot: the repository cannot be opened, clearly.
    for e in std::fs::read_dir(repo.join("keys")).unwrap() {
        let p = e.unwrap().path();
        let s = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let sealed = v["sealed_secret"].as_str().unwrap();
        let flipped = format!(
            "{}{}",
            if sealed.starts_with('0') { "1" } else { "0" },
            &sealed[1..]
        );
        std::fs::write(&p, s.replace(sealed, &flipped)).unwrap();
    }
    let o = run(cadang(r).arg("snapshots"), 12);
    assert!(stderr(&o).contains("no key slot matches"));
}

#[test]
fn a_directory_that_cannot_be_listed_is_kept_empty_and_reported() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("repo");
    let r = r.to_str().unwrap();
    run(cadang(r).arg("init"), 0);
    let src = tmp.path().join("src");
    let closed = src.join("closed");
    std::fs::create_dir_all(closed.join("inner")).unwrap();
    std::fs::write(closed.join("inner/surat.pdf"), b"not read").unwrap();
    std::fs::write(src.join("open.txt"), b"read").unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    let o = run(
        unprivileged::without_read_override(cadang(r).args(["backup", "--json"]).arg(&src)),
        3,
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let error = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message_type"] == "error")
        .unwrap_or_else(|| panic!("no error reported: {text}"));
    assert!(
        error.to_string().contains(closed.to_str().unwrap()),
        "{error}"
    );
    let sum = last_json(&o);
    assert_eq!(sum["files_failed"], 1, "{sum}");
    assert_eq!(sum["partial"], true, "{sum}");
    // The snapshot holds the directory, with nothing below it, beside what was read.
    let listed =
        String::from_utf8_lossy(&run(cadang(r).args(["ls", "latest"]), 0).stdout).into_owned();
    assert!(
        listed.lines().any(|l| l.ends_with("/src/closed")),
        "{listed}"
    );
    assert!(listed.contains("/src/open.txt"), "{listed}");
    assert!(!listed.contains("inner"), "{listed}");
    // A restore recreates it as it was: empty, with its mode.
    let target = tmp.path().join("restored");
    run(
        cadang(r)
            .args(["restore", "latest", "--target"])
            .arg(&target),
        0,
    );
    let restored = restored_path(&target, &closed);
    unprivileged::assert_restored_closed_and_empty(&restored);
    assert_eq!(
        std::fs::read(restored_path(&target, &src.join("open.txt"))).unwrap(),
        b"read"
    );
    // The next backup, the directory readable again, reads what it holds.
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sum = last_json(&run(cadang(r).args(["backup", "--json"]).arg(&src), 0));
    assert_eq!(sum["files_failed"], 0, "{sum}");
    let listed =
        String::from_utf8_lossy(&run(cadang(r).args(["ls", "latest"]), 0).stdout).into_owned();
    assert!(listed.contains("/src/closed/inner/surat.pdf"), "{listed}");
}

/// `cadang generate` writes completion scripts that complete subcommands and options;
/// without a shell it says what it needs.
#[test]
fn shell_completions_complete_subcommands_and_options() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = tmp.path().join("cadang.bash");
    let zsh = tmp.path().join("_cadang");
    let o = run(
        cadang("unused")
            .arg("generate")
            .arg("--bash-completion")
            .arg(&bash)
            .arg("--zsh-completion")
            .arg(&zsh),
        0,
    );
    assert!(o.stdout.is_empty());
    // Completed by bash itself, as at a prompt: `cadang rest<TAB>`, `cadang forget --keep-d<TAB>`.
    let complete = |words: &str| -> String {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"{words}\"; COMP_POINT=${{#COMP_LINE}}; _cadang cadang \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[*]}}\"",
            bash.display()
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let words: Vec<String> = complete("cadang rest")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(words, ["restore", "restore-job", "restore-request"]);
    // A hidden knob is not offered on the subcommands.
    assert!(
        !complete("cadang init --k").contains("--kdf"),
        "{}",
        complete("cadang init --k")
    );
    assert!(
        complete("cadang forget --keep-d").contains("--keep-daily"),
        "{}",
        complete("cadang forget --keep-d")
    );
    let zsh_script = std::fs::read_to_string(&zsh).unwrap();
    assert!(zsh_script.starts_with("#compdef cadang"), "{zsh_script}");
    assert!(zsh_script.contains("restore-request"));
    // To standard output with `-`.
    let o = run(
        cadang("unused").args(["generate", "--fish-completion", "-"]),
        0,
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("complete -c cadang"));
    // Nothing asked for, or nowhere to write: said plainly.
    let o = run(cadang("unused").arg("generate"), 2);
    assert!(stderr(&o).contains("--bash-completion"), "{}", stderr(&o));
    let o = run(
        cadang("unused")
            .args(["generate", "--bash-completion"])
            .arg(tmp.path().join("no/such/dir/cadang")),
        1,
    );
    assert!(
        stderr(&o).contains("cannot write the bash completion script"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unreadable_and_missing_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("repo");
    let r = r.to_str().unwrap();
    run(cadang(r).arg("init"), 0);
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    // A file whose read fails. As root, permissions do not stop reads, so
    // use /proc/self/mem (reading offset 0 fails with EIO) in that case.
    let bad = if unsafe { libc::geteuid() } == 0 {
        std::path::PathBuf::from("/proc/self/mem")
    } else {
        let p = src.join("locked");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        p
    };
    let o = run(cadang(r).args(["backup", "--json"]).arg(&src).arg(&bad), 3);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("\"message_type\":\"error\""), "{text}");
    assert!(text.contains(bad.to_str().unwrap()));
    let sum = last_json(&o);
    assert_eq!(sum["files_failed"], 1);
    assert_eq!(sum["partial"], true);
    // A file whose content differs from what stat said (sizes of /proc files
    // are 0) is flagged as changed while being read, and backed up as read.
    let o = run(cadang(r).args(["backup", "--json", "/proc/self/status"]), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("file changed while being read"), "{text}");

    // The snapshot still holds the readable file.
    let snaps = last_json(&run(cadang(r).args(["snapshots", "--json"]), 0));
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    let o = run(cadang(r).args(["ls", &first]), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("/ok"));

    // A source path that does not exist: failure, named.
    let o = run(cadang(r).arg("backup").arg(tmp.path().join("nope")), 1);
    assert!(stderr(&o).contains("nope"));
    // Malformed options are explained.
    let o = run(cadang(r).args(["check", "--read-data-subset", "5/3"]), 1);
    assert!(stderr(&o).contains("1 ≤ N ≤ T"));
    let o = run(cadang(r).args(["forget"]), 1);
    assert!(stderr(&o).contains("no policy given"));
    let o = run(cadang(r).args(["forget", "--keep-within", "3x"]), 1);
    assert!(stderr(&o).contains("unknown unit"));
    let o = run(cadang(r).args(["restore", "zz", "--target", "/tmp/x"]), 1);
    assert!(stderr(&o).contains("not a snapshot id"));
    // A path the snapshot does not hold is an error, and nothing is written; one it holds
    // beside it does not hide it.
    let target = tmp.path().join("restored");
    let ok_path = src.join("ok");
    for includes in [
        vec!["/no/such/dir"],
        vec![ok_path.to_str().unwrap(), "/no/such/dir"],
    ] {
        let mut c = cadang(r);
        c.args(["restore", &first, "--target"]).arg(&target);
        for include in includes {
            c.args(["--include", include]);
        }
        let o = run(&mut c, 1);
        assert!(
            stderr(&o).contains("/no/such/dir is not in the snapshot"),
            "{}",
            stderr(&o)
        );
        assert!(!target.exists());
    }
    // A target that is a file is named as such.
    let a_file = tmp.path().join("a-file");
    std::fs::write(&a_file, b"").unwrap();
    let o = run(
        cadang(r).args(["restore", &first, "--target"]).arg(&a_file),
        1,
    );
    assert!(stderr(&o).contains("is not a directory"), "{}", stderr(&o));
    let o = run(
        cadang(r)
            .args(["restore", &first, "--include"])
            .arg(&ok_path)
            .arg("--target")
            .arg(&target),
        0,
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 files"));
    let o = run(cadang(r).args(["backup", "--host", "", "/tmp"]), 2);
    assert!(stderr(&o).contains("--host"), "{}", stderr(&o));
    let o = run(cadang(r).args(["backup", "--exclude", "a[", "/tmp"]), 1);
    assert!(stderr(&o).contains("exclude pattern"));
    let o = run(cadang("ftp://example/x").arg("snapshots"), 1);
    assert!(stderr(&o).contains("unsupported repository location"));
}

#[test]
fn keys_add_list_remove_and_forget_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("repo");
    let r = r.to_str().unwrap();
    run(cadang(r).arg("init"), 0);
    let np = tmp.path().join("np");
    std::fs::write(&np, "second password").unwrap();
    run(
        cadang(r)
            .args(["key", "add", "--new-password-file"])
            .arg(&np),
        0,
    );
    run(
        cadang(r)
            .arg("snapshots")
            .env("CADANG_PASSWORD", "second password"),
        0,
    );
    let keys = last_json(&run(cadang(r).args(["key", "list", "--json"]), 0));
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let current = keys.iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = keys.iter().find(|k| k["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(cadang(r).args(["key", "remove", &current]), 1);
    assert!(stderr(&o).contains("refusing to remove"));
    run(cadang(r).args(["key", "remove", &other[..8]]), 0);
    run(
        cadang(r)
            .arg("snapshots")
            .env("CADANG_PASSWORD", "second password"),
        12,
    );
    // passwd: the slot in use gets a new password; the old one stops working, and an
    // empty one is refused with the old slot kept.
    let third = tmp.path().join("third");
    std::fs::write(&third, "third password\n").unwrap();
    let changed = last_json(&run(
        cadang(r)
            .args(["--json", "key", "passwd", "--new-password-file"])
            .arg(&third),
        0,
    ));
    let keys = last_json(&run(
        cadang(r)
            .args(["key", "list", "--json"])
            .env("CADANG_PASSWORD", "third password"),
        0,
    ));
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["id"], changed["id"]);
    run(cadang(r).arg("snapshots"), 12);
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let o = run(
        cadang(r)
            .args(["key", "passwd", "--new-password-file"])
            .arg(&empty)
            .env("CADANG_PASSWORD", "third password"),
        1,
    );
    assert!(stderr(&o).contains("empty password"), "{o:?}");
    run(
        cadang(r)
            .arg("snapshots")
            .env("CADANG_PASSWORD", "third password"),
        0,
    );
    // The rest of this test opens with the first password again.
    let first = tmp.path().join("first");
    std::fs::write(&first, PASSWORD).unwrap();
    run(
        cadang(r)
            .args(["key", "add", "--new-password-file"])
            .arg(&first)
            .env("CADANG_PASSWORD", "third password"),
        0,
    );

    // forget: keep-last 2 of 4 snapshots, dry run first changes nothing.
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..4 {
        std::fs::write(src.join("f"), format!("v{i}")).unwrap();
        run(cadang(r).args(["backup", "-q"]).arg(&src), 0);
    }
    run(
        cadang(r).args(["forget", "--keep-last", "2", "--dry-run"]),
        0,
    );
    assert_eq!(
        last_json(&run(cadang(r).args(["snapshots", "--json"]), 0))
            .as_array()
            .unwrap()
            .len(),
        4
    );
    run(
        cadang(r).args(["forget", "--keep-last", "2", "--prune", "--grace", "0"]),
        0,
    );
    let snaps = last_json(&run(cadang(r).args(["snapshots", "--json"]), 0));
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    run(cadang(r).args(["check", "--read-data"]), 0);
    let t = tmp.path().join("out");
    run(cadang(r).args(["restore", "latest", "--target"]).arg(&t), 0);
    assert_eq!(
        std::fs::read_to_string(restored_path(&t, &src).join("f")).unwrap(),
        "v3"
    );
    // unlock with no locks is fine.
    run(cadang(r).args(["unlock"]), 0);
}

/// Two initialisations of one location at once (two daemons making an agency's
/// repository for their first runs): one wins, and a key slot left by the loser, which
/// opens with the same password but wraps another master secret, does not stop the
/// repository from opening.
#[test]
fn a_stray_key_slot_from_a_lost_init_race_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let winner = tmp.path().join("winner");
    let loser = tmp.path().join("loser");
    run(cadang(winner.to_str().unwrap()).arg("init"), 0);
    run(cadang(loser.to_str().unwrap()).arg("init"), 0);
    // The loser's slot lands in the winner's keys/ (its config write was refused).
    for entry in std::fs::read_dir(loser.join("keys")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), winner.join("keys").join(entry.file_name())).unwrap();
    }
    assert_eq!(std::fs::read_dir(winner.join("keys")).unwrap().count(), 2);
    let o = run(
        cadang(winner.to_str().unwrap()).args(["snapshots", "--json"]),
        0,
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
}

/// A key slot the cadang daemon made (its host is the daemon's) is neither replaced nor
/// removed by `cadang key` without `--force`: the daemon derives that slot's password and
/// could no longer open the agency's repository.
#[test]
fn the_daemons_key_slot_is_kept_without_force() {
    use cadang::engine::crypto::KdfParams;
    use cadang::engine::{OpenOptions, Repository, Store, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = OpenOptions {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        host: Some(cadang::jobs::DAEMON_HOST.into()),
    };
    let store = Store::open(r, &StoreOptions::default()).unwrap();
    Repository::init(
        runtime.handle().clone(),
        store,
        PASSWORD.as_bytes(),
        &options,
    )
    .unwrap();
    let second = tmp.path().join("second");
    std::fs::write(&second, "second password").unwrap();
    let o = run(
        cadang(r)
            .args(["key", "passwd", "--new-password-file"])
            .arg(&second),
        1,
    );
    assert!(
        stderr(&o).contains("refusing to replace key slot") && stderr(&o).contains("cadang-daemon"),
        "{o:?}"
    );
    run(cadang(r).arg("snapshots"), 0);
    // An officer's own slot beside it is theirs to change; the daemon's stays.
    run(
        cadang(r)
            .args(["key", "add", "--new-password-file"])
            .arg(&second),
        0,
    );
    let as_officer = |cmd: &mut std::process::Command| {
        cmd.env("CADANG_PASSWORD", "second password");
    };
    let mut list = cadang(r);
    as_officer(list.args(["key", "list", "--json"]));
    let keys = last_json(&run(&mut list, 0));
    let daemons = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["host"] == cadang::jobs::DAEMON_HOST)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut remove = cadang(r);
    as_officer(remove.args(["key", "remove", &daemons]));
    assert!(stderr(&run(&mut remove, 1)).contains("refusing to remove key slot"));
    run(cadang(r).arg("snapshots"), 0);
    let mut forced = cadang(r);
    as_officer(forced.args(["key", "remove", "--force", &daemons]));
    run(&mut forced, 0);
    run(cadang(r).arg("snapshots"), 12);
}

/// A listing whose reader stops early (`cadang ls latest | head`) ends quietly, killed by
/// SIGPIPE like any Unix tool, not with a panic and its backtrace.
#[test]
fn output_cut_short_by_its_reader_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("repo");
    let r = r.to_str().unwrap();
    run(cadang(r).arg("init"), 0);
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Far more listing than a pipe holds (64 KiB), so a write meets the closed pipe.
    for i in 0..1500 {
        std::fs::write(
            src.join(format!(
                "laporan-keuangan-triwulan-{i:05}-{}.txt",
                "x".repeat(60)
            )),
            b"",
        )
        .unwrap();
    }
    run(cadang(r).args(["backup", "-q"]).arg(&src), 0);
    let mut child = cadang(r)
        .args(["ls", "latest"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {said}",
        out.status
    );
    assert!(!said.contains("panicked"), "{said}");
}
