//! The `cadang` command line: argument parsing (clap lives only here) and
//! dispatch. Repository commands drive the engine directly, in restic's
//! conventions; `daemon` and `admin` run the control plane on this host; the client
//! commands (request, step, asset, ...) talk to a daemon over gRPC.

mod agent_cmds;
mod client;
mod output;
mod repo_cmds;
mod restore_request_cmds;
mod server_cmds;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use output::ExitCode;

/// cadang — backup and restore for the colocation data center.
#[derive(Parser, Debug)]
#[command(name = "cadang", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub conn: client::ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every repository command accepts.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Repository: a directory, file://PATH, or s3://bucket/prefix.
    #[arg(
        short = 'r',
        long = "repo",
        env = "CADANG_REPOSITORY",
        global = true,
        help_heading = "Repository",
        hide_env_values = true
    )]
    pub repo: Option<String>,
    /// Read the repository password from this file (else CADANG_PASSWORD, else a prompt).
    #[arg(
        long,
        env = "CADANG_PASSWORD_FILE",
        global = true,
        help_heading = "Repository",
        hide_env_values = true
    )]
    pub password_file: Option<PathBuf>,
    /// Machine-readable output: JSON lines for progress, a JSON summary at the end.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print less (no progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log more (repeat for more detail); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// S3 endpoint for S3-compatible stores (MinIO, Garage, Ceph RGW).
    #[arg(
        long,
        env = "CADANG_S3_ENDPOINT",
        global = true,
        help_heading = "Repository"
    )]
    pub s3_endpoint: Option<String>,
    /// Argon2id memory for new key slots, KiB (default 65536 with 3 passes;
    /// a lower value uses 2 passes and is raised to at least 19456). A knob for tests
    /// and small machines, set through its variable: not global, so that it is not
    /// offered on every subcommand by the shell completions.
    #[arg(long, hide = true, env = "CADANG_KDF_MEMORY_KIB")]
    pub kdf_memory_kib: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files and directories.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the files of a snapshot.
    Ls(LsArgs),
    /// Find files by name in the snapshots, newest snapshot first.
    Find(FindArgs),
    /// Write a file of a snapshot, or a directory as a tar archive, to standard output
    /// (or a file), every chunk verified.
    Dump(DumpArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// How much the snapshots would restore, how much of the repository their distinct
    /// data takes, and what a prune would collect.
    Stats(StatsArgs),
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// Check the repository for missing or damaged data.
    Check(CheckArgs),
    /// Remove snapshots according to a retention policy.
    Forget(ForgetArgs),
    /// Remove data that no snapshot needs.
    Prune(PruneArgs),
    /// Copy snapshots to another repository.
    Copy(CopyArgs),
    /// Rewrite snapshots without the files that match exclude patterns (a key or
    /// personal data that must not be kept); `prune --max-unused 0` then frees the data.
    Rewrite(RewriteArgs),
    /// Add, remove or replace the tags of snapshots (`--add hold` with `forget
    /// --keep-tag hold` keeps a snapshot past its retention).
    Tag(TagArgs),
    /// Manage key slots (passwords).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Remove stale locks.
    Unlock(UnlockArgs),
    /// Repair repository metadata.
    #[command(subcommand)]
    Repair(RepairCmd),
    /// Write shell completion scripts (bash, zsh, fish, PowerShell), as `restic generate`.
    Generate(GenerateArgs),

    /// Run the daemon: the SOP's control plane (gRPC) on this host.
    Daemon(server_cmds::DaemonArgs),
    /// Administer this host's daemon directly (first administrator, matrix).
    #[command(subcommand)]
    Admin(server_cmds::AdminCmd),
    /// Show who the token belongs to.
    #[command(name = "whoami")]
    WhoAmI,
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(client::TokenCmd),
    /// Manage accounts (ADMIN).
    #[command(subcommand)]
    User(client::UserCmd),
    /// Manage agencies.
    #[command(subcommand)]
    Agency(client::AgencyCmd),
    /// Manage people (with NIP).
    #[command(subcommand)]
    Person(client::PersonCmd),
    /// Submit, list and show requests of the SOP.
    #[command(subcommand)]
    Request(client::RequestCmd),
    /// Complete, decide or attach to a request's current step.
    #[command(subcommand)]
    Step(client::StepCmd),
    /// The asset register.
    #[command(subcommand)]
    Asset(client::AssetCmd),
    /// Rack space, power and bandwidth.
    #[command(subcommand)]
    Capacity(client::CapacityCmd),
    /// Reports for the heads of section and division.
    #[command(subcommand)]
    Report(client::ReportCmd),
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(client::AuditCmd),
    /// Forms and letters issued by the SOP.
    #[command(subcommand)]
    Form(client::FormCmd),
    /// Backup plans (procedure B): create, list, show, run now, pause, resume.
    #[command(subcommand)]
    Plan(client::PlanCmd),
    /// Adopt existing repositories: `import restic`.
    #[command(subcommand)]
    Import(client::ImportCmd),
    /// Runs of backup plans.
    #[command(subcommand)]
    Run(client::RunCmd),
    /// Agents on colocated servers: enrolment tokens, enrolment, the agent process,
    /// inventories.
    #[command(subcommand)]
    Agent(agent_cmds::AgentCmd),
    /// Restores of servers' backups through their agents, verified file by file.
    #[command(subcommand, name = "restore-job")]
    RestoreJob(agent_cmds::RestoreJobCmd),
    /// Restore requests (procedure C): the restore plan, its attempts and verdicts, the
    /// confirmation an older snapshot needs.
    #[command(subcommand, name = "restore-request")]
    RestoreRequest(restore_request_cmds::RestoreRequestCmd),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Share keys and chunker parameters with this repository (for replicas:
    /// identical blob ids, so copies deduplicate and can stand in for each other).
    #[arg(long)]
    pub from_repo: Option<String>,
    /// Password file of the --from-repo repository (else CADANG_FROM_PASSWORD).
    #[arg(long, env = "CADANG_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Cipher sealing the repository's objects: `aes-256-gcm-derived` (the default
    /// where the CPU has AES instructions) or `xchacha20-poly1305` (the default
    /// elsewhere). A replica made with --from-repo keeps its source's.
    #[arg(long, conflicts_with = "from_repo")]
    pub cipher: Option<crate::engine::crypto::Cipher>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files or directories to back up; with --stdin-from-command, the command
    /// and its arguments, after `--`.
    #[arg(required_unless_present_any = ["stdin", "files_from_verbatim", "files_from_raw"])]
    pub paths: Vec<PathBuf>,
    /// Also back up the paths listed in this file, one per line, taken as they are
    /// (empty lines skipped); `-` reads them from standard input (repeatable).
    #[arg(long = "files-from-verbatim", value_name = "FILE")]
    pub files_from_verbatim: Vec<PathBuf>,
    /// Also back up the paths listed in this file, separated by NUL bytes, as
    /// `find -print0` writes them; `-` reads them from standard input (repeatable).
    #[arg(long = "files-from-raw", value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Back up standard input as one file, named by --stdin-filename.
    #[arg(
        long,
        conflicts_with_all = ["paths", "stdin_from_command", "excludes", "exclude_files", "exclude_if_present", "exclude_caches", "exclude_larger_than", "one_file_system", "files_from_verbatim", "files_from_raw"]
    )]
    pub stdin: bool,
    /// Run the command given after `--` and back up its standard output as one
    /// file: `cadang backup --stdin-from-command --stdin-filename db.sql -- pg_dump db`.
    /// A command that fails fails the backup, and no snapshot is written.
    #[arg(long, conflicts_with_all = ["excludes", "exclude_files", "exclude_if_present", "exclude_caches", "exclude_larger_than", "one_file_system", "files_from_verbatim", "files_from_raw"])]
    pub stdin_from_command: bool,
    /// The name the standard input (or the command's output) is saved under.
    #[arg(long, default_value = "stdin")]
    pub stdin_filename: String,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Exclude a glob pattern (repeatable).
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line.
    #[arg(long = "exclude-file")]
    pub exclude_files: Vec<PathBuf>,
    /// Leave out what a directory holding a file of this name holds, but that file
    /// (repeatable); `NAME:HEADER` only when the file starts with HEADER.
    #[arg(long = "exclude-if-present", value_name = "FILE[:HEADER]")]
    pub exclude_if_present: Vec<String>,
    /// Leave out what cache directories hold (those with a `CACHEDIR.TAG` with its
    /// signature), but their tag.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out regular files larger than SIZE: bytes, or with a suffix K, M, G or T
    /// (powers of 1024, as restic reads them): `--exclude-larger-than 2G`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Stay on the file system of each given path.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Host name to record.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub host: Option<String>,
    /// Parent snapshot (default: latest with the same host and paths).
    #[arg(long)]
    pub parent: Option<String>,
    /// Read all files even if unchanged.
    #[arg(long)]
    pub force: bool,
    /// zstd level for new data in this run (0 = off; default: the repository's, 3).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compression_level: Option<i32>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots with this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Only these snapshots (id, prefix or `latest`); all when none is named.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Only snapshots with this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (or prefix) or `latest`.
    pub snapshot: String,
    /// Only what is below this path (or the file it names).
    pub path: Option<String>,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Shell globs: without `/` they match names (`*.xlsx`), with `/` absolute paths
    /// (`/var/www/**/index.php`).
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Only this snapshot (id, prefix or `latest`; repeatable).
    #[arg(long = "snapshot", short = 's')]
    pub snapshots: Vec<String>,
    /// Only snapshots with this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Match letters of either case.
    #[arg(long, short = 'i')]
    pub ignore_case: bool,
    /// Stop after this many matches in all.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id (or prefix) or `latest`.
    pub snapshot: String,
    /// Path in the snapshot: a regular file is written as it is, a directory (`/` for
    /// the whole snapshot) as a tar archive of everything below it.
    pub path: String,
    /// Write to this file instead of standard output: it appears, with the mode the
    /// snapshot records (0600 for an archive), only once every byte is written and
    /// verified.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `tar`: write a tar archive even when the path is a file or a link (directories
    /// always are).
    #[arg(long, value_name = "FORMAT", value_parser = ["tar"])]
    pub archive: Option<String>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// First snapshot.
    pub a: String,
    /// Second snapshot.
    pub b: String,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (or prefix) or `latest`.
    pub snapshot: String,
    /// Directory to restore into.
    #[arg(short, long)]
    pub target: PathBuf,
    /// Only restore this path of the snapshot (repeatable).
    #[arg(short, long = "include")]
    pub includes: Vec<String>,
    /// Leave out entries matching this glob, and what is below them (repeatable; as
    /// `backup --exclude`: without `/` a name anywhere, with `/` a path from the root).
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Re-read the restored files and compare them with the snapshot.
    #[arg(long, conflicts_with = "dry_run")]
    pub verify: bool,
    /// What to do with files already at the target: `always` replaces them, but
    /// keeps (and only gives the snapshot's metadata to) a file whose content, read
    /// and compared, is already the snapshot's; `if-changed` takes a file of the
    /// recorded size and modification time as unchanged without reading it;
    /// `if-newer` replaces only what is older than the snapshot's copy; `never`
    /// leaves everything that exists as it is.
    #[arg(long, value_name = "MODE", default_value = "always")]
    pub overwrite: crate::engine::restore::Overwrite,
    /// Delete what the target holds that the snapshot does not, in the directories
    /// restored at and below the backed-up paths (never in those above them, which
    /// the snapshot holds only as the way to them), among the paths --include and
    /// --exclude select; check first with --dry-run.
    #[arg(long)]
    pub delete: bool,
    /// Read and compare, but write, replace and delete nothing: say what a restore
    /// would do.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Download and verify every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Download and verify a subset: N/T (partition N of T) or P% (random).
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Keep the last N snapshots.
    #[arg(long = "keep-last", default_value_t = 0)]
    pub last: u32,
    /// Keep the last N hourly snapshots.
    #[arg(long = "keep-hourly", default_value_t = 0)]
    pub hourly: u32,
    /// Keep the last N daily snapshots.
    #[arg(long = "keep-daily", default_value_t = 0)]
    pub daily: u32,
    /// Keep the last N weekly snapshots.
    #[arg(long = "keep-weekly", default_value_t = 0)]
    pub weekly: u32,
    /// Keep the last N monthly snapshots.
    #[arg(long = "keep-monthly", default_value_t = 0)]
    pub monthly: u32,
    /// Keep the last N yearly snapshots.
    #[arg(long = "keep-yearly", default_value_t = 0)]
    pub yearly: u32,
    /// Keep snapshots within this duration of the newest (e.g. 30d, 1y6m).
    #[arg(long = "keep-within")]
    pub within: Option<String>,
    /// Keep every snapshot carrying these tags (`hold`, or `hold,bpk-2026` for both;
    /// repeatable: any of the lists).
    #[arg(long = "keep-tag", value_name = "TAG[,TAG...]")]
    pub keep_tags: Vec<String>,
    /// Only consider snapshots with this tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Also remove snapshots given by id.
    pub snapshots: Vec<String>,
    /// Run prune afterwards.
    #[arg(long)]
    pub prune: bool,
    /// Show what would be removed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Prune grace period (with --prune).
    #[arg(long, default_value = "24h")]
    pub grace: String,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be removed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// How long marked data waits before deletion (must outlast any running
    /// backup). `0h` deletes at once: only when nothing else writes.
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// Repack packs with more than this percentage unused.
    #[arg(long, default_value_t = 10.0)]
    pub max_unused: f64,
}

#[derive(Args, Debug)]
pub struct RewriteArgs {
    /// Snapshots to rewrite (ids, prefixes or `latest`). Without any, every snapshot
    /// that --host and --tag select: all of them when neither is given.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Leave out entries matching this glob, and what is below them (repeatable; as
    /// `backup --exclude`: without `/` a name anywhere, with `/` an absolute path).
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line.
    #[arg(long = "exclude-file")]
    pub exclude_files: Vec<PathBuf>,
    /// Delete each original once the snapshot that replaces it is stored (else the
    /// new snapshots are tagged `rewrite` and the originals kept).
    #[arg(long)]
    pub forget: bool,
    /// Show what would be left out; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Only snapshots with this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change (ids, prefixes or `latest`). Without any, every snapshot that
    /// --host and --tag select: all of them when neither is given.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Add this tag (repeatable).
    #[arg(long = "add", value_name = "TAG")]
    pub add: Vec<String>,
    /// Remove this tag (repeatable).
    #[arg(long = "remove", value_name = "TAG")]
    pub remove: Vec<String>,
    /// Replace the tags by these (repeatable; the daemon's own `server:`, `plan:` and
    /// `run:` tags are never removed).
    #[arg(long = "set", value_name = "TAG", conflicts_with_all = ["add", "remove"])]
    pub set: Vec<String>,
    /// Only snapshots with this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots to copy (ids, prefixes or `latest`); none means all.
    pub snapshots: Vec<String>,
    /// Destination repository.
    #[arg(long = "to", env = "CADANG_TO_REPOSITORY")]
    pub to: String,
    /// Destination password file (else CADANG_TO_PASSWORD).
    #[arg(long, env = "CADANG_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Add a key slot (new password read from --new-password-file or a prompt).
    Add {
        /// File holding the new password.
        #[arg(long, env = "CADANG_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// List key slots.
    List,
    /// Remove a key slot.
    Remove {
        /// Key slot id or prefix.
        id: String,
        /// Remove a slot of the cadang daemon too (the daemon then cannot open the
        /// repository).
        #[arg(long)]
        force: bool,
    },
    /// Change the password of the key slot in use: a new slot with the new password
    /// replaces it (the old password stops working; other slots are untouched).
    Passwd {
        /// File holding the new password.
        #[arg(long, env = "CADANG_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
        /// Replace a slot of the cadang daemon too (the daemon then cannot open the
        /// repository).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove all locks, even live ones.
    #[arg(long)]
    pub remove_all: bool,
}

/// Which completion scripts to write, and where.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("scripts").required(true).multiple(true)))]
pub struct GenerateArgs {
    /// Write the bash completion script to FILE (`-` for standard output); install it
    /// as /etc/bash_completion.d/cadang.
    #[arg(long, value_name = "FILE", group = "scripts")]
    pub bash_completion: Option<PathBuf>,
    /// Write the zsh completion script to FILE (`-` for standard output), as `_cadang`
    /// in a directory of $fpath.
    #[arg(long, value_name = "FILE", group = "scripts")]
    pub zsh_completion: Option<PathBuf>,
    /// Write the fish completion script to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE", group = "scripts")]
    pub fish_completion: Option<PathBuf>,
    /// Write the PowerShell completion script to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE", group = "scripts")]
    pub powershell_completion: Option<PathBuf>,
}

/// Writes the completion scripts `args` asks for; they complete every subcommand and
/// option of this binary.
fn generate(args: &GenerateArgs) -> ExitCode {
    use clap_complete::Shell;
    use std::io::Write;
    let scripts = [
        (Shell::Bash, &args.bash_completion),
        (Shell::Zsh, &args.zsh_completion),
        (Shell::Fish, &args.fish_completion),
        (Shell::PowerShell, &args.powershell_completion),
    ];
    for (shell, file) in scripts {
        let Some(file) = file else { continue };
        let mut script = Vec::new();
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "cadang", &mut script);
        let written = if file.as_os_str() == "-" {
            std::io::stdout().lock().write_all(&script)
        } else {
            std::fs::write(file, &script)
        };
        if let Err(error) = written {
            eprintln!(
                "cadang: error: cannot write the {shell} completion script to {}: {error}",
                file.display()
            );
            return ExitCode::Failure;
        }
    }
    ExitCode::Ok
}

#[derive(Subcommand, Debug)]
pub enum RepairCmd {
    /// Rebuild the index from the packs.
    Index,
}

/// Run a parsed command line. Returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    use client::ClientCommand as C;
    let json = cli.global.json;
    let client = match cli.command {
        Command::Daemon(args) => return server_cmds::daemon(args),
        Command::Generate(args) => return generate(&args),
        Command::Admin(command) => return server_cmds::admin(command),
        Command::WhoAmI => C::WhoAmI,
        Command::Token(command) => C::Token(command),
        Command::User(command) => C::User(command),
        Command::Agency(command) => C::Agency(command),
        Command::Person(command) => C::Person(command),
        Command::Request(command) => C::Request(command),
        Command::Step(command) => C::Step(command),
        Command::Asset(command) => C::Asset(command),
        Command::Capacity(command) => C::Capacity(command),
        Command::Report(command) => C::Report(command),
        Command::Audit(command) => C::Audit(command),
        Command::Form(command) => C::Form(command),
        Command::Plan(command) => C::Plan(command),
        Command::Import(command) => C::Import(command),
        Command::Run(command) => C::Run(command),
        Command::Agent(command) => return agent_cmds::agent(&cli.conn, json, command),
        Command::RestoreJob(command) => return agent_cmds::restore_job(&cli.conn, json, command),
        Command::RestoreRequest(command) => {
            return restore_request_cmds::restore_request(&cli.conn, json, command);
        }
        _ => return repo_cmds::run(cli),
    };
    client::run(&cli.conn, json, client)
}

/// A size as restic's `--exclude-larger-than` reads it: bytes, or a number followed by
/// `k`, `m`, `g` or `t` (either case; powers of 1024). At least one byte.
///
/// # Errors
/// What is wrong with the text.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => {
            let shift = match unit.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(format!("`{text}`: the size suffix is K, M, G or T")),
            };
            (&text[..at], shift)
        }
        _ => (text, 0),
    };
    let number: u64 = digits.parse().map_err(|_| {
        format!("`{text}` is not a size: a whole number of bytes, or with K, M, G or T")
    })?;
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is larger than any file"))?;
    if bytes == 0 {
        return Err("the size must be at least 1 byte".into());
    }
    Ok(bytes)
}

/// Whether this runs the daemon (which logs at `info` by default).
pub fn is_daemon(cli: &Cli) -> bool {
    match &cli.command {
        Command::Daemon(_) => true,
        Command::Agent(command) => agent_cmds::is_agent_process(command),
        _ => false,
    }
}

/// Lets a command whose output is cut short by its reader (`cadang ls latest | head`)
/// end quietly as other Unix tools do, killed by SIGPIPE, instead of panicking on the
/// failed write (Rust ignores SIGPIPE, so every print would otherwise fail with EPIPE).
/// Not for the daemon or the agent: they write to sockets and to the pipes of the
/// programs they run, where a reader gone is an error to handle, not a reason to die.
pub fn end_quietly_on_closed_output(cli: &Cli) {
    if !is_daemon(cli) {
        // SAFETY: restoring a signal's default disposition, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

/// Whether log lines should be JSON: `--log-json`, or the daemon's configured format.
pub fn wants_json_logs(cli: &Cli) -> bool {
    match &cli.command {
        Command::Daemon(args) => server_cmds::json_logs(args),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_restic_reads_them() {
        assert_eq!(parse_size("1"), Ok(1));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size(" 3t "), Ok(3 << 40));
        for bad in ["", "0", "0M", "G", "1.5G", "-1", "2X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
