//! Round trip through the real binary on a tree of edge cases: restored tree
//! identical in content and metadata; incremental backups skip unchanged files.

mod common;
use common::*;

#[test]
fn edge_case_tree_round_trips_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    edge_case_tree(&src, 300);
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);

    let out = run(
        cadang(repo)
            .args(["backup", "--json", "--tag", "first"])
            .arg(&src),
        0,
    );
    let sum = last_json(&out);
    assert_eq!(sum["message_type"], "summary");
    assert_eq!(sum["files_failed"], 0);
    let first_added = sum["data_added"].as_u64().unwrap();
    // 300 MiB of which a quarter is zeros and most of the rest one repeated
    // block: dedup must keep the repository far smaller.
    assert!(
        first_added < 100 << 20,
        "data_added {first_added} too large: dedup/compression not working"
    );

    let target = tmp.path().join("restore");
    let out = run(
        cadang(repo)
            .args(["restore", "latest", "--verify", "--json", "--target"])
            .arg(&target),
        0,
    );
    let r = last_json(&out);
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["verify"]["mismatches"].as_array().unwrap().len(), 0);
    let restored = restored_path(&target, &src);
    assert_same_tree(&src, &restored);
    // Sparse file stays sparse (holes not written).
    assert!(allocated_bytes(&restored.join("sparse")) < 1 << 20);

    // Second backup of unchanged data: nothing read again, almost nothing added.
    let out = run(cadang(repo).args(["backup", "--json"]).arg(&src), 0);
    let s2 = last_json(&out);
    assert_eq!(s2["files_new"], 0);
    assert_eq!(s2["files_changed"], 0);
    assert!(s2["files_unmodified"].as_u64().unwrap() > 1500);
    assert_eq!(s2["data_blobs"], 0);

    // Change one file: only that is read and only its new chunk is stored.
    std::fs::write(src.join("many/d1/f1.txt"), "changed\n").unwrap();
    let out = run(cadang(repo).args(["backup", "--json"]).arg(&src), 0);
    let s3 = last_json(&out);
    assert_eq!(s3["files_changed"], 1);
    assert!(s3["data_added"].as_u64().unwrap() < 64 << 10);

    // diff names exactly the changed file.
    let snaps = last_json(&run(cadang(repo).args(["snapshots", "--json"]), 0));
    let ids: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    // (Directories above the source, such as the temporary directory, may change
    // under tests running beside this one; only the source tree is compared.)
    let out = run(cadang(repo).args(["diff", &ids[1], &ids[2]]), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let in_src: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&*src.to_string_lossy()))
        .collect();
    assert_eq!(
        in_src,
        [format!("M    {}", src.join("many/d1/f1.txt").display())],
        "{text}"
    );
    assert!(text.contains("0 added, 0 removed, "), "{text}");

    // ls lists the tree, including odd names.
    let out = run(cadang(repo).args(["ls", "latest"]), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ünïcödé – ファイル.txt"));
    assert!(text.contains("link-dangling -> does/not/exist"));

    // Partial restore with --include.
    let t2 = tmp.path().join("partial");
    let inc = format!("{}/many/d2", src.display());
    run(
        cadang(repo)
            .args(["restore", "latest", "--include", &inc, "--target"])
            .arg(&t2),
        0,
    );
    let p = restored_path(&t2, &src);
    assert!(p.join("many/d2").is_dir());
    assert!(!p.join("many/d3").exists());
    assert!(!p.join("big.img").exists());

    // A restore leaves what it wrote on disk and out of the page cache. Dropping each
    // chunk's range alone would leave the pages two neighbouring chunks share (about
    // 470 of them here); the whole file is dropped once it is written, so at most a
    // few the kernel holds busy at that moment may stay.
    let t3 = tmp.path().join("big-only");
    let inc = format!("{}/big.img", src.display());
    let out = run(
        cadang(repo)
            .args(["restore", "latest", "--json", "--include", &inc, "--target"])
            .arg(&t3),
        0,
    );
    assert_eq!(last_json(&out)["files_restored"], 1);
    let big = restored_path(&t3, &src).join("big.img");
    if let Some(cached) = cached_bytes(&big) {
        assert!(
            cached <= 64 * 4096,
            "{cached} bytes of the restored file cached"
        );
    }
    assert_eq!(
        std::fs::read(&big).unwrap(),
        std::fs::read(src.join("big.img")).unwrap()
    );

    // check --read-data passes on the healthy repository.
    run(cadang(repo).args(["check", "--read-data"]), 0);
}

#[test]
fn excludes_and_one_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("cache")).unwrap();
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("cache/x"), b"x").unwrap();
    std::fs::write(src.join("keep/a.tmp"), b"x").unwrap();
    std::fs::write(src.join("keep/b.txt"), b"x").unwrap();
    let ex = tmp.path().join("excludes");
    std::fs::write(&ex, "# comment\n*.tmp\n").unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    run(
        cadang(repo)
            .args(["backup", "-x", "--exclude", "cache", "--exclude-file"])
            .arg(&ex)
            .arg(&src),
        0,
    );
    let out = run(cadang(repo).args(["ls", "latest"]), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("keep/b.txt"));
    assert!(!text.contains("a.tmp"), "{text}");
    assert!(!text.contains("cache"), "{text}");

    // A restore leaves out what its excludes match, with the same patterns: a name
    // anywhere, or a path from the snapshot's root; and --verify checks what it wrote.
    std::fs::write(src.join("keep/c.log"), b"log").unwrap();
    std::fs::create_dir_all(src.join("keep/sub")).unwrap();
    std::fs::write(src.join("keep/sub/d.txt"), b"d").unwrap();
    run(cadang(repo).arg("backup").arg(&src), 0);
    let target = tmp.path().join("restored");
    let sub = format!("{}/keep/sub", src.display());
    run(
        cadang(repo)
            .args([
                "restore",
                "latest",
                "--verify",
                "--exclude",
                "*.log",
                "-e",
                &sub,
            ])
            .arg("--target")
            .arg(&target),
        0,
    );
    let keep = restored_path(&target, &src.join("keep"));
    assert!(keep.join("b.txt").is_file());
    assert!(!keep.join("c.log").exists(), "excluded by name");
    assert!(
        !keep.join("sub").exists(),
        "excluded by path, with what is below it"
    );
    let out = run(
        cadang(repo)
            .args(["restore", "latest", "--exclude", "[unclosed"])
            .arg("--target")
            .arg(tmp.path().join("bad")),
        1,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[unclosed"));
    assert!(
        !tmp.path().join("bad").exists(),
        "refused before anything is written"
    );
}

#[test]
fn find_names_the_snapshots_that_still_hold_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for dir in ["keuangan", "www/site", "logs"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    std::fs::write(src.join("keuangan/laporan-2025.xlsx"), bytes(5000, 1)).unwrap();
    std::fs::write(src.join("keuangan/notes.txt"), b"first").unwrap();
    std::fs::write(src.join("www/site/index.php"), b"<?php echo 1;").unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("logs/app-{i}.log")), format!("line {i}")).unwrap();
    }
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    run(
        cadang(repo).args(["backup", "--tag", "night1"]).arg(&src),
        0,
    );
    // The report is deleted before the second night; the third night changes nothing.
    std::fs::remove_file(src.join("keuangan/laporan-2025.xlsx")).unwrap();
    std::fs::write(src.join("keuangan/notes.txt"), b"second").unwrap();
    run(cadang(repo).arg("backup").arg(&src), 0);
    run(cadang(repo).arg("backup").arg(&src), 0);
    let ids = snapshot_ids(repo);
    assert_eq!(ids.len(), 3);

    let matches = |args: &[&str]| -> (Vec<(String, String, u64)>, serde_json::Value) {
        let out = run(cadang(repo).arg("--json").arg("find").args(args), 0);
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let (summary, found) = lines.split_last().unwrap();
        assert_eq!(summary["message_type"], "summary", "{lines:?}");
        let found = found
            .iter()
            .map(|m| {
                (
                    m["snapshot"].as_str().unwrap().to_owned(),
                    m["path"].as_str().unwrap().to_owned(),
                    m["size"].as_u64().unwrap(),
                )
            })
            .collect();
        (found, summary.clone())
    };
    let report = format!("{}/keuangan/laporan-2025.xlsx", src.display());
    // Only the first night still has the report.
    let (found, summary) = matches(&["laporan-*.xlsx"]);
    assert_eq!(found, vec![(ids[0].clone(), report.clone(), 5000)]);
    assert_eq!(summary["truncated"], false);
    assert!(matches(&["LAPORAN-*"]).0.is_empty());
    assert_eq!(matches(&["-i", "LAPORAN-*"]).0.len(), 1);
    // A pattern with a `/` matches whole paths; the unchanged page is in every
    // snapshot, newest first.
    let (found, _) = matches(&["/**/www/*/index.php"]);
    let snapshots: Vec<&str> = found.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(snapshots, vec![&ids[2], &ids[1], &ids[0]]);
    // A name pattern does not reach across directories.
    assert!(matches(&["www*index.php"]).0.is_empty());
    // The limit stops the search and says so.
    let (found, summary) = matches(&["--limit", "60", "*.log"]);
    assert_eq!(found.len(), 60);
    assert_eq!(summary["truncated"], true);
    assert_eq!(summary["matches"], 60);
    // One snapshot, by id prefix; a tag filter.
    let (found, _) = matches(&["--snapshot", &ids[1][..10], "notes.txt"]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, ids[1]);
    let (found, _) = matches(&["--tag", "night1", "*.txt"]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, ids[0]);
    // ls below a path reads only that part; a path the snapshot lacks is an error.
    let out = run(cadang(repo).args(["ls", "latest"]).arg(src.join("www")), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("www/site/index.php"), "{text}");
    assert!(!text.contains("keuangan"), "{text}");
    let out = run(cadang(repo).args(["ls", "latest"]).arg(src.join("nope")), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not in the snapshot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pattern that is not one is refused with its reason.
    let out = cadang(repo).args(["find", "[unclosed"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[unclosed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stats_counts_restore_size_distinct_data_and_what_prune_would_collect() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("arsip")).unwrap();
    let scan = bytes(300_000, 11);
    std::fs::write(src.join("arsip/scan.pdf"), &scan).unwrap();
    std::fs::write(src.join("arsip/scan-copy.pdf"), &scan).unwrap();
    std::fs::write(src.join("notes.txt"), b"twelve bytes").unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    run(cadang(repo).args(["backup", "--tag", "t1"]).arg(&src), 0);
    let added = bytes(50_000, 12);
    std::fs::write(src.join("arsip/new.pdf"), &added).unwrap();
    run(cadang(repo).arg("backup").arg(&src), 0);
    let stats =
        |args: &[&str]| last_json(&run(cadang(repo).arg("--json").arg("stats").args(args), 0));

    let all = stats(&[]);
    assert_eq!(all["snapshots"], 2);
    assert_eq!(all["restore"]["files"], 3 + 4);
    let first_bytes = 2 * scan.len() as u64 + 12;
    assert_eq!(
        all["restore"]["bytes"],
        2 * first_bytes + added.len() as u64
    );
    let distinct = (scan.len() + 12 + added.len()) as u64;
    assert_eq!(all["data"]["raw_bytes"], distinct);
    let dedup = all["dedup_ratio"].as_f64().unwrap();
    let expected = (2 * first_bytes + added.len() as u64) as f64 / distinct as f64;
    assert!(
        (dedup - expected).abs() < 1e-9,
        "{dedup} against {expected}"
    );
    assert_eq!(all["missing_chunks"], 0);
    assert_eq!(all["repository"]["unreferenced"]["count"], 0);
    assert!(all["repository"]["packs"].as_u64().unwrap() >= 1);

    // A choice of snapshots: by name, by tag. What prune would collect is then unknown.
    let latest = stats(&["latest"]);
    assert_eq!(latest["snapshots"], 1);
    assert_eq!(latest["restore"]["files"], 4);
    assert!(latest["repository"]["unreferenced"].is_null());
    let tagged = stats(&["--tag", "t1"]);
    assert_eq!(tagged["restore"]["files"], 3);
    assert_eq!(tagged["data"]["raw_bytes"], (scan.len() + 12) as u64);

    // The older snapshot forgotten: its own trees are left for prune, every chunk is
    // still in use.
    run(cadang(repo).args(["forget", "--keep-last", "1"]), 0);
    let left = stats(&[]);
    assert_eq!(left["snapshots"], 1);
    assert_eq!(left["data"], all["data"]);
    let unreferenced = &left["repository"]["unreferenced"];
    assert!(unreferenced["count"].as_u64().unwrap() >= 1, "{left}");
    assert_eq!(
        unreferenced["raw_bytes"].as_u64().unwrap(),
        all["trees"]["raw_bytes"].as_u64().unwrap() - left["trees"]["raw_bytes"].as_u64().unwrap()
    );

    let text = run(cadang(repo).arg("stats"), 0);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Restore size:") && text.contains("what `cadang prune` would collect"),
        "{text}"
    );
    let out = run(cadang(repo).args(["stats", "--host", "no-such-host"]), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot matches"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn repositories_of_either_cipher_round_trip_copy_to_each_other_and_keep_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    edge_case_tree(&src, 8);
    let mut repos = Vec::new();
    for cipher in ["xchacha20-poly1305", "aes-256-gcm-derived"] {
        let repo = tmp.path().join(cipher);
        let repo = repo.to_str().unwrap().to_owned();
        let out = run(
            cadang(&repo).args(["--json", "init", "--cipher", cipher]),
            0,
        );
        assert_eq!(last_json(&out)["cipher"], cipher);
        let sum = last_json(&run(cadang(&repo).args(["backup", "--json"]).arg(&src), 0));
        assert_eq!(sum["files_failed"], 0, "{cipher}: {sum}");
        let target = tmp.path().join(format!("restore-{cipher}"));
        let r = last_json(&run(
            cadang(&repo)
                .args(["restore", "latest", "--verify", "--json", "--target"])
                .arg(&target),
            0,
        ));
        assert_eq!(r["success"], true, "{cipher}: {r}");
        assert_same_tree(&src, &restored_path(&target, &src));
        run(cadang(&repo).args(["check", "--read-data"]), 0);
        repos.push(repo);
    }

    // Copies between them re-seal every blob under the destination's cipher.
    let snaps = last_json(&run(cadang(&repos[0]).args(["snapshots", "--json"]), 0));
    let id = snaps[0]["id"].as_str().unwrap().to_owned();
    run(
        cadang(&repos[0])
            .args(["copy", &id, "--to", &repos[1]])
            .env("CADANG_TO_PASSWORD", PASSWORD),
        0,
    );
    run(cadang(&repos[1]).args(["check", "--read-data"]), 0);
    let copies = last_json(&run(cadang(&repos[1]).args(["snapshots", "--json"]), 0));
    assert_eq!(copies.as_array().unwrap().len(), 2);

    // A replica keeps its source's cipher; naming another one with --from-repo,
    // or an unknown one, is refused before anything is written.
    let replica = tmp.path().join("replica");
    let replica = replica.to_str().unwrap();
    let out = run(
        cadang(replica)
            .args(["--json", "init", "--from-repo", &repos[0]])
            .env("CADANG_FROM_PASSWORD", PASSWORD),
        0,
    );
    assert_eq!(last_json(&out)["cipher"], "xchacha20-poly1305");
    let refused = tmp.path().join("refused");
    let refused = refused.to_str().unwrap();
    for args in [
        vec![
            "init",
            "--cipher",
            "aes-256-gcm-derived",
            "--from-repo",
            &repos[0],
        ],
        vec!["init", "--cipher", "aes-128-ecb"],
    ] {
        let out = run(cadang(refused).args(&args), 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--cipher") || err.contains("aes-128-ecb"),
            "{args:?}: {err}"
        );
        assert!(!std::path::Path::new(refused).exists(), "{args:?}");
    }
}

/// `dump` of a directory writes a tar archive that GNU tar extracts to the same tree:
/// content, modes, owners, mtimes to the nanosecond (PAX records), symlink targets, hard
/// links and the FIFO. Written to standard output for a pipe, or to `--output` with mode
/// 0600 once complete.
#[test]
fn dump_of_a_directory_is_a_tar_archive_that_extracts_to_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    edge_case_tree(&src, 0);
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    run(cadang(repo).args(["backup", "-q"]).arg(&src), 0);
    let src_arg = src.to_str().unwrap();

    let out = run(cadang(repo).args(["dump", "latest", src_arg]), 0);
    let extracted = tmp.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-p", "--numeric-owner", "-f", "-", "-C"])
        .arg(&extracted)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("GNU tar");
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(
        tar.wait().unwrap().success(),
        "tar could not extract the dump"
    );
    let inside = extracted.join(src.strip_prefix("/").unwrap());
    let source = fingerprint(&src);
    assert!(
        source
            .values()
            .any(|print| print.mtime_ns % 1_000_000_000 != 0),
        "the tree should have times with fractions of a second"
    );
    assert_same_fingerprints(&source, &fingerprint(&inside), "dump | tar -x: ");

    // To a file: the summary counts what went in; the archive appears only complete.
    let archive = tmp.path().join("src.tar");
    let out = run(
        cadang(repo)
            .args(["--json", "dump", "latest", src_arg, "-o"])
            .arg(&archive),
        0,
    );
    let summary = last_json(&out);
    assert_eq!(summary["archive"], "tar", "{summary}");
    // 1515 paths of regular files, two of them later links to `hard-a`.
    assert_eq!(summary["files"], 1500 + 13, "{summary}");
    assert_eq!(summary["hardlinks"], 2, "{summary}");
    assert_eq!(summary["symlinks"], 3, "{summary}");
    assert_eq!(summary["specials"], 1, "{summary}");
    let size = std::fs::metadata(&archive).unwrap().len();
    assert_eq!(summary["bytes"].as_u64(), Some(size));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&archive).unwrap().permissions(),
    );
    assert_eq!(mode & 0o7777, 0o600);
    let listed = std::process::Command::new("tar")
        .args(["-t", "-f"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert!(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|line| line.ends_with("many/d0/f0.txt")),
        "archive listing lacks a file"
    );
    // A symlink is an archive only when asked for.
    let link = format!("{src_arg}/link-ok");
    let out = run(cadang(repo).args(["dump", "latest", &link]), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--archive tar"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        cadang(repo).args(["dump", "latest", &link, "--archive", "tar"]),
        0,
    );
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let kinds: Vec<_> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().header().entry_type())
        .collect();
    assert_eq!(kinds, [tar::EntryType::Symlink], "a symlink entry");
}

/// `backup --stdin` and `--stdin-from-command` save a stream (a database dump) as one
/// file of a snapshot, deduplicated like any file; a dump command that fails fails the
/// backup and writes no snapshot, and the error names the program but not its arguments.
#[test]
fn a_stream_backs_up_as_one_file_and_a_failed_dump_writes_no_snapshot() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    let dump = bytes(5_000_000, 21);

    // Piped in, as `pg_dump simpeg | cadang backup --stdin` does.
    let mut child = cadang(repo)
        .args([
            "--json",
            "backup",
            "--stdin",
            "--stdin-filename",
            "simpeg.sql",
        ])
        .args(["--tag", "db"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let writer = {
        let dump = dump.clone();
        std::thread::spawn(move || pipe.write_all(&dump).unwrap())
    };
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = last_json(&out);
    assert_eq!(sum["files_new"], 1);
    assert_eq!(sum["total_bytes_processed"], dump.len() as u64);
    assert!(sum["data_added_raw"].as_u64().unwrap() >= dump.len() as u64);

    let snaps = last_json(&run(cadang(repo).args(["snapshots", "--json"]), 0));
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/simpeg.sql"]));
    assert_eq!(snaps[0]["tags"], serde_json::json!(["db"]));

    let out_file = tmp.path().join("simpeg.sql");
    run(
        cadang(repo)
            .args(["dump", "latest", "/simpeg.sql", "-o"])
            .arg(&out_file),
        0,
    );
    assert!(std::fs::read(&out_file).unwrap() == dump, "dump differs");
    let target = tmp.path().join("restored");
    run(
        cadang(repo)
            .args(["restore", "latest", "--verify", "--target"])
            .arg(&target),
        0,
    );
    let restored = target.join("simpeg.sql");
    assert!(std::fs::read(&restored).unwrap() == dump, "restore differs");
    let mode = std::fs::metadata(&restored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a dump is private: {mode:o}");

    // The same dump from a command: nothing new is stored, and the first is its parent.
    let saved = tmp.path().join("saved.sql");
    std::fs::write(&saved, &dump).unwrap();
    let out = run(
        cadang(repo)
            .args(["--json", "backup", "--stdin-from-command"])
            .args(["--stdin-filename", "simpeg.sql", "--", "cat"])
            .arg(&saved),
        0,
    );
    let sum = last_json(&out);
    assert_eq!(sum["total_bytes_processed"], dump.len() as u64);
    assert_eq!(sum["data_blobs"], 0, "the same dump deduplicates: {sum}");
    let snaps = last_json(&run(cadang(repo).args(["snapshots", "--json"]), 0));
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert_eq!(snaps[1]["parent"], snaps[0]["id"]);

    // A dump that dies half-way: the backup fails and no snapshot is written. The
    // password on its command line is never shown.
    let script = format!(
        "head -c 2000000 {}; echo 'pg_dump: connection to server lost' >&2; exit 3",
        saved.display()
    );
    let out = run(
        cadang(repo)
            .args(["backup", "--stdin-from-command", "--", "sh", "-c", &script])
            .args(["sh", "--password=rahasia-dinkes"]),
        1,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`sh` failed") && err.matches("exit status: 3").count() == 1,
        "named once: {err}"
    );
    assert!(
        err.contains("connection to server lost"),
        "the command's own error is shown: {err}"
    );
    assert!(!err.contains("rahasia"), "{err}");
    assert_eq!(snapshot_ids(repo).len(), 2, "no snapshot of a failed dump");
    run(cadang(repo).args(["check", "--read-data"]), 0);

    // A command that cannot be run, a name that is not one path component, and paths
    // given with --stdin are refused.
    let out = run(
        cadang(repo).args([
            "backup",
            "--stdin-from-command",
            "--",
            "/nonexistent/pg_dump",
        ]),
        1,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run `/nonexistent/pg_dump`"));
    let out = run(
        cadang(repo)
            .args(["backup", "--stdin", "--stdin-filename", "../escape"])
            .stdin(Stdio::null()),
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one path component"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(
        cadang(repo)
            .args(["backup", "--stdin"])
            .arg(tmp.path())
            .stdin(Stdio::null()),
        2,
    );
    assert_eq!(snapshot_ids(repo).len(), 2);

    // An empty stream (a dump that failed at once, before a pipe) is saved, with a warning.
    let out = run(
        cadang(repo)
            .args(["backup", "--stdin", "--stdin-filename", "kosong.sql"])
            .stdin(Stdio::null()),
        0,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the stream was empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_ids(repo).len(), 3);
}

/// `--files-from-verbatim` and `--files-from-raw` add the paths they list (names with
/// spaces, a CRLF line end, NUL-separated names); `--exclude-caches` and
/// `--exclude-if-present` keep only the marker of a marked directory, listed ones too;
/// `--exclude-larger-than` leaves out larger files.
#[test]
fn listed_paths_are_backed_up_and_marked_directories_keep_only_their_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for (rel, data) in [
        ("a/one.txt", &b"one"[..]),
        ("b/two.txt", b"not listed"),
        ("c/with space .txt", b"listed by name"),
        (
            "cache/CACHEDIR.TAG",
            b"Signature: 8a477f597d28d172789f06886806bc55\n",
        ),
        ("cache/blob.bin", b"cached"),
        ("scratch/.nobackup", b""),
        ("scratch/junk.bin", b"scratch"),
        ("a/huge.img", &[0u8; 4096][..]),
    ] {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    // A list file holding `entries` of `src`, each followed by `end`.
    let list = |name: &str, entries: &[&str], end: &str| {
        let path = tmp.path().join(name);
        let text: String = entries
            .iter()
            .map(|entry| match entry {
                &"" => end.to_owned(),
                _ => format!("{}{end}", src.join(entry).display()),
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    // An empty line, and a line ended by CRLF.
    let verbatim = list("list.txt", &["a", "", "c/with space .txt"], "\r\n");
    let raw = list("list.raw", &["cache", "scratch"], "\0");
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    run(
        cadang(repo)
            .args([
                "backup",
                "--exclude-caches",
                "--exclude-if-present",
                ".nobackup",
                "--exclude-larger-than",
                "4095",
            ])
            .arg("--files-from-verbatim")
            .arg(&verbatim)
            .arg("--files-from-raw")
            .arg(&raw),
        0,
    );
    let out = run(cadang(repo).args(["ls", "latest"]), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for kept in [
        "a/one.txt",
        "c/with space .txt",
        "cache/CACHEDIR.TAG",
        "scratch/.nobackup",
    ] {
        assert!(text.contains(kept), "{kept} missing: {text}");
    }
    for left_out in ["two.txt", "blob.bin", "junk.bin", "huge.img"] {
        assert!(!text.contains(left_out), "{left_out} kept: {text}");
    }
    // A list that names nothing (here standard input, which is empty) is an error, not
    // a backup of nothing; so is a marker that is a path.
    let out = run(cadang(repo).args(["backup", "--files-from-raw", "-"]), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("list no path"),
        "{out:?}"
    );
    let out = run(
        cadang(repo)
            .args(["backup", "--exclude-if-present", "a/.nobackup"])
            .arg(&src),
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a/.nobackup"),
        "{out:?}"
    );
}

/// `rewrite`: a key and a password file that should never have been backed up leave
/// every snapshot; a prune then takes their data out of the repository.
#[test]
fn rewrite_leaves_files_out_of_snapshots_and_prune_frees_their_data() {
    use cadang::engine::{OpenOptions, Repository, Store, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let other = tmp.path().join("other");
    for dir in ["app/keys", "app/www", "app/sub"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    std::fs::create_dir_all(&other).unwrap();
    let secret = b"DB_PASSWORD=rahasia-sekali-jangan-dicadangkan\n".repeat(40);
    std::fs::write(src.join("app/.env"), &secret).unwrap();
    std::fs::write(src.join("app/sub/.env"), b"NESTED=1\n").unwrap();
    std::fs::write(src.join("app/keys/id_ed25519"), bytes(3000, 5)).unwrap();
    std::fs::write(src.join("app/www/index.php"), b"<?php echo 1;").unwrap();
    std::fs::write(src.join("app/data.bin"), bytes(200_000, 6)).unwrap();
    std::fs::write(other.join("notes.txt"), b"no secrets here").unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    run(cadang(repo).arg("backup").arg(&src), 0);
    std::fs::write(src.join("app/www/index.php"), b"<?php echo 2;").unwrap();
    run(cadang(repo).arg("backup").arg(&src), 0);
    run(cadang(repo).arg("backup").arg(&other), 0);
    let ids = snapshot_ids(repo);
    assert_eq!(ids.len(), 3);
    let keys = format!("{}/app/keys", src.display());
    let args = ["rewrite", "-e", ".env", "-e", &keys];
    let summary = |out: &std::process::Output| last_json(out);
    let removed = |rewritten: &serde_json::Value| -> Vec<String> {
        let mut paths: Vec<String> = rewritten["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        paths.sort();
        paths
    };
    let expected = vec![
        format!("{}/app/.env", src.display()),
        format!("{keys}/"),
        format!("{}/app/sub/.env", src.display()),
    ];

    // A dry run names what would go and changes nothing.
    let out = run(cadang(repo).arg("--json").args(args).arg("--dry-run"), 0);
    let plan = summary(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["rewritten"].as_array().unwrap().len(), 2, "{plan}");
    assert_eq!(plan["rewritten"][0]["to"], serde_json::Value::Null);
    assert_eq!(removed(&plan["rewritten"][0]), expected);
    assert_eq!(plan["unchanged"], serde_json::json!([ids[2]]));
    assert_eq!(snapshot_ids(repo), ids);
    // No pattern, a malformed one, or one that leaves a snapshot empty: refused, nothing
    // written.
    let out = run(cadang(repo).args(["rewrite", &ids[0]]), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no exclude pattern"),
        "{out:?}"
    );
    let out = run(cadang(repo).args(["rewrite", "-e", "[oops"]), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[oops"),
        "{out:?}"
    );
    let out = run(cadang(repo).args(["rewrite", "-e"]).arg(&other), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`cadang forget` removes a whole snapshot"),
        "{out:?}"
    );
    assert_eq!(snapshot_ids(repo), ids);

    // One snapshot by id, the original kept: the new one is tagged and names it.
    let out = run(cadang(repo).arg("--json").args(args).arg(&ids[0][..8]), 0);
    let first = summary(&out);
    let kept_copy = first["rewritten"][0]["to"].as_str().unwrap().to_owned();
    assert_eq!(first["forgotten"], serde_json::json!([]));
    let listed = last_json(&run(cadang(repo).args(["--json", "snapshots"]), 0));
    let new = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == kept_copy.as_str())
        .unwrap();
    assert_eq!(new["rewritten_from"], ids[0].as_str());
    assert!(new["tags"].as_array().unwrap().contains(&"rewrite".into()));
    let original = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == ids[0].as_str())
        .unwrap();
    assert_eq!(new["time"], original["time"], "the original's time is kept");
    run(cadang(repo).args(["forget", &kept_copy]), 0);

    // Every snapshot, originals forgotten: the parent of the second is the first's
    // replacement, and the snapshot without a match is left as it was.
    let out = run(cadang(repo).arg("--json").args(args).arg("--forget"), 0);
    let done = summary(&out);
    let rewritten = done["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 2, "{done}");
    assert_eq!(removed(&rewritten[1]), expected);
    assert_eq!(done["unchanged"], serde_json::json!([ids[2]]));
    assert_eq!(done["forgotten"], serde_json::json!([ids[0], ids[1]]));
    let listed = last_json(&run(cadang(repo).args(["--json", "snapshots"]), 0));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let by_id = |id: &serde_json::Value| listed.iter().find(|s| &s["id"] == id).unwrap();
    assert_eq!(by_id(&rewritten[1]["to"])["parent"], rewritten[0]["to"]);
    assert!(
        by_id(&rewritten[1]["to"])["tags"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let find = run(
        cadang(repo).args(["--json", "find", ".env", "id_ed25519"]),
        0,
    );
    assert_eq!(last_json(&find)["matches"], 0, "{find:?}");
    // An id that was forgotten for its replacement is named with the replacement, and
    // nothing acts on it in its place.
    let old = run(cadang(repo).args(["ls", &ids[1][..8]]), 1);
    let to = rewritten[1]["to"].as_str().unwrap();
    assert!(
        String::from_utf8_lossy(&old.stderr)
            .contains(&format!("it was replaced by snapshot {}", &to[..8])),
        "{old:?}"
    );
    run(cadang(repo).args(["forget", &ids[1][..8]]), 1);
    assert_eq!(snapshot_ids(repo).len(), 3);
    // A second rewrite finds nothing to do.
    let again = summary(&run(cadang(repo).arg("--json").args(args), 0));
    assert_eq!(again["rewritten"], serde_json::json!([]));
    assert_eq!(again["unchanged"].as_array().unwrap().len(), 3);

    // The rest restores as it was; check finds nothing wrong.
    let target = tmp.path().join("restored");
    let second = rewritten[1]["to"].as_str().unwrap();
    run(
        cadang(repo)
            .args(["restore", second, "--verify", "--target"])
            .arg(&target),
        0,
    );
    let restored = restored_path(&target, &src);
    assert_eq!(
        std::fs::read(restored.join("app/www/index.php")).unwrap(),
        b"<?php echo 2;"
    );
    assert_eq!(
        std::fs::read(restored.join("app/data.bin")).unwrap(),
        bytes(200_000, 6)
    );
    assert!(restored.join("app/sub").is_dir());
    for gone in ["app/.env", "app/sub/.env", "app/keys"] {
        assert!(!restored.join(gone).exists(), "{gone} restored");
    }
    run(cadang(repo).args(["check", "--read-data"]), 0);

    // Until a prune the secret's data is still stored. A prune that repacks every partly
    // used pack takes it out of the index and marks its pack; the next one after the
    // grace period deletes that pack.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = || {
        let store = Store::open(repo, &StoreOptions::default()).unwrap();
        let r = Repository::open(
            rt.handle().clone(),
            store,
            PASSWORD.as_bytes(),
            &OpenOptions::default(),
        )
        .unwrap();
        let (index, _) = r.load_index().unwrap();
        index.get(&r.blob_id(&secret)).map(|(pack, _)| pack)
    };
    let pack = stored().expect("the secret is stored before the prune");
    let pack_file = std::path::Path::new(repo).join(cadang::engine::repo::pack_key(&pack));
    assert!(pack_file.exists(), "{}", pack_file.display());
    let prune = || {
        run(
            cadang(repo).args(["prune", "--max-unused", "0", "--grace", "0h"]),
            0,
        )
    };
    prune();
    assert_eq!(
        stored(),
        None,
        "the left-out file's data is no longer indexed"
    );
    prune();
    assert!(!pack_file.exists(), "the pack that held it is deleted");
    run(cadang(repo).args(["check", "--read-data"]), 0);
}

/// `tag` and `forget --keep-tag`: a snapshot held for an audit outlives the retention
/// that removes its neighbours; the daemon's own tags cannot be taken off.
#[test]
fn a_held_snapshot_outlives_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    for n in 0..4 {
        std::fs::write(src.join("ledger.csv"), format!("row {n}\n")).unwrap();
        run(
            cadang(repo).args(["backup", "--tag", "plan:3"]).arg(&src),
            0,
        );
    }
    let ids = snapshot_ids(repo);
    let tags_of = |id: &str| -> Vec<String> {
        let listed = last_json(&run(cadang(repo).args(["--json", "snapshots"]), 0));
        let found = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned();
        found.map_or_else(Vec::new, |s| {
            s["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect()
        })
    };
    let out = run(
        cadang(repo).args([
            "--json",
            "tag",
            "--add",
            "hold",
            "--add",
            "bpk-2026",
            &ids[1][..8],
        ]),
        0,
    );
    let changed = last_json(&out);
    assert_eq!(changed["changed"][0]["from"], ids[1].as_str());
    let held = changed["changed"][0]["to"].as_str().unwrap().to_owned();
    assert_eq!(tags_of(&held), ["plan:3", "hold", "bpk-2026"]);
    assert!(tags_of(&ids[1]).is_empty(), "the original is gone");
    // Nothing to change, or a daemon tag to remove: refused, nothing written.
    let out = run(cadang(repo).args(["tag", &held]), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to change"));
    let out = run(cadang(repo).args(["tag", "--remove", "plan:3", &held]), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("daemon"),
        "{out:?}"
    );
    let out = run(
        cadang(repo).args(["--json", "tag", "--set", "audit", &held]),
        0,
    );
    let reset = last_json(&out)["changed"][0]["to"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        tags_of(&reset),
        ["plan:3", "audit"],
        "--set keeps the daemon's tags"
    );
    let out = run(
        cadang(repo).args([
            "--json", "tag", "--set", "hold", "--set", "bpk-2026", &reset,
        ]),
        0,
    );
    let held = last_json(&out)["changed"][0]["to"]
        .as_str()
        .unwrap()
        .to_owned();

    // keep-last 1 would leave one snapshot; the hold keeps a second. A list holds only
    // snapshots with all of its tags.
    let forget = |extra: &[&str]| {
        let out = run(
            cadang(repo)
                .args(["--json", "forget", "--keep-last", "1", "--dry-run"])
                .args(extra),
            0,
        );
        let mut removed: Vec<String> = last_json(&out)["remove"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        removed.sort();
        removed
    };
    let mut without_hold = vec![ids[0].clone(), ids[2].clone(), held.clone()];
    without_hold.sort();
    assert_eq!(forget(&[]), without_hold);
    assert_eq!(forget(&["--keep-tag", "hold,bpk-2027"]), without_hold);
    let mut with_hold = vec![ids[0].clone(), ids[2].clone()];
    with_hold.sort();
    assert_eq!(forget(&["--keep-tag", "hold,bpk-2026"]), with_hold);
    run(
        cadang(repo).args(["forget", "--keep-last", "1", "--keep-tag", "hold"]),
        0,
    );
    let mut left = snapshot_ids(repo);
    left.sort();
    let mut expected = vec![held.clone(), ids[3].clone()];
    expected.sort();
    assert_eq!(left, expected);
    // Released: the next retention takes it.
    run(cadang(repo).args(["tag", "--remove", "hold", &held]), 0);
    run(
        cadang(repo).args(["forget", "--keep-last", "1", "--keep-tag", "hold"]),
        0,
    );
    assert_eq!(snapshot_ids(repo), vec![ids[3].clone()]);
}

/// Extended attributes come back as they were: `user.*` on files and directories, a
/// POSIX ACL, and — as root, which CI is — a file capability, which a change of owner
/// would clear if it were set before the owner. `--verify` compares them; a tree
/// without any keeps version 1.
#[test]
fn extended_attributes_acls_and_file_capabilities_survive_a_round_trip() {
    use std::ffi::OsStr;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("shared")).unwrap();
    std::fs::write(src.join("laporan.pdf"), b"%PDF-1.7").unwrap();
    std::fs::write(src.join("plain.txt"), b"no attributes").unwrap();
    std::fs::write(src.join("shared/acl.txt"), b"read by uid 1000 too").unwrap();
    std::fs::write(src.join("ping"), b"\x7fELF").unwrap();
    std::os::unix::fs::symlink("laporan.pdf", src.join("link")).unwrap();
    let set = |path: &std::path::Path, name: &str, value: &[u8]| {
        xattr::set(path, name, value)
            .unwrap_or_else(|e| panic!("{name} on {}: {e}", path.display()));
    };
    set(
        &src.join("laporan.pdf"),
        "user.mime_type",
        b"application/pdf",
    );
    set(&src.join("laporan.pdf"), "user.checksum", &[0, 255, 7]);
    set(&src.join("shared"), "user.owner", b"DINKES");
    // A directory above the one backed up keeps its attributes too.
    set(tmp.path(), "user.zone", b"colocation");
    // user::rw-, user:1000:r--, group::r--, mask::r--, other::---
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    set(&src.join("shared/acl.txt"), "system.posix_acl_access", &acl);
    let root = unsafe { libc::geteuid() } == 0;
    // cap_net_raw+ep: revision 2, effective, permitted CAP_NET_RAW (13).
    let mut capability = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
    capability.extend((1u32 << 13).to_le_bytes());
    capability.extend([0u8; 12]);
    if root {
        std::os::unix::fs::chown(src.join("ping"), Some(1000), Some(1000)).unwrap();
        set(&src.join("ping"), "security.capability", &capability);
    }

    let sum = last_json(&run(cadang(repo).args(["backup", "--json"]).arg(&src), 0));
    assert_eq!(sum["files_failed"], 0, "{sum}");
    let target = tmp.path().join("restored");
    let r = last_json(&run(
        cadang(repo)
            .args(["restore", "latest", "--verify", "--json", "--target"])
            .arg(&target),
        0,
    ));
    assert_eq!(r["verify"]["mismatches"], serde_json::json!([]), "{r}");
    let back = restored_path(&target, &src);
    let get = |path: &str, name: &str| xattr::get(back.join(path), OsStr::new(name)).unwrap();
    assert_eq!(
        get("laporan.pdf", "user.mime_type").as_deref(),
        Some(&b"application/pdf"[..])
    );
    assert_eq!(
        get("laporan.pdf", "user.checksum").as_deref(),
        Some(&[0, 255, 7][..])
    );
    assert_eq!(get("shared", "user.owner").as_deref(), Some(&b"DINKES"[..]));
    assert_eq!(
        xattr::get(restored_path(&target, tmp.path()), "user.zone")
            .unwrap()
            .as_deref(),
        Some(&b"colocation"[..])
    );
    assert_eq!(
        get("shared/acl.txt", "system.posix_acl_access").as_deref(),
        Some(acl.as_slice())
    );
    assert_eq!(
        xattr::list(back.join("plain.txt")).unwrap().count(),
        0,
        "nothing invented"
    );
    // `ls --json` names them.
    let listed = run(
        cadang(repo)
            .args(["ls", "--json", "latest"])
            .arg(src.join("laporan.pdf")),
        0,
    );
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let mut names: Vec<&str> = line["xattrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["user.checksum", "user.mime_type"], "{line}");
    if root {
        let meta = std::fs::metadata(back.join("ping")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&meta),
                std::os::unix::fs::MetadataExt::gid(&meta)
            ),
            (1000, 1000)
        );
        assert_eq!(
            get("ping", "security.capability").as_deref(),
            Some(capability.as_slice()),
            "the capability survives the change of owner"
        );
    }

    // A changed attribute is in the next snapshot, though the content is the same, and
    // `diff` names the file as changed in its metadata only.
    set(
        &src.join("laporan.pdf"),
        "user.mime_type",
        b"application/x-pdf",
    );
    run(cadang(repo).args(["backup"]).arg(&src), 0);
    let ids = snapshot_ids(repo);
    let changes =
        String::from_utf8_lossy(&run(cadang(repo).args(["diff", &ids[0], &ids[1]]), 0).stdout)
            .into_owned();
    // (The temporary directory above the source changed too: the restore made a
    // directory in it.)
    let marked: Vec<&str> = changes
        .lines()
        .filter(|l| l.starts_with(['U', 'M', '+', '-']) && l.contains("/src"))
        .collect();
    assert_eq!(marked.len(), 1, "{changes}");
    assert!(
        marked[0].starts_with('U') && marked[0].ends_with("/laporan.pdf"),
        "{changes}"
    );
    let again = tmp.path().join("again");
    run(
        cadang(repo)
            .args(["restore", "latest", "--verify", "--target"])
            .arg(&again),
        0,
    );
    assert_eq!(
        xattr::get(
            restored_path(&again, &src).join("laporan.pdf"),
            "user.mime_type"
        )
        .unwrap()
        .as_deref(),
        Some(&b"application/x-pdf"[..])
    );
}

#[test]
fn a_restore_over_an_existing_tree_keeps_what_is_right_and_deletes_only_when_asked() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("docs/surat.txt"), b"nomor 800/123").unwrap();
    std::fs::write(src.join("docs/anggaran.xlsx"), bytes(40_000, 1)).unwrap();
    // Several chunks: damage to one is found by reading, not by size or time.
    std::fs::write(src.join("db/data.bin"), bytes(6 << 20, 2)).unwrap();
    std::fs::write(src.join("db/wal.log"), bytes(9_000, 3)).unwrap();
    std::os::unix::fs::symlink("surat.txt", src.join("docs/latest")).unwrap();
    run(cadang(repo).arg("backup").arg(&src), 0);

    let target = tmp.path().join("server");
    run(
        cadang(repo)
            .args(["restore", "latest", "--target"])
            .arg(&target),
        0,
    );
    let live = restored_path(&target, &src);
    let ino = |rel: &str| std::fs::symlink_metadata(live.join(rel)).unwrap().ino();
    let summary = |args: &[&str], expect: i32| {
        last_json(&run(
            cadang(repo)
                .args(["restore", "latest", "--json"])
                .args(args)
                .arg("--target")
                .arg(&target),
            expect,
        ))
    };

    // The server drifts: one chunk of the database damaged in place (same size, and
    // its time set back to the recorded one), a mode changed, a log rewritten, and
    // things the snapshot never held, among them a link out of the target.
    let data = live.join("db/data.bin");
    let recorded = std::fs::metadata(src.join("db/data.bin")).unwrap();
    let mut damaged = std::fs::read(&data).unwrap();
    damaged[3 << 20] ^= 0x55;
    std::fs::write(&data, &damaged).unwrap();
    filetime::set_file_mtime(
        &data,
        filetime::FileTime::from_last_modification_time(&recorded),
    )
    .unwrap();
    std::fs::set_permissions(
        live.join("docs/surat.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(live.join("db/wal.log"), b"rewritten by the server").unwrap();
    std::fs::write(live.join("docs/draft.txt"), b"not in the snapshot").unwrap();
    std::fs::create_dir_all(live.join("tmp/cache")).unwrap();
    std::fs::write(live.join("tmp/cache/x"), b"cache").unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), b"not the restore's").unwrap();
    std::os::unix::fs::symlink(&outside, live.join("docs/outside")).unwrap();
    // Beside the backed-up directory and at the target's root: the snapshot holds only
    // the way to `src` there, so --delete must leave them alone.
    let beside = live.parent().unwrap().join("other-service.conf");
    std::fs::write(&beside, b"not backed up").unwrap();
    std::fs::write(target.join("etc-like"), b"the server's own").unwrap();
    let (surat, anggaran, data_ino) = (
        ino("docs/surat.txt"),
        ino("docs/anggaran.xlsx"),
        ino("db/data.bin"),
    );

    // A dry run reads and decides, and changes nothing.
    let before = fingerprint(&target);
    let dry = summary(&["--delete", "--dry-run"], 0);
    assert_eq!(fingerprint(&target), before, "a dry run wrote something");
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["files_restored"], 2, "data.bin and wal.log: {dry}");
    assert_eq!(dry["files_unchanged"], 2, "{dry}");
    let mut deleted: Vec<String> = dry["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_str()
                .unwrap()
                .rsplit("/src/")
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["docs/draft.txt", "docs/outside", "tmp"], "{dry}");

    // if-changed trusts size and time: the damaged database stays as it is.
    let trusted = summary(&["--overwrite", "if-changed"], 0);
    assert_eq!(trusted["files_restored"], 1, "only wal.log: {trusted}");
    assert_eq!(std::fs::read(&data).unwrap(), damaged);
    assert_eq!(trusted["deleted"], serde_json::json!([]), "{trusted}");
    assert!(live.join("docs/draft.txt").exists());

    // always reads it, finds the damaged chunk and replaces the file; the files that
    // were right stay in place with their metadata set again; --delete removes what
    // the snapshot does not hold without following the link out of the target.
    std::fs::set_permissions(
        live.join("docs/surat.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let fixed = summary(&["--delete", "--verify"], 0);
    assert_eq!(fixed["files_restored"], 1, "{fixed}");
    // Its other chunks (at least 2 of its 6 MiB: a chunk is at most 4 MiB) are copied
    // from the damaged file itself rather than read from the repository.
    let reused = fixed["bytes_reused"].as_u64().unwrap();
    assert!((2 << 20..6 << 20).contains(&reused), "{fixed}");
    assert_eq!(fixed["files_unchanged"], 3, "{fixed}");
    assert_eq!(
        fixed["verify"]["mismatches"],
        serde_json::json!([]),
        "{fixed}"
    );
    assert_same_tree(&src, &live);
    assert_eq!(ino("docs/surat.txt"), surat, "rewritten though unchanged");
    assert_eq!(ino("docs/anggaran.xlsx"), anggaran);
    assert_ne!(ino("db/data.bin"), data_ino, "the damaged file was kept");
    assert_eq!(
        std::fs::read(outside.join("keep.txt")).unwrap(),
        b"not the restore's"
    );
    assert!(beside.exists() && target.join("etc-like").exists());

    // never and if-newer leave what exists; what they keep is not verified, and what
    // is missing is still restored.
    std::fs::write(live.join("docs/surat.txt"), b"edited on the server").unwrap();
    std::fs::remove_file(live.join("db/wal.log")).unwrap();
    let never = summary(&["--overwrite", "never", "--verify"], 0);
    assert_eq!(never["files_restored"], 1, "{never}");
    assert_eq!(never["files_kept"], 4, "three files and the link: {never}");
    assert_eq!(
        std::fs::read(live.join("docs/surat.txt")).unwrap(),
        b"edited on the server"
    );
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_mtime(live.join("docs/surat.txt"), old).unwrap();
    std::fs::write(live.join("db/wal.log"), b"newer on the server").unwrap();
    let newer = summary(&["--overwrite", "if-newer", "--verify"], 0);
    assert_eq!(newer["files_restored"], 1, "the older surat.txt: {newer}");
    assert_eq!(
        std::fs::read(live.join("docs/surat.txt")).unwrap(),
        b"nomor 800/123"
    );
    assert_eq!(
        std::fs::read(live.join("db/wal.log")).unwrap(),
        b"newer on the server"
    );

    // A link where the snapshot has a directory is never written through: refused,
    // unless --delete replaces the link itself.
    std::fs::remove_dir_all(live.join("db")).unwrap();
    std::os::unix::fs::symlink(&outside, live.join("db")).unwrap();
    let refused = summary(&[], 3);
    assert!(
        refused["errors"].to_string().contains("symbolic link"),
        "{refused}"
    );
    let replaced = summary(&["--delete", "--verify"], 0);
    assert_eq!(
        replaced["verify"]["mismatches"],
        serde_json::json!([]),
        "{replaced}"
    );
    assert_same_tree(&src, &live);
    assert_eq!(
        files_under(&outside),
        [std::path::PathBuf::from("keep.txt")]
    );
    // A link above the backed-up directory is the server's own: refused, even with
    // --delete, and left as it is.
    let holder = live.parent().unwrap().to_path_buf();
    let moved = tmp.path().join("moved");
    std::fs::rename(&holder, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &holder).unwrap();
    let above = summary(&["--delete"], 3);
    assert!(
        above["errors"].to_string().contains("symbolic link"),
        "{above}"
    );
    assert!(
        std::fs::symlink_metadata(&holder)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(moved.join("other-service.conf").exists());

    // A mode no one knows is refused before anything is touched.
    let out = run(
        cadang(repo)
            .args(["restore", "latest", "--overwrite", "sometimes", "--target"])
            .arg(&target),
        2,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("if-changed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
