//! Layering rules, checked on the source text: the engine is a library that
//! knows nothing of the layers above it, and the SOP workflow is pure.

use std::path::Path;

fn sources(dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                // Code only: comments may name other layers when explaining
                // who owns what.
                let text = std::fs::read_to_string(&p).unwrap();
                let code: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect();
                out.push((p.display().to_string(), code.join("\n")));
            }
        }
    }
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

#[test]
fn engine_imports_nothing_above_it() {
    for (path, text) in sources("src/engine") {
        for banned in [
            "crate::cli",
            "crate::workflow",
            "crate::catalog",
            "crate::app",
            "crate::rpc",
            "clap::",
            "sqlx",
            "tonic",
            "tokio_cron_scheduler",
            "indicatif",
        ] {
            assert!(
                !text.contains(banned),
                "{path} mentions `{banned}`: the engine must not depend on upper layers"
            );
        }
    }
}

#[test]
fn workflow_is_pure() {
    for (path, text) in sources("src/workflow") {
        if path.ends_with("tests.rs") {
            continue; // tests load the TOML files from disk
        }
        for banned in [
            "std::fs",
            "tokio",
            "Utc::now",
            "Local::now",
            "SystemTime::now",
            "crate::engine",
            "crate::cli",
            "sqlx",
            "std::net",
        ] {
            assert!(
                !text.contains(banned),
                "{path} mentions `{banned}`: the workflow must stay pure (no I/O, no clock)"
            );
        }
    }
}

#[test]
fn catalog_and_app_stay_in_their_layers() {
    for (path, text) in sources("src/catalog") {
        for banned in [
            "crate::app",
            "crate::cli",
            "crate::engine",
            "tonic",
            "clap::",
            "Utc::now",
        ] {
            assert!(
                !text.contains(banned),
                "{path} mentions `{banned}`: the catalog holds SQL only, no business rules"
            );
        }
    }
    for (path, text) in sources("src/app") {
        for banned in ["crate::cli", "tonic", "clap::", "sqlx::query"] {
            assert!(
                !text.contains(banned),
                "{path} mentions `{banned}`: use cases see neither transport types nor SQL"
            );
        }
    }
}
