//! What an agent sends on its job stream, as the daemon takes it in: any bytes decoded
//! as an `AgentMessage`; an entry batch's entries turned into tree nodes and ingested,
//! then committed as a snapshot into an in-memory repository. A hostile agent must get
//! refusals, never a panic of the daemon.
#![no_main]

use std::sync::OnceLock;

use cadang::engine::crypto::KdfParams;
use cadang::engine::ingest::{Ingest, IngestCommit};
use cadang::engine::{OpenOptions, Repository, Store, StoreOptions};
use cadang::remote::node_from_entry;
use cadang::rpc::pb;
use cadang::rpc::pb::agent_message::Body;
use libfuzzer_sys::fuzz_target;
use prost::Message;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn repository() -> Option<Repository> {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let store = Store::open("memory://", &StoreOptions::default()).ok()?;
    let options = OpenOptions {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        host: None,
    };
    Repository::init(runtime.handle().clone(), store, b"fuzz", &options).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::AgentMessage::decode(data) else {
        return;
    };
    let Some(Body::Entries(batch)) = message.body else {
        return;
    };
    let Some(repo) = repository() else {
        return;
    };
    let Ok(mut ingest) = Ingest::new(&repo) else {
        return;
    };
    for entry in &batch.entries {
        let Ok(node) = node_from_entry(entry) else {
            return;
        };
        if ingest.add_entry(&entry.path, node).is_err() {
            return;
        }
    }
    let now = chrono::Utc::now();
    let _ = ingest.commit(&IngestCommit {
        time: now,
        hostname: "fuzz".into(),
        paths: vec!["/".into()],
        tags: Vec::new(),
        parent: None,
        started: now,
        files: 0,
        bytes: 0,
        files_unchanged: 0,
        files_failed: 0,
    });
});
