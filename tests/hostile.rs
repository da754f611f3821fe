//! A hostile (or damaged) repository must not make a restore write outside
//! its target: names like `..` or `/etc/x`, and symlinks placed by an
//! earlier restore, are all refused.

mod common;
use common::*;

use cadang::engine::crypto::KdfParams;
use cadang::engine::id::BlobType;
use cadang::engine::packer::Packer;
use cadang::engine::snapshot::{Snapshot, SnapshotSummary};
use cadang::engine::tree::{Node, NodeKind, Tree};
use cadang::engine::{OpenOptions, Repository, Store, StoreOptions};

fn repo_at(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> Repository {
    let store = Store::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let opts = OpenOptions {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        host: None,
    };
    Repository::init(rt.handle().clone(), store, PASSWORD.as_bytes(), &opts).unwrap()
}

/// A tree's bytes exactly as given, without the encoder's sorting: version 2, the
/// layout of `Tree` itself.
fn raw_tree(t: &Tree) -> Vec<u8> {
    let mut t = t.clone();
    t.version = 2;
    postcard::to_stdvec(&t).unwrap()
}

/// Write a snapshot whose root tree holds `nodes` exactly as given (no
/// validation: this is what an attacker with the key could store).
fn plant(repo: &Repository, nodes: Vec<Node>, extra_trees: Vec<Tree>) -> String {
    let packer = Packer::new(repo, 1, None);
    let empty = cadang::engine::index::Index::new();
    for t in extra_trees {
        let raw = raw_tree(&t);
        let id = repo.blob_id(&raw);
        if packer.claim(&empty, &id) {
            packer.add(BlobType::Tree, id, &raw).unwrap();
        }
    }
    let raw = raw_tree(&Tree { version: 2, nodes });
    let root = repo.blob_id(&raw);
    packer.add(BlobType::Tree, root, &raw).unwrap();
    packer.finish().unwrap();
    let s = Snapshot {
        version: 1,
        time: chrono::Utc::now(),
        hostname: "evil".into(),
        username: "evil".into(),
        paths: vec!["/".into()],
        tags: vec![],
        parent: None,
        tree: root,
        summary: SnapshotSummary::default(),
        original: None,
        rewritten_from: None,
        indexes: Vec::new(),
    };
    repo.save_snapshot(&s).unwrap().to_hex()
}

fn file_node(repo: &Repository, name: &[u8], data: &[u8]) -> (Node, Vec<u8>) {
    let mut n = Node::new(name.to_vec(), NodeKind::File);
    n.size = data.len() as u64;
    n.content = vec![repo.blob_id(data)];
    (n, data.to_vec())
}

fn store_data(repo: &Repository, data: &[u8]) {
    let packer = Packer::new(repo, 1, None);
    let id = repo.blob_id(data);
    packer.add(BlobType::Data, id, data).unwrap();
    packer.finish().unwrap();
}

#[test]
fn dot_dot_and_absolute_names_cannot_escape() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = repo_at(&rt, &repo_path);
    store_data(&repo, b"pwned");
    let target = tmp.path().join("a/b/target");
    for name in [
        &b"../../escaped"[..],
        b"/tmp/escaped-abs",
        b"..",
        b"x/../../escaped2",
    ] {
        let (n, _) = file_node(&repo, name, b"pwned");
        let id = plant(&repo, vec![n], vec![]);
        let out = run(
            cadang(repo_path.to_str().unwrap())
                .args(["restore", &id, "--target"])
                .arg(&target),
            3,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not allowed") || err.contains("separator"),
            "{err}"
        );
    }
    assert!(!tmp.path().join("a/escaped").exists());
    assert!(!tmp.path().join("escaped").exists());
    assert!(!std::path::Path::new("/tmp/escaped-abs").exists());
    assert!(!tmp.path().join("a/escaped2").exists());
}

#[test]
fn symlink_planted_by_a_restore_is_never_written_through() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = repo_at(&rt, &repo_path);
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    store_data(&repo, b"pwned");

    // Snapshot 1: `a` is a symlink to a directory outside the target.
    let mut link = Node::new("a", NodeKind::Symlink);
    link.link_target = Some(outside.to_str().unwrap().as_bytes().to_vec());
    let s1 = plant(&repo, vec![link], vec![]);
    // Snapshot 2: `a` is a directory holding `x`.
    let (x, _) = file_node(&repo, b"x", b"pwned");
    let sub = Tree {
        version: 1,
        nodes: vec![x],
    };
    let sub_id = repo.blob_id(&raw_tree(&sub));
    let mut dir = Node::new("a", NodeKind::Dir);
    dir.mode = 0o755;
    dir.subtree = Some(sub_id);
    let s2 = plant(&repo, vec![dir], vec![sub]);

    let target = tmp.path().join("target");
    let r = repo_path.to_str().unwrap();
    run(cadang(r).args(["restore", &s1, "--target"]).arg(&target), 0);
    assert!(
        std::fs::symlink_metadata(target.join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let out = run(cadang(r).args(["restore", &s2, "--target"]).arg(&target), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !outside.join("x").exists(),
        "restore wrote through a symlink"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_file_replaced_by_symlink_is_replaced_not_followed() {
    // A regular file restored over an existing symlink replaces the link.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = repo_at(&rt, &repo_path);
    store_data(&repo, b"fresh");
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"original").unwrap();
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&victim, target.join("f")).unwrap();
    let (n, _) = file_node(&repo, b"f", b"fresh");
    let id = plant(&repo, vec![n], vec![]);
    run(
        cadang(repo_path.to_str().unwrap())
            .args(["restore", &id, "--verify", "--target"])
            .arg(&target),
        0,
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert!(
        std::fs::symlink_metadata(target.join("f"))
            .unwrap()
            .is_file()
    );
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"fresh");
}

#[test]
fn trees_nested_beyond_any_path_are_refused_not_followed_to_a_crash() {
    // 5000 levels of one directory each: deeper than any file system path can be,
    // so only a hostile repository has it. The restore must report it and restore
    // the rest, not exhaust a worker's stack walking it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = repo_at(&rt, &repo_path);
    store_data(&repo, b"top of the tree");
    let (leaf, _) = file_node(&repo, b"leaf", b"top of the tree");
    let mut trees = Vec::new();
    let mut below = Tree {
        version: 1,
        nodes: vec![leaf],
    };
    for _ in 0..5000 {
        let raw = raw_tree(&below);
        let mut dir = Node::new(b"d".to_vec(), NodeKind::Dir);
        dir.mode = 0o755;
        dir.subtree = Some(repo.blob_id(&raw));
        trees.push(below);
        below = Tree {
            version: 1,
            nodes: vec![dir],
        };
    }
    let (top, _) = file_node(&repo, b"top", b"top of the tree");
    let mut nodes = below.nodes;
    nodes.push(top);
    let id = plant(&repo, nodes, trees);
    let target = tmp.path().join("target");
    let out = run(
        cadang(repo_path.to_str().unwrap())
            .args(["restore", &id, "--json", "--target"])
            .arg(&target),
        3,
    );
    let summary = last_json(&out);
    assert_eq!(summary["success"], false, "{summary}");
    let errors = summary["errors"].to_string();
    assert!(
        errors.contains("nested deeper than 2048 levels"),
        "{errors}"
    );
    assert_eq!(
        std::fs::read(target.join("top")).unwrap(),
        b"top of the tree"
    );

    // Every other walk over the snapshot stops at the same depth with the same
    // message: check reports it as damage, ls, diff and copy refuse.
    let repo_arg = repo_path.to_str().unwrap();
    let said = |out: std::process::Output| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for args in [vec!["check"], vec!["ls", &id], vec!["diff", &id, &id]] {
        let out = said(run(cadang(repo_arg).args(&args), 1));
        assert!(
            out.contains("nested deeper than 2048 levels"),
            "{args:?}: {out}"
        );
    }
    let other = tmp.path().join("other");
    let other = other.to_str().unwrap();
    run(
        cadang(other)
            .args(["init", "--from-repo", repo_arg])
            .env("CADANG_FROM_PASSWORD", PASSWORD),
        0,
    );
    let out = said(run(
        cadang(repo_arg)
            .args(["copy", &id, "--to", other])
            .env("CADANG_TO_PASSWORD", PASSWORD),
        1,
    ));
    assert!(out.contains("nested deeper than 2048 levels"), "{out}");
    let out = said(run(cadang(other).args(["snapshots", "--json"]), 0));
    assert_eq!(out.trim(), "[]", "nothing of the refused copy is visible");
}
