//! The same round trip against a real S3 protocol server (s3s-fs) started by
//! the test on 127.0.0.1, through the real binary and object_store's S3 client.

mod common;
mod s3_server;
use common::*;
use s3_server::start_s3;

use std::net::SocketAddr;

fn s3_cmd(repo: &str, addr: SocketAddr) -> std::process::Command {
    let mut c = cadang(repo);
    c.env("AWS_ACCESS_KEY_ID", "testkey")
        .env("AWS_SECRET_ACCESS_KEY", "testsecret")
        .env("AWS_REGION", "us-east-1")
        .env("CADANG_S3_ENDPOINT", format!("http://{addr}"));
    c
}

#[test]
fn round_trip_on_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let s3root = tmp.path().join("s3");
    std::fs::create_dir_all(s3root.join("backups")).unwrap();
    let addr = start_s3(&s3root);
    let src = tmp.path().join("src");
    edge_case_tree(&src, 40);
    let repo = "s3://backups/agency-a/main";

    // Without keys an S3-compatible store is refused at once, saying what is missing
    // (not after minutes asking a cloud's instance metadata service for them).
    let started = std::time::Instant::now();
    let out = run(
        s3_cmd(repo, addr)
            .arg("init")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY"),
        1,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            && !said.contains("169.254"),
        "{said}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    run(s3_cmd(repo, addr).arg("init"), 0);
    // A second init must refuse to overwrite.
    let out = run(s3_cmd(repo, addr).arg("init"), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(s3_cmd(repo, addr).args(["backup", "--json"]).arg(&src), 0);
    assert_eq!(last_json(&out)["files_failed"], 0);
    // Objects really are in the bucket, under the prefix, with the documented layout.
    let base = s3root.join("backups/agency-a/main");
    assert!(base.join("config").is_file());
    assert!(base.join("keys").read_dir().unwrap().count() == 1);
    assert!(base.join("data").read_dir().unwrap().count() >= 1);
    assert!(base.join("index").read_dir().unwrap().count() >= 1);
    assert!(base.join("snapshots").read_dir().unwrap().count() == 1);

    let target = tmp.path().join("restore");
    let out = run(
        s3_cmd(repo, addr)
            .args(["restore", "latest", "--verify", "--json", "--target"])
            .arg(&target),
        0,
    );
    assert_eq!(last_json(&out)["success"], true);
    assert_same_tree(&src, &restored_path(&target, &src));
    run(s3_cmd(repo, addr).args(["check", "--read-data"]), 0);

    // Copy to a local replica that shares keys, then restore from the replica.
    let replica = tmp.path().join("replica");
    let replica = replica.to_str().unwrap();
    let mut c = cadang(replica);
    c.args(["init", "--from-repo", repo])
        .env("CADANG_FROM_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "testkey")
        .env("AWS_SECRET_ACCESS_KEY", "testsecret")
        .env("CADANG_S3_ENDPOINT", format!("http://{addr}"));
    run(&mut c, 0);
    let out = run(
        s3_cmd(repo, addr)
            .args(["copy", "--json", "--to", replica])
            .env("CADANG_TO_PASSWORD", PASSWORD),
        0,
    );
    assert_eq!(last_json(&out)["copied"].as_array().unwrap().len(), 1);
    // Copying again adds nothing.
    let out = run(
        s3_cmd(repo, addr)
            .args(["copy", "--json", "--to", replica])
            .env("CADANG_TO_PASSWORD", PASSWORD),
        0,
    );
    assert_eq!(last_json(&out)["copied"].as_array().unwrap().len(), 0);
    let t2 = tmp.path().join("from-replica");
    run(
        cadang(replica)
            .args(["restore", "latest", "--verify", "--target"])
            .arg(&t2),
        0,
    );
    assert_same_tree(&src, &restored_path(&t2, &src));
    run(cadang(replica).args(["check", "--read-data"]), 0);
}
