//! Compiles the gRPC API (`proto/cadang/v1/*.proto`) with protox, a protobuf compiler in
//! Rust, so building cadang needs nothing but cargo. The descriptor set is kept for gRPC
//! server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // The catalog's migrations are embedded by `sqlx::migrate!`; a new one must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let mut files: Vec<PathBuf> = fs::read_dir("proto/cadang/v1")?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "proto"));
    files.sort();
    let descriptors = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("cadang_descriptor.bin"),
        protox::prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Chunk payloads are taken out of the receive buffer without a copy.
        .bytes(".cadang.v1.ChunkUpload.payload")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
