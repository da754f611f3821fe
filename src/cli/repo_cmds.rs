//! Repository commands: thin adapters from parsed arguments to engine calls.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow};
use serde_json::json;

use super::output::{ExitCode, Reporter, Status, human_bytes, json_line};
use super::{Cli, Command, GlobalArgs, KeyCmd, PolicyArgs, RepairCmd};
use crate::engine::backup::{BackupOptions, BackupProgress};
use crate::engine::check::{CheckOptions, ReadData};
use crate::engine::crypto::KdfParams;
use crate::engine::forget::{KeepPolicy, apply, jakarta, parse_duration};
use crate::engine::id::SnapshotId;
use crate::engine::prune::PruneOptions;
use crate::engine::restore::{RestoreOptions, RestoreProgress};
use crate::engine::tree::NodeKind;
use crate::engine::{Error, OpenOptions, Repository, Store, StoreOptions};

struct Ctx {
    g: GlobalArgs,
    handle: tokio::runtime::Handle,
    cancel: Arc<AtomicBool>,
}

/// Map an error to an exit code and print it as one clear line.
fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("cadang: error: {}", super::output::error_line(e));
    match e.downcast_ref::<Error>() {
        Some(Error::NotARepository { .. }) => ExitCode::NoRepository,
        Some(Error::WrongPassword { .. }) => ExitCode::WrongPassword,
        Some(Error::Locked { .. }) => ExitCode::Locked,
        Some(Error::Cancelled) => ExitCode::Interrupted,
        _ => ExitCode::Failure,
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cadang-io")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cadang: error: cannot start the I/O runtime: {e}");
            return ExitCode::Failure;
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        // First Ctrl-C: stop at a safe point (uploaded data gets indexed).
        let c = cancel.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "cadang: interrupted; stopping at a safe point (press Ctrl-C again to abort)"
                );
                c.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(ExitCode::Interrupted as i32);
                }
            }
        });
    }
    let ctx = Ctx {
        g: cli.global,
        handle: rt.handle().clone(),
        cancel,
    };
    let res = match cli.command {
        Command::Init(a) => init(&ctx, a),
        Command::Backup(a) => backup(&ctx, a),
        Command::Snapshots(a) => snapshots(&ctx, a),
        Command::Ls(a) => ls(&ctx, a),
        Command::Find(a) => find(&ctx, a),
        Command::Dump(a) => dump(&ctx, a),
        Command::Diff(a) => diff(&ctx, a),
        Command::Stats(a) => stats(&ctx, a),
        Command::Restore(a) => restore(&ctx, a),
        Command::Check(a) => check(&ctx, a),
        Command::Forget(a) => forget(&ctx, a),
        Command::Prune(a) => prune(&ctx, a),
        Command::Copy(a) => copy(&ctx, a),
        Command::Rewrite(a) => rewrite(&ctx, a),
        Command::Tag(a) => tag(&ctx, a),
        Command::Key(k) => key(&ctx, k),
        Command::Unlock(a) => unlock(&ctx, a),
        Command::Repair(RepairCmd::Index) => repair_index(&ctx),
        // Dispatched by `cli::run` before this point.
        _ => Err(anyhow::anyhow!("not a repository command")),
    };
    let code = match res {
        Ok(c) => c,
        Err(e) => report(&e),
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

pub(crate) fn read_password_file(p: &Path) -> anyhow::Result<Vec<u8>> {
    let s =
        std::fs::read(p).with_context(|| format!("cannot read password file {}", p.display()))?;
    let mut s = s;
    while s.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        s.pop();
    }
    Ok(s)
}

/// Password from a file, an environment variable, or a prompt.
fn password(
    file: Option<&Path>,
    env: &str,
    prompt: &str,
    confirm: bool,
) -> anyhow::Result<Vec<u8>> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if let Ok(p) = std::env::var(env) {
        return Ok(p.into_bytes());
    }
    if !std::io::stdin().is_terminal() {
        return Err(anyhow!(
            "no password given: set {env}, use a password file, or run on a terminal to be asked"
        ));
    }
    let p = rpassword::prompt_password(prompt).context("reading password")?;
    if confirm {
        let again =
            rpassword::prompt_password("enter the password again: ").context("reading password")?;
        if again != p {
            return Err(anyhow!("the passwords do not match"));
        }
    }
    Ok(p.into_bytes())
}

impl Ctx {
    fn open_opts(&self) -> OpenOptions {
        let mut kdf = KdfParams::default();
        if let Some(m) = self.g.kdf_memory_kib {
            // Lower costs (for tests and small machines) never go below
            // OWASP's Argon2id floor: 19 MiB, 2 passes.
            kdf.memory_kib = m.max(19 * 1024);
            kdf.iterations = 2;
        }
        OpenOptions { kdf, host: None }
    }

    fn store(&self, url: Option<&str>) -> anyhow::Result<Store> {
        let url = url.ok_or_else(|| {
            anyhow!("no repository given: use -r/--repo or set CADANG_REPOSITORY")
        })?;
        Ok(Store::open(
            url,
            &StoreOptions {
                s3_endpoint: self.g.s3_endpoint.clone(),
                s3_region: None,
            },
        )?)
    }

    fn open(&self) -> anyhow::Result<Repository> {
        let store = self.store(self.g.repo.as_deref())?;
        let pw = password(
            self.g.password_file.as_deref(),
            "CADANG_PASSWORD",
            "repository password: ",
            false,
        )?;
        Ok(Repository::open(
            self.handle.clone(),
            store,
            &pw,
            &self.open_opts(),
        )?)
    }

    fn say(&self, msg: impl AsRef<str>) {
        if !self.g.quiet && !self.g.json {
            println!("{}", msg.as_ref());
        }
    }
}

fn init(ctx: &Ctx, a: super::InitArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store(ctx.g.repo.as_deref())?;
    let location = store.location().to_string();
    let pw = password(
        ctx.g.password_file.as_deref(),
        "CADANG_PASSWORD",
        "enter a password for the new repository: ",
        true,
    )?;
    let repo = if let Some(from) = &a.from_repo {
        let from_store = ctx.store(Some(from))?;
        let from_pw = password(
            a.from_password_file.as_deref(),
            "CADANG_FROM_PASSWORD",
            "password of the source repository: ",
            false,
        )?;
        let src = Repository::open(ctx.handle.clone(), from_store, &from_pw, &ctx.open_opts())?;
        Repository::init_from(ctx.handle.clone(), store, &pw, &ctx.open_opts(), &src)?
    } else if let Some(cipher) = a.cipher {
        Repository::init_with_cipher(ctx.handle.clone(), store, &pw, &ctx.open_opts(), cipher)?
    } else {
        Repository::init(ctx.handle.clone(), store, &pw, &ctx.open_opts())?
    };
    if ctx.g.json {
        json_line(
            &json!({"message_type": "initialized", "id": repo.config().id, "repository": location, "cipher": repo.config().cipher}),
        );
    } else {
        ctx.say(format!(
            "created cadang repository {} at {location} ({})",
            &repo.config().id[..10],
            repo.config().cipher
        ));
        ctx.say("Please note that knowledge of your password is required to access the repository. Losing your password means that your data is irrecoverably lost.");
    }
    Ok(ExitCode::Ok)
}

/// The paths a `--files-from-verbatim` (`separator` newline) or `--files-from-raw` (NUL)
/// list names, as bytes (any name a file system allows); `-` is standard input. Empty
/// entries are skipped; a verbatim line keeps its spaces but not a `\r` before its end.
fn paths_listed(list: &Path, separator: u8) -> anyhow::Result<Vec<PathBuf>> {
    let bytes = if list == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the list of paths from standard input")?;
        bytes
    } else {
        std::fs::read(list)
            .with_context(|| format!("cannot read the list of paths {}", list.display()))?
    };
    Ok(bytes
        .split(|byte| *byte == separator)
        .map(|entry| match (separator, entry) {
            (b'\n', [rest @ .., b'\r']) => rest,
            _ => entry,
        })
        .filter(|entry| !entry.is_empty())
        .map(|entry| PathBuf::from(std::ffi::OsStr::from_bytes(entry)))
        .collect())
}

fn backup(ctx: &Ctx, a: super::BackupArgs) -> anyhow::Result<ExitCode> {
    if a.stdin && std::io::stdin().is_terminal() {
        anyhow::bail!(
            "--stdin reads the data to back up from standard input, which is a terminal: \
             pipe it in (`pg_dump db | cadang backup --stdin --stdin-filename db.sql`)"
        );
    }
    let repo = ctx.open()?;
    let excludes = exclude_patterns(&a.excludes, &a.exclude_files)?;
    let parent = match &a.parent {
        Some(p) => Some(repo.find_snapshot(p)?),
        None => None,
    };
    let markers = crate::engine::backup::exclude_markers(&a.exclude_if_present, a.exclude_caches)?;
    let mut paths = a.paths.clone();
    for (lists, separator) in [(&a.files_from_verbatim, b'\n'), (&a.files_from_raw, b'\0')] {
        for list in lists {
            paths.extend(paths_listed(list, separator)?);
        }
    }
    if !a.stdin && !a.stdin_from_command && paths.is_empty() {
        anyhow::bail!(
            "the files given with --files-from-verbatim or --files-from-raw list no path"
        );
    }
    let opts = BackupOptions {
        paths,
        tags: a.tags.clone(),
        excludes,
        markers,
        exclude_larger_than: a.exclude_larger_than,
        one_file_system: a.one_file_system,
        host: a.host.clone(),
        parent,
        force: a.force,
        compression_level: a.compression_level,
        cancel: Some(ctx.cancel.clone()),
        ..Default::default()
    };
    let progress = Arc::new(BackupProgress::default());
    let p2 = progress.clone();
    let rep = Reporter::start(ctx.g.json, ctx.g.quiet, "backup", move || Status {
        files_done: p2.files_done.load(Ordering::Relaxed),
        total_files: p2.total_files.load(Ordering::Relaxed),
        bytes_done: p2.bytes_done.load(Ordering::Relaxed),
        total_bytes: p2.total_bytes.load(Ordering::Relaxed),
        errors: p2.errors.load(Ordering::Relaxed),
    });
    let started = std::time::Instant::now();
    let res = if a.stdin || a.stdin_from_command {
        let name = a.stdin_filename.as_str();
        let opts = BackupOptions {
            paths: Vec::new(),
            ..opts
        };
        if a.stdin {
            let mut stdin = std::io::stdin();
            stream_backup(&repo, &opts, name, &mut stdin, &progress)
        } else {
            CommandOutput::spawn(&a.paths)
                .and_then(|mut out| stream_backup(&repo, &opts, name, &mut out, &progress))
        }
    } else {
        crate::engine::backup::backup(&repo, &opts, &progress).map_err(Into::into)
    };
    rep.finish();
    let r = res?;
    let secs = started.elapsed().as_secs_f64();
    let s = &r.snapshot.summary;
    for e in &r.errors {
        if ctx.g.json {
            json_line(
                &json!({"message_type": "error", "error": {"message": e.error}, "during": "archival", "item": e.path}),
            );
        } else {
            eprintln!("error: {}: {}", e.path, e.error);
        }
    }
    if (a.stdin || a.stdin_from_command) && s.total_bytes_processed == 0 {
        // A dump piped in that failed at once leaves an empty stream, not an error.
        let message = "the stream was empty: the snapshot holds an empty file";
        if ctx.g.json {
            json_line(
                &json!({"message_type": "warning", "message": message, "item": format!("/{}", a.stdin_filename)}),
            );
        } else {
            eprintln!("warning: {message}");
        }
    }
    for p in &r.changed_during_read {
        if ctx.g.json {
            json_line(
                &json!({"message_type": "warning", "message": "file changed while being read", "item": p}),
            );
        } else {
            eprintln!(
                "warning: {p}: file changed while being read; the snapshot holds what was read"
            );
        }
    }
    if ctx.g.json {
        json_line(&json!({
            "message_type": "summary",
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "files_failed": s.files_failed,
            "dirs": s.dirs,
            "data_blobs": s.data_blobs,
            "tree_blobs": s.tree_blobs,
            "data_added_raw": s.data_added_raw,
            "data_added": s.data_added,
            "total_files_processed": s.total_files_processed,
            "total_bytes_processed": s.total_bytes_processed,
            "duration_seconds": secs,
            "snapshot_id": r.snapshot_id.to_hex(),
            "partial": r.is_partial(),
        }));
    } else {
        ctx.say(format!(
            "Files: {} new, {} changed, {} unmodified{}",
            s.files_new,
            s.files_changed,
            s.files_unmodified,
            if s.files_failed > 0 {
                format!(", {} unreadable (skipped)", s.files_failed)
            } else {
                String::new()
            }
        ));
        ctx.say(format!("Dirs: {}", s.dirs));
        ctx.say(format!(
            "Added to the repository: {} ({} before compression)",
            human_bytes(s.data_added),
            human_bytes(s.data_added_raw)
        ));
        ctx.say(format!(
            "processed {} files, {} in {:.1}s ({}/s)",
            s.total_files_processed,
            human_bytes(s.total_bytes_processed),
            secs,
            human_bytes((s.total_bytes_processed as f64 / secs.max(0.001)) as u64)
        ));
        ctx.say(format!("snapshot {} saved", r.snapshot_id.short()));
    }
    Ok(if r.is_partial() {
        ExitCode::Partial
    } else {
        ExitCode::Ok
    })
}

fn stream_backup(
    repo: &Repository,
    opts: &BackupOptions,
    name: &str,
    reader: &mut (dyn std::io::Read + Send),
    progress: &BackupProgress,
) -> anyhow::Result<crate::engine::backup::BackupResult> {
    let source = crate::engine::backup::StreamSource { name, reader };
    Ok(crate::engine::backup::backup_stream(
        repo, opts, source, progress,
    )?)
}

/// The standard output of a command run for `backup --stdin-from-command`. Its end
/// is the command's exit: a command that failed (or was killed) is a read error, so
/// the backup fails and writes no snapshot. Errors name the program only, never its
/// arguments, which may hold a database password.
struct CommandOutput {
    program: String,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    exited: bool,
}

impl CommandOutput {
    fn spawn(argv: &[std::path::PathBuf]) -> anyhow::Result<Self> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("--stdin-from-command needs a command after `--`"))?;
        let name = program.display().to_string();
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{name}`"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("`{name}`: no standard output"))?;
        Ok(Self {
            program: name,
            child,
            stdout,
            exited: false,
        })
    }
}

impl std::io::Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.exited {
            let status = self.child.wait()?;
            self.exited = true;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "`{}` failed ({status}); no snapshot written",
                    self.program
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for CommandOutput {
    fn drop(&mut self) {
        if !self.exited {
            // The backup stopped early (an error, Ctrl-C): the command must not live on.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn snapshots(ctx: &Ctx, a: super::SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let (snaps, unreadable) = choose_snapshots(&repo, &[], a.host.as_ref(), &a.tags, "listed")?;
    if ctx.g.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                json!({"id": id.to_hex(), "short_id": id.short(), "time": s.time, "hostname": s.hostname, "username": s.username,
                       "paths": s.paths, "tags": s.tags, "parent": s.parent.map(|p| p.to_hex()), "tree": s.tree.to_hex(),
                       "original": s.original.map(|p| p.to_hex()),
                       "rewritten_from": s.rewritten_from.map(|p| p.to_hex()), "summary": s.summary})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!(
            "{:<10} {:<20} {:<15} {:<15} Paths",
            "ID", "Time (WIB)", "Host", "Tags"
        );
        println!("{}", "-".repeat(80));
        for (id, s) in &snaps {
            println!(
                "{:<10} {:<20} {:<15} {:<15} {}",
                id.short(),
                s.time.with_timezone(&jakarta()).format("%Y-%m-%d %H:%M:%S"),
                s.hostname,
                s.tags.join(","),
                s.paths.join(", ")
            );
        }
        println!("{}", "-".repeat(80));
        println!("{} snapshots", snaps.len());
    }
    Ok(if unreadable == 0 {
        ExitCode::Ok
    } else {
        ExitCode::Partial
    })
}

fn kind_str(k: NodeKind) -> &'static str {
    match k {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::BlockDev => "dev",
        NodeKind::CharDev => "chardev",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
    }
}

/// Walk a snapshot's tree, calling `f(path, node)` for every entry.
fn walk_tree(
    repo: &Repository,
    index: &crate::engine::index::Index,
    tree: &crate::engine::id::BlobId,
    prefix: &str,
    depth: usize,
    f: &mut dyn FnMut(&str, &crate::engine::tree::Node),
) -> anyhow::Result<()> {
    if depth > crate::engine::tree::MAX_DEPTH {
        anyhow::bail!("{prefix}/: {}", crate::engine::tree::too_deep());
    }
    let t = repo.load_tree(index, tree)?;
    for n in &t.nodes {
        let p = format!("{prefix}/{}", n.display_name());
        f(&p, n);
        if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
            walk_tree(repo, index, &sub, &p, depth + 1, f)?;
        }
    }
    Ok(())
}

fn ls(ctx: &Ctx, a: super::LsArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let id = repo.find_snapshot(&a.snapshot)?;
    let snap = repo.load_snapshot(&id)?;
    let (index, _) = repo.load_index_for(&snap)?;
    // Only the trees on the way to PATH are read; a PATH the snapshot lacks is an error.
    let found = crate::engine::browse::list(
        &repo,
        &index,
        &snap.tree,
        a.path.as_deref().unwrap_or("/").as_bytes(),
        true,
        usize::MAX,
    )?;
    for listed in found.entries {
        let (p, n) = (String::from_utf8_lossy(&listed.path), listed.node);
        if ctx.g.json {
            let mut line = json!({"path": p, "type": kind_str(n.kind), "mode": n.mode, "uid": n.uid, "gid": n.gid, "size": n.size,
                              "mtime_ns": n.mtime_ns, "link_target": n.link_target.as_ref().map(|t| String::from_utf8_lossy(t).into_owned())});
            // The names of its extended attributes (ACLs, capabilities, labels), when it
            // has any; their values can be binary.
            if !n.xattrs.is_empty() {
                line["xattrs"] = n
                    .xattrs
                    .iter()
                    .map(|x| String::from_utf8_lossy(&x.name).into_owned())
                    .collect();
            }
            json_line(&line);
        } else {
            let t = chrono::DateTime::from_timestamp(n.mtime_ns.div_euclid(1_000_000_000), 0)
                .map(|t| {
                    t.with_timezone(&jakarta())
                        .format("%Y-%m-%d %H:%M:%S")
                        .to_string()
                })
                .unwrap_or_default();
            let link = n
                .link_target
                .as_ref()
                .map(|l| format!(" -> {}", String::from_utf8_lossy(l)))
                .unwrap_or_default();
            println!(
                "{:<8} {:>5o} {:>12} {} {p}{link}",
                kind_str(n.kind),
                n.mode,
                n.size,
                t
            );
        }
    }
    Ok(ExitCode::Ok)
}

fn dump(ctx: &Ctx, a: super::DumpArgs) -> anyhow::Result<ExitCode> {
    use crate::engine::browse;
    let repo = ctx.open()?;
    let id = repo.find_snapshot(&a.snapshot)?;
    let snap = repo.load_snapshot(&id)?;
    let (index, _) = repo.load_index_for(&snap)?;
    let path = a.path.as_bytes();
    // A file is written as it is; a directory, or anything with --archive, as a tar.
    let file = match browse::entry_or_dir(&repo, &index, &snap.tree, path)? {
        Some(file) if a.archive.is_none() => Some(file),
        _ => None,
    };
    if let Some(file) = &file
        && file.node.kind != NodeKind::File
    {
        return Err(anyhow!(
            "{} is a {} in the snapshot, not a regular file; `--archive tar` writes it as a tar archive",
            String::from_utf8_lossy(&file.path),
            kind_str(file.node.kind)
        ));
    }
    let sink = a
        .output
        .clone()
        .unwrap_or_else(|| Path::new("standard output").to_path_buf());
    let (bytes, archived) = match &file {
        Some(file) => {
            let bytes = write_dumped(a.output.as_deref(), file.node.mode & 0o7777, |out| {
                browse::dump(&repo, &index, file, out, &sink)
            })?;
            (bytes, None)
        }
        None => {
            let archived = write_dumped(a.output.as_deref(), 0o600, |out| {
                crate::engine::archive::dump_tar(&repo, &index, &snap.tree, path, out, &sink)
            })?;
            (archived.archive_bytes, Some(archived))
        }
    };
    let shown_path = file.as_ref().map_or_else(
        || a.path.clone(),
        |file| String::from_utf8_lossy(&file.path).into_owned(),
    );
    let skipped: Vec<String> = archived
        .iter()
        .flat_map(|done| done.skipped.iter())
        .map(|path| String::from_utf8_lossy(path).into_owned())
        .collect();
    if ctx.g.json {
        let mut summary = json!({"message_type": "summary", "snapshot": id.to_hex(),
                                 "path": shown_path, "output": sink.display().to_string(),
                                 "bytes": bytes});
        if let (Some(done), Some(fields)) = (&archived, summary.as_object_mut()) {
            fields.insert("archive".into(), json!("tar"));
            fields.insert("files".into(), json!(done.files));
            fields.insert("dirs".into(), json!(done.dirs));
            fields.insert("symlinks".into(), json!(done.symlinks));
            fields.insert("hardlinks".into(), json!(done.hardlinks));
            fields.insert("specials".into(), json!(done.specials));
            fields.insert("content_bytes".into(), json!(done.content_bytes));
            fields.insert("skipped".into(), json!(skipped));
        }
        json_line(&summary);
    } else if !ctx.g.quiet {
        match &archived {
            None => eprintln!(
                "{shown_path} of snapshot {}: {} written to {}, every chunk verified",
                id.short(),
                human_bytes(bytes),
                sink.display()
            ),
            Some(done) => {
                eprintln!(
                    "{shown_path} of snapshot {}: tar archive of {} files ({}), {} directories, {} links written to {}, every chunk verified",
                    id.short(),
                    done.files,
                    human_bytes(done.content_bytes),
                    done.dirs,
                    done.symlinks + done.hardlinks,
                    sink.display()
                );
                for path in &skipped {
                    eprintln!("left out (a socket, which tar cannot hold): {path}");
                }
            }
        }
    }
    Ok(ExitCode::Ok)
}

/// Runs `write` on standard output, or on a file staged beside `output` under a hidden
/// name and renamed over it with `mode` only once `write` succeeded and the data is on
/// disk: a damaged or cut-short dump never appears under the name asked for.
fn write_dumped<T>(
    output: Option<&Path>,
    mode: u32,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<T, Error>,
) -> anyhow::Result<T> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(output) = output else {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        return Ok(write(&mut out)?);
    };
    let name = output
        .file_name()
        .ok_or_else(|| anyhow!("--output {} names no file", output.display()))?;
    let staged = output.with_file_name(format!(
        ".{}.cadang-dump-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> anyhow::Result<T> {
        let mut staging = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .with_context(|| format!("cannot create {}", staged.display()))?;
        let done = write(&mut std::io::BufWriter::with_capacity(
            1 << 20,
            &mut staging,
        ))?;
        staging
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| staging.sync_all())
            .with_context(|| format!("cannot finish {}", staged.display()))?;
        std::fs::rename(&staged, output).with_context(|| {
            format!("cannot rename {} to {}", staged.display(), output.display())
        })?;
        Ok(done)
    })();
    written.inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })
}

/// The snapshots that `specs` name (all when none is named) with host `host` and every
/// tag of `tags`, oldest first, and how many snapshots could not be read: those are named
/// on standard error as not `used` ("listed", "searched", "counted").
fn choose_snapshots(
    repo: &Repository,
    specs: &[String],
    host: Option<&String>,
    tags: &[String],
    used: &str,
) -> anyhow::Result<(Vec<(SnapshotId, crate::engine::snapshot::Snapshot)>, usize)> {
    let named: Vec<SnapshotId> = specs
        .iter()
        .map(|spec| repo.find_snapshot(spec))
        .collect::<Result<_, _>>()?;
    let (snaps, bad) = repo.load_snapshots()?;
    for (id, e) in &bad {
        eprintln!("cadang: snapshot {} not {used}: {e}", id.short());
    }
    let chosen = snaps
        .into_iter()
        .filter(|(id, s)| {
            (named.is_empty() || named.contains(id))
                && host.is_none_or(|h| &s.hostname == h)
                && tags.iter().all(|t| s.tags.contains(t))
        })
        .collect();
    Ok((chosen, bad.len()))
}

fn find(ctx: &Ctx, a: super::FindArgs) -> anyhow::Result<ExitCode> {
    let patterns = crate::engine::browse::Patterns::new(&a.patterns, a.ignore_case)?;
    let repo = ctx.open()?;
    let (snaps, _) = choose_snapshots(&repo, &a.snapshots, a.host.as_ref(), &a.tags, "searched")?;
    let (index, _) = repo.load_index()?;
    let found = crate::engine::browse::Finder::new(&repo, &index, patterns).find_in(
        snaps.iter().rev().map(|(id, s)| ((id, s), s.tree)),
        a.limit as usize,
    )?;
    for ((id, s), matched) in &found.snapshots {
        for listed in &matched.entries {
            let path = String::from_utf8_lossy(&listed.path);
            let n = &listed.node;
            if ctx.g.json {
                json_line(
                    &json!({"message_type": "match", "snapshot": id.to_hex(), "time": s.time,
                            "path": path, "type": kind_str(n.kind), "mode": n.mode, "size": n.size, "mtime_ns": n.mtime_ns}),
                );
            } else {
                println!(
                    "{} {} {:<8} {:>12} {path}",
                    id.short(),
                    s.time.with_timezone(&jakarta()).format("%Y-%m-%d %H:%M:%S"),
                    kind_str(n.kind),
                    n.size
                );
            }
        }
    }
    if ctx.g.json {
        json_line(
            &json!({"message_type": "summary", "matches": found.count(), "truncated": found.truncated}),
        );
    } else if found.truncated {
        eprintln!(
            "cadang: stopped at --limit {}; older snapshots were not searched",
            a.limit
        );
    }
    Ok(ExitCode::Ok)
}

fn stats(ctx: &Ctx, a: super::StatsArgs) -> anyhow::Result<ExitCode> {
    use crate::engine::stats::Chosen;
    let repo = ctx.open()?;
    let (index, bad_index) = repo.load_index()?;
    for (id, e) in &bad_index {
        eprintln!("cadang: index {} is unreadable: {e}", id.short());
    }
    let everything = a.snapshots.is_empty() && a.host.is_none() && a.tags.is_empty();
    let (counted, unreadable) = if everything {
        (crate::engine::stats::stats(&repo, &index, Chosen::All)?, 0)
    } else {
        let (chosen, unreadable) =
            choose_snapshots(&repo, &a.snapshots, a.host.as_ref(), &a.tags, "counted")?;
        if chosen.is_empty() {
            anyhow::bail!("no snapshot matches");
        }
        let counted = crate::engine::stats::stats(&repo, &index, Chosen::Some(&chosen))?;
        (counted, unreadable)
    };
    // How many times over the snapshots hold their distinct data, and how much smaller
    // compression made it (None when there is nothing to divide by).
    let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    let dedup = ratio(counted.restore.bytes, counted.data.raw_bytes);
    let compression = ratio(counted.data.raw_bytes, counted.data.stored_bytes);
    if ctx.g.json {
        let mut v = serde_json::to_value(&counted)?;
        v["dedup_ratio"] = json!(dedup);
        v["compression_ratio"] = json!(compression);
        println!("{v}");
    } else {
        let r = &counted.restore;
        let shown =
            |ratio: Option<f64>| ratio.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}×"));
        println!("Snapshots:          {}", counted.snapshots);
        println!(
            "Restore size:       {} in {} files, {} directories, {} other entries{}",
            human_bytes(r.bytes),
            r.files,
            r.dirs,
            r.other,
            if r.hardlinks > 0 {
                format!(" ({} further hard-linked paths)", r.hardlinks)
            } else {
                String::new()
            }
        );
        println!(
            "Distinct data:      {} in {} chunks, {} stored",
            human_bytes(counted.data.raw_bytes),
            counted.data.count,
            human_bytes(counted.data.stored_bytes)
        );
        println!("  deduplication:    {}", shown(dedup));
        println!("  compression:      {}", shown(compression));
        println!(
            "Trees:              {}, {} stored",
            counted.trees.count,
            human_bytes(counted.trees.stored_bytes)
        );
        let repository = &counted.repository;
        println!(
            "Repository:         {} in {} packs; the index lists {} chunks and {} trees",
            human_bytes(repository.pack_bytes),
            repository.packs,
            repository.data.count,
            repository.trees.count
        );
        if let Some(u) = &repository.unreferenced {
            println!(
                "  unreferenced:     {} in {} blobs (what `cadang prune` would collect)",
                human_bytes(u.stored_bytes),
                u.count
            );
        }
        if repository.packs_marked > 0 {
            println!(
                "  marked by prune:  {} packs, deleted once their grace period ends",
                repository.packs_marked
            );
        }
    }
    if counted.missing_chunks > 0 {
        eprintln!(
            "cadang: {} chunks the snapshots reference are not in the index; run `cadang check`",
            counted.missing_chunks
        );
        return Ok(ExitCode::Partial);
    }
    Ok(if bad_index.is_empty() && unreadable == 0 {
        ExitCode::Ok
    } else {
        ExitCode::Partial
    })
}

fn diff(ctx: &Ctx, a: super::DiffArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let (index, _) = repo.load_index()?;
    let mut maps = Vec::new();
    for spec in [&a.a, &a.b] {
        let id = repo.find_snapshot(spec)?;
        let s = repo.load_snapshot(&id)?;
        let mut m = BTreeMap::new();
        walk_tree(&repo, &index, &s.tree, "", 0, &mut |p, n| {
            m.insert(p.to_string(), n.clone());
        })?;
        maps.push(m);
    }
    let (old, new) = (&maps[0], &maps[1]);
    let (mut added, mut removed, mut modified) = (0, 0, 0);
    let emit = |mark: &str, p: &str| {
        if ctx.g.json {
            json_line(&json!({"message_type": "change", "path": p, "modifier": mark}));
        } else {
            println!("{mark}    {p}");
        }
    };
    for (p, n) in old {
        match new.get(p) {
            None => {
                removed += 1;
                emit("-", p);
            }
            Some(m)
                if m.kind != n.kind || m.content != n.content || m.link_target != n.link_target =>
            {
                modified += 1;
                emit("M", p);
            }
            Some(m)
                if m.mode != n.mode
                    || m.uid != n.uid
                    || m.gid != n.gid
                    || m.mtime_ns != n.mtime_ns
                    || m.xattrs != n.xattrs =>
            {
                modified += 1;
                emit("U", p);
            }
            _ => {}
        }
    }
    for p in new.keys() {
        if !old.contains_key(p) {
            added += 1;
            emit("+", p);
        }
    }
    if ctx.g.json {
        json_line(
            &json!({"message_type": "statistics", "added": added, "removed": removed, "changed": modified}),
        );
    } else {
        println!("\n{added} added, {removed} removed, {modified} changed");
    }
    Ok(ExitCode::Ok)
}

fn restore(ctx: &Ctx, a: super::RestoreArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let id: SnapshotId = repo.find_snapshot(&a.snapshot)?;
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a.includes.clone(),
        excludes: a.excludes.clone(),
        verify: a.verify,
        overwrite: a.overwrite,
        delete: a.delete,
        dry_run: a.dry_run,
        cancel: Some(ctx.cancel.clone()),
        threads: None,
        replica: None,
    };
    let progress = Arc::new(RestoreProgress::default());
    let p2 = progress.clone();
    let rep = Reporter::start(ctx.g.json, ctx.g.quiet, "restore", move || Status {
        files_done: p2.files_done.load(Ordering::Relaxed),
        total_files: p2.total_files.load(Ordering::Relaxed),
        bytes_done: p2.bytes_done.load(Ordering::Relaxed),
        total_bytes: p2.total_bytes.load(Ordering::Relaxed),
        errors: p2.errors.load(Ordering::Relaxed),
    });
    let started = std::time::Instant::now();
    let res = crate::engine::restore::restore(&repo, &id, &opts, &progress);
    rep.finish();
    let r = res?;
    let secs = started.elapsed().as_secs_f64();
    if ctx.g.json {
        for e in &r.errors {
            json_line(
                &json!({"message_type": "error", "item": e.path, "error": {"message": e.error}, "during": "restore"}),
            );
        }
        let mut v = serde_json::to_value(&r)?;
        v["message_type"] = json!("summary");
        v["snapshot_id"] = json!(id.to_hex());
        v["duration_seconds"] = json!(secs);
        v["success"] = json!(r.is_success());
        json_line(&v);
    } else {
        for e in &r.errors {
            eprintln!("error: {}: {}", e.path, e.error);
        }
        let deleted = if r.dry_run { "would delete" } else { "deleted" };
        if ctx.g.verbose > 0 || r.dry_run {
            for d in &r.deleted {
                ctx.say(format!("{deleted} /{d}"));
            }
        }
        ctx.say(format!(
            "{} snapshot {} to {}: {} files, {} dirs, {}{} in {:.1}s",
            if r.dry_run {
                "would restore"
            } else {
                "restored"
            },
            id.short(),
            a.target.display(),
            r.files_restored,
            r.dirs,
            human_bytes(r.bytes_restored),
            restore_extras(&r, deleted),
            secs
        ));
        if let Some(v) = &r.verify {
            for m in &v.mismatches {
                eprintln!("verify: {}: {}", m.path, m.error);
            }
            ctx.say(format!(
                "verified {} entries ({}): {} differ from the snapshot",
                v.files_checked,
                human_bytes(v.bytes_checked),
                v.mismatches.len()
            ));
        }
        if !r.damaged_blobs.is_empty() {
            eprintln!("damaged or missing data ({}):", r.damaged_blobs.len());
            for d in &r.damaged_blobs {
                eprintln!("  {d}");
            }
        }
        if r.dry_run && !r.is_success() {
            eprintln!(
                "a restore would fail {} entries; nothing was written",
                r.errors.len()
            );
        } else if !r.is_success() {
            eprintln!(
                "restore INCOMPLETE: {} entries failed; the other files were restored",
                r.errors.len() + r.verify.as_ref().map_or(0, |v| v.mismatches.len())
            );
        }
    }
    Ok(if r.is_success() {
        ExitCode::Ok
    } else {
        ExitCode::Partial
    })
}

/// The summary's clauses for what a restore found already at its target.
fn restore_extras(r: &crate::engine::restore::RestoreResult, deleted: &str) -> String {
    let mut extras = String::new();
    if r.files_unchanged > 0 {
        extras += &format!(
            "; {} files ({}) already up to date",
            r.files_unchanged,
            human_bytes(r.bytes_unchanged)
        );
    }
    if r.bytes_reused > 0 {
        extras += &format!(
            "; {} copied from the files already there",
            human_bytes(r.bytes_reused)
        );
    }
    if r.files_kept > 0 {
        extras += &format!("; {} existing entries left as they were", r.files_kept);
    }
    if !r.deleted.is_empty() {
        extras += &format!("; {deleted} {} entries", r.deleted.len());
    }
    extras
}

fn check(ctx: &Ctx, a: super::CheckArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let read_data = if a.read_data {
        ReadData::All
    } else if let Some(s) = &a.read_data_subset {
        s.parse::<ReadData>()
            .map_err(|e| anyhow!("--read-data-subset {e}"))?
    } else {
        ReadData::None
    };
    let r = crate::engine::check::check(&repo, &CheckOptions { read_data })?;
    if ctx.g.json {
        let mut v = serde_json::to_value(&r)?;
        v["message_type"] = json!("summary");
        v["ok"] = json!(r.is_ok());
        json_line(&v);
    } else {
        ctx.say(format!(
            "checked {} snapshots, {} packs, {} blobs; read {} packs",
            r.snapshots, r.packs, r.blobs, r.packs_read
        ));
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        for d in &r.damaged_packs {
            eprintln!("error: pack {}: {}", &d.pack[..8], d.problem);
            if d.affected_files.is_empty() {
                eprintln!("  affects no file of any snapshot");
            }
            for f in &d.affected_files {
                eprintln!("  affects {f}");
            }
        }
        if r.is_ok() {
            ctx.say("no errors were found");
        } else {
            eprintln!(
                "the repository has errors: {} problem(s), {} damaged pack(s)",
                r.errors.len(),
                r.damaged_packs.len()
            );
        }
    }
    Ok(if r.is_ok() {
        ExitCode::Ok
    } else {
        ExitCode::Failure
    })
}

fn policy(p: &PolicyArgs) -> anyhow::Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: p.last,
        hourly: p.hourly,
        daily: p.daily,
        weekly: p.weekly,
        monthly: p.monthly,
        yearly: p.yearly,
        within: p
            .within
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| anyhow!("--keep-within {e}"))?,
        tags: p.tags.clone(),
        keep_tags: p.keep_tags.clone(),
    })
}

fn grace(s: &str) -> anyhow::Result<chrono::Duration> {
    if s == "0" {
        return Ok(chrono::Duration::zero());
    }
    parse_duration(s).map_err(|e| anyhow!("--grace {e}"))
}

fn forget(ctx: &Ctx, a: super::ForgetArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let pol = policy(&a.policy)?;
    let (snaps, _) = repo.load_snapshots()?;
    let mut remove: Vec<SnapshotId> = Vec::new();
    for s in &a.snapshots {
        remove.push(repo.find_snapshot(s)?);
    }
    if pol.is_empty() && remove.is_empty() {
        return Err(anyhow!(
            "no policy given: use --keep-* options or name snapshots; refusing to remove everything"
        ));
    }
    let mut decisions = Vec::new();
    if !pol.is_empty() {
        decisions = apply(&pol, &snaps, jakarta());
        remove.extend(decisions.iter().filter(|d| !d.keep).map(|d| d.id));
    }
    remove.sort();
    remove.dedup();
    if ctx.g.json {
        json_line(
            &json!({"message_type": "forget", "dry_run": a.dry_run, "decisions": decisions,
                          "remove": remove.iter().map(|r| r.to_hex()).collect::<Vec<_>>()}),
        );
    } else {
        for d in &decisions {
            ctx.say(format!(
                "{} {} {}",
                if d.keep { "keep  " } else { "remove" },
                d.id.short(),
                if d.keep {
                    d.reasons.join(",")
                } else {
                    String::new()
                }
            ));
        }
        ctx.say(format!(
            "{} snapshot(s) to remove{}",
            remove.len(),
            if a.dry_run { " (dry run)" } else { "" }
        ));
    }
    if a.dry_run {
        return Ok(ExitCode::Ok);
    }
    for id in &remove {
        repo.delete_snapshot(id)?;
    }
    if a.prune {
        let rep = crate::engine::prune::prune(
            &repo,
            &PruneOptions {
                grace: grace(&a.grace)?,
                ..Default::default()
            },
        )?;
        print_prune(ctx, &rep);
    }
    Ok(ExitCode::Ok)
}

fn print_prune(ctx: &Ctx, rep: &crate::engine::prune::PruneReport) {
    if ctx.g.json {
        let mut v = serde_json::to_value(rep).unwrap_or_default();
        v["message_type"] = json!("prune");
        json_line(&v);
    } else {
        ctx.say(format!(
            "prune: {} packs marked ({}), {} repacked, {} deleted ({}), {} put back",
            rep.packs_marked,
            human_bytes(rep.bytes_marked),
            rep.packs_repacked,
            rep.packs_deleted,
            human_bytes(rep.bytes_deleted),
            rep.packs_resurrected
        ));
        if rep.partial_uploads_deleted > 0 {
            ctx.say(format!(
                "prune: {} partial upload(s) left by interrupted writes deleted",
                rep.partial_uploads_deleted
            ));
        }
        for n in &rep.notes {
            ctx.say(format!("note: {n}"));
        }
    }
}

fn prune(ctx: &Ctx, a: super::PruneArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let rep = crate::engine::prune::prune(
        &repo,
        &PruneOptions {
            dry_run: a.dry_run,
            grace: grace(&a.grace)?,
            max_unused_percent: a.max_unused,
            ..Default::default()
        },
    )?;
    print_prune(ctx, &rep);
    Ok(ExitCode::Ok)
}

/// The patterns given with `--exclude` and those read from `--exclude-file`s (one per
/// line; blank lines and `#` comments skipped).
fn exclude_patterns(given: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut patterns = given.to_vec();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read exclude file {}", f.display()))?;
        patterns.extend(
            text.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        );
    }
    Ok(patterns)
}

fn rewrite(ctx: &Ctx, a: super::RewriteArgs) -> anyhow::Result<ExitCode> {
    use crate::engine::rewrite::{RewriteOptions, rewrite};
    let excludes = exclude_patterns(&a.excludes, &a.exclude_files)?;
    // A malformed pattern is refused before the password is asked for.
    crate::engine::backup::build_excludes(&excludes)?;
    let repo = ctx.open()?;
    let (chosen, unreadable) =
        choose_snapshots(&repo, &a.snapshots, a.host.as_ref(), &a.tags, "rewritten")?;
    if chosen.is_empty() {
        anyhow::bail!("no snapshot matches");
    }
    let rep = rewrite(
        &repo,
        chosen,
        &RewriteOptions {
            excludes,
            forget: a.forget,
            dry_run: a.dry_run,
            hook: None,
            cancel: Some(ctx.cancel.clone()),
        },
    )
    .map_err(|error| match error {
        // A snapshot the patterns would leave empty.
        crate::engine::Error::Refused(message) => {
            anyhow::anyhow!("{message}: `cadang forget` removes a whole snapshot")
        }
        other => other.into(),
    })?;
    if ctx.g.json {
        let mut v = serde_json::to_value(&rep)?;
        v["message_type"] = json!("summary");
        v["snapshots_unreadable"] = json!(unreadable);
        json_line(&v);
    } else {
        for r in &rep.rewritten {
            match &r.to {
                Some(to) => ctx.say(format!("snapshot {} -> {}", &r.from[..8], &to[..8])),
                None => ctx.say(format!("snapshot {} would be rewritten", &r.from[..8])),
            }
            for path in &r.removed {
                ctx.say(format!("  removed {path}"));
            }
        }
        ctx.say(format!(
            "{} snapshot(s) {}, {} unchanged{}",
            rep.rewritten.len(),
            if rep.dry_run {
                "to rewrite (dry run)"
            } else {
                "rewritten"
            },
            rep.unchanged.len(),
            if rep.forgotten.is_empty() {
                String::new()
            } else {
                format!(", {} original(s) forgotten", rep.forgotten.len())
            }
        ));
        if !rep.dry_run && !rep.rewritten.is_empty() {
            ctx.say(
                "the data left out stays in the repository until `cadang prune --max-unused 0` repacks its packs and a prune after the grace period deletes them",
            );
        }
    }
    // A snapshot that could not be read may still hold what was to be left out.
    if unreadable > 0 && a.snapshots.is_empty() {
        eprintln!("cadang: {unreadable} snapshot(s) could not be read and were not rewritten");
        return Ok(ExitCode::Partial);
    }
    Ok(ExitCode::Ok)
}

fn tag(ctx: &Ctx, a: super::TagArgs) -> anyhow::Result<ExitCode> {
    use crate::engine::rewrite::{TagChange, retag};
    if a.add.is_empty() && a.remove.is_empty() && a.set.is_empty() {
        anyhow::bail!("nothing to change: give --add, --remove or --set");
    }
    let change = TagChange {
        set: (!a.set.is_empty()).then(|| a.set.clone()),
        add: a.add.clone(),
        remove: a.remove.clone(),
        // The tags the daemon finds its snapshots by: `tag` never removes them.
        protected_prefixes: crate::jobs::tags::PREFIXES
            .iter()
            .map(|p| (*p).to_owned())
            .collect(),
    };
    if let Some(kept) = change.refused_removals().first() {
        anyhow::bail!(
            "tag `{kept}` is the daemon's: it finds its snapshots by it, so it is not removed"
        );
    }
    let repo = ctx.open()?;
    let (chosen, _) = choose_snapshots(&repo, &a.snapshots, a.host.as_ref(), &a.tags, "changed")?;
    if chosen.is_empty() {
        anyhow::bail!("no snapshot matches");
    }
    let count = chosen.len();
    let replaced = retag(&repo, chosen, &change)?;
    if ctx.g.json {
        json_line(&json!({"message_type": "summary",
            "changed": replaced.iter().map(|(from, to)| json!({"from": from.to_hex(), "to": to.to_hex()})).collect::<Vec<_>>(),
            "unchanged": count - replaced.len()}));
    } else {
        for (from, to) in &replaced {
            ctx.say(format!("snapshot {} -> {}", from.short(), to.short()));
        }
        ctx.say(format!(
            "{} snapshot(s) changed, {} unchanged",
            replaced.len(),
            count - replaced.len()
        ));
    }
    Ok(ExitCode::Ok)
}

fn copy(ctx: &Ctx, a: super::CopyArgs) -> anyhow::Result<ExitCode> {
    let src = ctx.open()?;
    let dst_store = ctx.store(Some(&a.to))?;
    let pw = password(
        a.to_password_file.as_deref(),
        "CADANG_TO_PASSWORD",
        "password of the destination repository: ",
        false,
    )?;
    let dst = Repository::open(ctx.handle.clone(), dst_store, &pw, &ctx.open_opts())?;
    let ids: Vec<SnapshotId> = if a.snapshots.is_empty() {
        src.load_snapshots()?.0.into_iter().map(|s| s.0).collect()
    } else {
        a.snapshots
            .iter()
            .map(|s| src.find_snapshot(s))
            .collect::<Result<_, _>>()?
    };
    let rep = crate::engine::copy::copy(&src, &dst, &ids, None)?;
    if ctx.g.json {
        let mut v = serde_json::to_value(&rep)?;
        v["message_type"] = json!("summary");
        json_line(&v);
    } else {
        for (s, d) in &rep.copied {
            ctx.say(format!("copied snapshot {} -> {}", &s[..8], &d[..8]));
        }
        ctx.say(format!(
            "{} copied, {} already present; {} blobs, {} added",
            rep.copied.len(),
            rep.skipped.len(),
            rep.blobs_copied,
            human_bytes(rep.bytes_added)
        ));
    }
    Ok(ExitCode::Ok)
}

/// A new key slot's password: from `file`, `CADANG_NEW_PASSWORD`, or asked twice.
fn new_password(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    password(file, "CADANG_NEW_PASSWORD", "new password: ", true)
}

fn key(ctx: &Ctx, k: KeyCmd) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    match k {
        KeyCmd::Add { new_password_file } => {
            let id = repo.key_add(&new_password(new_password_file.as_deref())?)?;
            if ctx.g.json {
                json_line(&json!({"message_type": "key_added", "id": id.to_hex()}));
            } else {
                ctx.say(format!("added key slot {}", id.short()));
            }
        }
        KeyCmd::List => {
            let keys = repo.key_list()?;
            if ctx.g.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| json!({"id": k.id.to_hex(), "current": k.current, "host": k.host, "user": k.user, "created": k.created}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(" {:<10} {:<12} {:<20} Created", "ID", "User", "Host");
                for k in keys {
                    println!(
                        "{}{:<10} {:<12} {:<20} {}",
                        if k.current { "*" } else { " " },
                        k.id.short(),
                        k.user,
                        k.host,
                        k.created
                    );
                }
            }
        }
        KeyCmd::Remove { id, force } => {
            let kid = repo.find_key(&id)?;
            refuse_daemon_slot(&repo, |k| k.id == kid, force, "remove")?;
            repo.key_remove(&kid)?;
            ctx.say(format!("removed key slot {}", kid.short()));
        }
        KeyCmd::Passwd {
            new_password_file,
            force,
        } => {
            refuse_daemon_slot(&repo, |k| k.current, force, "replace")?;
            let id = repo.key_passwd(&new_password(new_password_file.as_deref())?)?;
            if ctx.g.json {
                json_line(&json!({"message_type": "key_changed", "id": id.to_hex()}));
            } else {
                ctx.say(format!(
                    "password changed: key slot {} replaces the old one",
                    id.short()
                ));
            }
        }
    }
    Ok(ExitCode::Ok)
}

/// Refuses to `verb` the key slot `which` picks when the cadang daemon made it, unless
/// `force`: the daemon derives that slot's password and could no longer open its
/// repository.
fn refuse_daemon_slot(
    repo: &Repository,
    which: impl Fn(&crate::engine::repo::KeyInfo) -> bool,
    force: bool,
    verb: &str,
) -> anyhow::Result<()> {
    let daemons = repo
        .key_list()?
        .into_iter()
        .find(|k| which(k) && k.host == crate::jobs::DAEMON_HOST);
    if let Some(slot) = daemons
        && !force
    {
        anyhow::bail!(
            "refusing to {verb} key slot {}: the cadang daemon made it (host {}) and opens \
             the repository with the password it derives for it; --force to {verb} it anyway",
            slot.id.short(),
            crate::jobs::DAEMON_HOST
        );
    }
    Ok(())
}

fn unlock(ctx: &Ctx, a: super::UnlockArgs) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let n = crate::engine::lock::unlock(&repo, a.remove_all)?;
    ctx.say(format!("removed {n} lock(s)"));
    Ok(ExitCode::Ok)
}

fn repair_index(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let repo = ctx.open()?;
    let (n, problems) = crate::engine::check::repair_index(&repo)?;
    for p in &problems {
        eprintln!("warning: {p}");
    }
    ctx.say(format!("index rebuilt from {n} packs"));
    Ok(if problems.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::Partial
    })
}
