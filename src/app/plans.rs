//! Backup plans (procedure B) and their runs: creating a plan for a backup request,
//! starting and stopping it when the request's steps say so, pausing, resuming, running
//! it at once, and the schedule itself — which slots are due, caught up once after a
//! downtime, claimed by exactly one daemon under a lease that another takes over when it
//! lapses.
//!
//! Time is always an input: the schedule is computed from `now`, so it is tested with a
//! manual clock. The work of a run (the engine) is not here: see `crate::jobs`.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use super::{App, AppError, Caller};
use crate::catalog::{
    AgencyId, NewPlan, NewRun, PlanId, PlanRecord, RequestId, RunEnd, RunId, RunRecord, ServerId,
};
use crate::workflow::{Role, StepNumber, SystemAction};

/// Who may create and steer plans.
const PLAN_ROLES: [Role; 3] = [Role::KasiInfras, Role::Petugas, Role::Admin];

/// Most missed slots examined when catching up (a plan down for years still catches up
/// once; this only bounds the loop).
const MAX_CATCH_UP_SLOTS: usize = 100_000;

/// What a plan backs up, when, and what it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Absolute paths: on the daemon's host, or on `server`'s when the plan names one.
    pub paths: Vec<String>,
    /// The colocated server whose agent reads the paths; none for the daemon's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerId>,
    /// Exclude globs: without `/` a name anywhere, with `/` a path from the root; what
    /// is below a matched directory is left out too (restic's syntax for a plan on a
    /// restic repository).
    #[serde(default)]
    pub excludes: Vec<String>,
    /// A directory holding a file of one of these names keeps only that file; the rest
    /// of what it holds is left out: `NAME`, or `NAME:HEADER` for a file that must start
    /// with HEADER (restic's `--exclude-if-present`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
    /// Directories tagged as caches (`CACHEDIR.TAG` with its signature) keep only their
    /// tag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_caches: bool,
    /// Regular files larger than this many bytes are left out (restic's
    /// `--exclude-larger-than`); none for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_larger_than: Option<u64>,
    /// Backup schedule: a cron expression of 5 fields (minute hour day month weekday) or 6
    /// (with seconds first), such as `0 2 * * *` for 02:00 every day.
    pub schedule: String,
    /// Time zone of the schedules (IANA name).
    #[serde(default = "jakarta")]
    pub time_zone: String,
    /// What retention keeps.
    #[serde(default)]
    pub retention: Retention,
    /// When retention (forget + prune) runs; none for never.
    #[serde(default)]
    pub retention_schedule: Option<String>,
    /// When verification runs; none for never.
    #[serde(default)]
    pub verify_schedule: Option<String>,
    /// Verification reads 1/N of the data per run, so N runs read it all.
    #[serde(default = "seven")]
    pub verify_parts: u32,
    /// When a restore drill runs (the latest snapshot restored to a scratch directory
    /// and every file verified); none for never.
    #[serde(default)]
    pub drill_schedule: Option<String>,
    /// When the plan's new snapshots are copied to the agency's replica repository (and
    /// read back to verify them); none for never. Needs `[repositories] replica_root`.
    #[serde(default)]
    pub replicate_schedule: Option<String>,
    /// The hours backups may run in; a backup due outside waits for the window to open,
    /// and one still going when it closes is stopped at a safe point.
    #[serde(default)]
    pub window: Option<Window>,
    /// Most bytes per second a backup writes to the repository (KiB/s); none for no
    /// limit.
    #[serde(default)]
    pub bandwidth_limit_kib: Option<u64>,
    /// Where the chunks of a plan read by an agent are compressed: on the agent (the
    /// default: less on the wire, and the daemon's CPU stays free for other agencies)
    /// or on the daemon (the agency's server only reads, names and sends, for a busy
    /// production server on the data center's own network).
    #[serde(default, skip_serializing_if = "CompressOn::is_agent")]
    pub compress_on: CompressOn,
    /// An existing restic repository the plan backs up to, through the `restic` binary,
    /// instead of the agency's cadang repository; none for cadang's own engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restic: Option<ResticTarget>,
    /// A program run before each backup on the host the plan reads (a database dump to
    /// a file under the plan's paths, a file system snapshot); its failure fails the run
    /// and nothing is read. See `crate::hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_backup: Option<BackupProgram>,
    /// A program run on the same host once the backup has read what it reads, whatever
    /// the outcome (told in `CADANG_BACKUP_RESULT`): the file system snapshot released,
    /// the dump removed. Its failure is recorded with the run; the backup stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_backup: Option<BackupProgram>,
}

/// A plan's before- or after-backup program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupProgram {
    /// The program, by absolute path, and its arguments; no shell.
    pub command: Vec<String>,
    /// Seconds it may run before it is killed and the run fails.
    #[serde(default = "an_hour")]
    pub timeout_secs: u64,
}

fn an_hour() -> u64 {
    3600
}

/// Which side compresses the chunks of a plan read by an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressOn {
    /// The agent compresses what it sends; the daemon decompresses to check it.
    #[default]
    Agent,
    /// The agent sends chunks as they are; the daemon compresses what it stores.
    Daemon,
}

impl CompressOn {
    fn is_agent(&self) -> bool {
        *self == CompressOn::Agent
    }
}

/// An existing restic repository a plan adopts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResticTarget {
    /// Where it is, as restic names it: a local path, `s3:…`, `rest:…`, `sftp:…`.
    pub repository: String,
    /// Its password, when a plan is created: the daemon seals it into the catalog's
    /// secrets and keeps only the reference. Never stored or shown in clear.
    #[serde(default, skip_serializing)]
    pub password: Option<super::SecretString>,
    /// The sealed password's row in the catalog's secrets (set by the daemon).
    #[serde(default)]
    pub password_secret: Option<crate::catalog::SecretId>,
    /// The repository backend's environment, when a plan is created: `NAME=value`
    /// lines, such as `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for an `s3:`
    /// repository whose credentials are not the daemon's. Sealed like the password;
    /// never stored or shown in clear.
    #[serde(default, skip_serializing)]
    pub env: Option<super::SecretString>,
    /// The sealed environment's row in the catalog's secrets (set by the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_secret: Option<crate::catalog::SecretId>,
}

/// Two targets are the same repository with the same stored secrets; secrets in
/// transit are not part of a plan's identity.
impl PartialEq for ResticTarget {
    fn eq(&self, other: &Self) -> bool {
        self.repository == other.repository
            && self.password_secret == other.password_secret
            && self.env_secret == other.env_secret
    }
}

/// Most variables in a restic repository's backend environment.
const MAX_RESTIC_ENV: usize = 64;

/// Variables the adapter sets itself, from the plan's location and password.
const RESERVED_RESTIC_ENV: [&str; 3] = ["RESTIC_REPOSITORY", "RESTIC_PASSWORD", "RESTIC_FROM_"];

/// Reads a restic repository's backend environment: `NAME=value` lines; blank lines,
/// `#` comments and an `export ` prefix are allowed. Errors name the line and the
/// variable, never a value (values are credentials).
///
/// # Errors
/// [`AppError::InvalidInput`] for a malformed line or name, a variable the daemon sets
/// itself (`RESTIC_REPOSITORY*`, `RESTIC_PASSWORD*`, `RESTIC_FROM_*`), a name given
/// twice, or more than 64 variables.
pub fn parse_restic_env(text: &str) -> Result<Vec<(String, String)>, AppError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            return Err(AppError::invalid(format!(
                "line {number} of the restic environment is not NAME=value"
            )));
        };
        let name = name.trim();
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.len() <= 128;
        if !valid {
            return Err(AppError::invalid(format!(
                "line {number} of the restic environment: a variable name is letters, digits and `_`"
            )));
        }
        if RESERVED_RESTIC_ENV
            .iter()
            .any(|reserved| name.starts_with(reserved))
        {
            return Err(AppError::invalid(format!(
                "the restic environment sets {name}, which the daemon sets itself from the plan's repository and password"
            )));
        }
        if env.iter().any(|(seen, _)| seen == name) {
            return Err(AppError::invalid(format!(
                "the restic environment sets {name} twice"
            )));
        }
        if value.contains('\0') {
            return Err(AppError::invalid(format!(
                "the restic environment's {name} holds a NUL byte"
            )));
        }
        env.push((name.to_owned(), value.to_owned()));
        if env.len() > MAX_RESTIC_ENV {
            return Err(AppError::invalid(format!(
                "the restic environment has more than {MAX_RESTIC_ENV} variables"
            )));
        }
    }
    Ok(env)
}

impl Eq for ResticTarget {}

/// A daily backup window in the plan's time zone, such as 22:00–05:00 (crossing
/// midnight is allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Opens at (HH:MM).
    pub start: String,
    /// Closes at (HH:MM).
    pub end: String,
}

/// Whether a window is open at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Open until the instant given.
    Open {
        /// When it closes.
        closes_at: DateTime<Utc>,
    },
    /// Closed until the instant given.
    Closed {
        /// When it opens.
        opens_at: DateTime<Utc>,
    },
}

impl Window {
    fn times(&self) -> Result<(chrono::NaiveTime, chrono::NaiveTime), AppError> {
        let parse = |text: &str, which: &str| {
            chrono::NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                AppError::invalid(format!(
                    "window {which} `{text}` is not a time of day as HH:MM, such as 22:00"
                ))
            })
        };
        let (start, end) = (parse(&self.start, "start")?, parse(&self.end, "end")?);
        if start == end {
            return Err(AppError::invalid(
                "a window must not start and end at the same time (omit it to allow backups at any hour)",
            ));
        }
        Ok((start, end))
    }

    /// Whether the window is open at `now` in time zone `zone`, and until when.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] for a malformed window or zone.
    pub fn state(&self, zone: &str, now: DateTime<Utc>) -> Result<WindowState, AppError> {
        let (start, end) = self.times()?;
        let zone: Tz = zone
            .parse()
            .map_err(|_| AppError::invalid(format!("unknown time zone `{zone}`")))?;
        let local = now.with_timezone(&zone);
        // The instant of a local time on a local date (the earlier one when a clock
        // change makes it ambiguous, an hour later when it does not exist).
        let at = |date: chrono::NaiveDate, time: chrono::NaiveTime| {
            let naive = date.and_time(time);
            naive
                .and_local_timezone(zone)
                .earliest()
                .or_else(|| {
                    (naive + TimeDelta::hours(1))
                        .and_local_timezone(zone)
                        .earliest()
                })
                .map(|at| at.with_timezone(&Utc))
                .ok_or_else(|| AppError::invalid("the window's time does not exist in its zone"))
        };
        let today = local.date_naive();
        let yesterday = today.pred_opt().unwrap_or(today);
        let tomorrow = today.succ_opt().unwrap_or(today);
        // Occurrences that could contain `now`: the one opening yesterday and today.
        for day in [yesterday, today] {
            let opens = at(day, start)?;
            let closes = if end > start {
                at(day, end)?
            } else {
                at(day.succ_opt().unwrap_or(day), end)?
            };
            if opens <= now && now < closes {
                return Ok(WindowState::Open { closes_at: closes });
            }
        }
        let opens_today = at(today, start)?;
        Ok(WindowState::Closed {
            opens_at: if opens_today > now {
                opens_today
            } else {
                at(tomorrow, start)?
            },
        })
    }
}

fn jakarta() -> String {
    "Asia/Jakarta".to_owned()
}

fn seven() -> u32 {
    7
}

/// The tag of a held snapshot (`HoldSnapshot`, `cadang restore-job hold`): no plan's
/// retention removes it, whatever its `keep_tags`.
pub const HOLD_TAG: &str = "hold";

/// Snapshots to keep (restic's policy; days are days in the plan's time zone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// The newest N.
    pub last: u32,
    /// One per hour, N hours.
    pub hourly: u32,
    /// One per day, N days.
    pub daily: u32,
    /// One per week, N weeks.
    pub weekly: u32,
    /// One per month, N months.
    pub monthly: u32,
    /// One per year, N years.
    pub yearly: u32,
    /// Snapshots carrying all the tags of any of these lists (`legal`, `legal,2026`)
    /// are kept whatever the counts say, as are held ones ([`HOLD_TAG`]) always. Tags
    /// alone are not a policy (they would remove every other snapshot).
    pub keep_tags: Vec<String>,
}

impl Retention {
    /// Whether it keeps nothing (retention then refuses to run).
    pub fn is_empty(&self) -> bool {
        self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly == 0
    }
}

/// What a schedule has due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The slot to run now.
    pub slot: DateTime<Utc>,
    /// Whether earlier slots were missed (the run is a catch-up).
    pub missed: bool,
    /// The next slot after now.
    pub next: DateTime<Utc>,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses a cron expression in a time zone.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] naming the expression.
    pub fn parse(expression: &str, zone: &str) -> Result<Schedule, AppError> {
        let cron: Cron = expression.parse().map_err(|error| {
            AppError::invalid(format!(
                "schedule `{expression}` is not a cron expression ({error}); for example `0 2 * * *` is 02:00 daily"
            ))
        })?;
        let zone: Tz = zone.parse().map_err(|_| {
            AppError::invalid(format!(
                "unknown time zone `{zone}`; for example Asia/Jakarta"
            ))
        })?;
        Ok(Schedule { cron, zone })
    }

    /// The first slot strictly after `after`.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] when the expression never fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, AppError> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|error| AppError::invalid(format!("the schedule never fires: {error}")))
    }

    /// Given the stored next slot, what is due at `now`: `None` when nothing; else the
    /// slot to run (the latest one passed: missed slots are caught up once, not once
    /// each), whether slots were missed, and the next slot after `now`.
    ///
    /// # Errors
    /// As [`Schedule::next_after`].
    pub fn due(&self, next: DateTime<Utc>, now: DateTime<Utc>) -> Result<Option<Due>, AppError> {
        if next > now {
            return Ok(None);
        }
        let mut latest = next;
        let mut missed = false;
        for _ in 0..MAX_CATCH_UP_SLOTS {
            let following = self.next_after(latest)?;
            if following > now {
                return Ok(Some(Due {
                    slot: latest,
                    missed,
                    next: following,
                }));
            }
            latest = following;
            missed = true;
        }
        Ok(Some(Due {
            slot: latest,
            missed: true,
            next: self.next_after(now)?,
        }))
    }
}

/// Most exclude patterns a plan or a restore may carry.
const MAX_EXCLUDES: usize = 1024;

/// Checks exclude patterns as the engine and the agent will read them (the syntax of
/// `cadang backup --exclude`), so that a malformed one is refused when it is written
/// rather than failing every run.
///
/// # Errors
/// [`AppError::InvalidInput`] naming the pattern.
pub(crate) fn check_excludes(patterns: &[String]) -> Result<(), AppError> {
    if patterns.len() > MAX_EXCLUDES {
        return Err(AppError::invalid(format!(
            "at most {MAX_EXCLUDES} exclude patterns"
        )));
    }
    if let Some(pattern) = patterns
        .iter()
        .find(|pattern| pattern.len() > 4096 || pattern.contains('\0'))
    {
        return Err(AppError::invalid(format!(
            "exclude pattern `{}`: longer than 4096 bytes or holds a NUL",
            pattern.escape_debug()
        )));
    }
    crate::engine::backup::build_excludes(patterns)
        .map(drop)
        .map_err(|error| AppError::invalid(error.to_string()))
}

impl PlanSpec {
    /// Checks the specification.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), AppError> {
        if self.paths.is_empty() {
            return Err(AppError::invalid(
                "a plan needs at least one path to back up",
            ));
        }
        for path in &self.paths {
            if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
                return Err(AppError::invalid(format!(
                    "path `{path}` must be absolute and without `..`"
                )));
            }
        }
        Schedule::parse(&self.schedule, &self.time_zone)?;
        for expression in [
            &self.retention_schedule,
            &self.verify_schedule,
            &self.drill_schedule,
            &self.replicate_schedule,
        ]
        .into_iter()
        .flatten()
        {
            Schedule::parse(expression, &self.time_zone)?;
        }
        if self.retention_schedule.is_some() && self.retention.is_empty() {
            return Err(AppError::invalid(
                "a retention schedule needs a retention policy that keeps something (for example retention.daily = 30)",
            ));
        }
        if !(1..=365).contains(&self.verify_parts) {
            return Err(AppError::invalid("verify_parts must be between 1 and 365"));
        }
        if let Some(window) = &self.window {
            window.times()?;
        }
        if self.bandwidth_limit_kib == Some(0) {
            return Err(AppError::invalid(
                "bandwidth_limit_kib must be at least 1 (omit it for no limit)",
            ));
        }
        if self.compress_on == CompressOn::Daemon
            && (self.server.is_none() || self.restic.is_some())
        {
            return Err(AppError::invalid(
                "compress_on = daemon applies to plans whose agent sends chunks to cadang's engine (--on-server, not a restic repository)",
            ));
        }
        for (stage, field, program) in [
            (
                crate::hook::Stage::Before,
                "before_backup",
                &self.before_backup,
            ),
            (
                crate::hook::Stage::After,
                "after_backup",
                &self.after_backup,
            ),
        ] {
            let Some(program) = program else { continue };
            crate::hook::validate(stage, &program.command)
                .map_err(|e| AppError::invalid(e.to_string()))?;
            if !(1..=86_400).contains(&program.timeout_secs) {
                return Err(AppError::invalid(format!(
                    "{field}.timeout_secs must be between 1 and 86400"
                )));
            }
        }
        if self.restic.is_none() {
            check_excludes(&self.excludes)?;
        }
        for list in &self.retention.keep_tags {
            let tags: Vec<&str> = list.split(',').map(str::trim).collect();
            if tags.iter().any(|tag| {
                tag.is_empty() || tag.chars().any(|c| c.is_whitespace() || c.is_control())
            }) {
                return Err(AppError::invalid(format!(
                    "retention.keep_tags `{list}`: tags separated by commas, none empty or with spaces"
                )));
            }
        }
        if self.exclude_if_present.len() > 64 {
            return Err(AppError::invalid("at most 64 exclude_if_present markers"));
        }
        self.markers().map_err(AppError::invalid)?;
        if self.exclude_larger_than == Some(0) {
            return Err(AppError::invalid(
                "exclude_larger_than must be at least 1 byte (omit it for no limit)",
            ));
        }
        if let Some(restic) = &self.restic {
            if restic.repository.trim().is_empty() {
                return Err(AppError::invalid(
                    "restic.repository must name the restic repository (a path, s3:…, rest:…)",
                ));
            }
            if self.server.is_some() {
                return Err(AppError::invalid(
                    "a plan on a restic repository backs up the daemon's host: restic runs there, not through an agent (omit server)",
                ));
            }
        }
        Ok(())
    }

    /// What leaves a directory out: `exclude_if_present`, then the cache directory tag
    /// when `exclude_caches` is set.
    ///
    /// # Errors
    /// A marker that cannot be read, named.
    pub fn markers(&self) -> Result<Vec<crate::engine::backup::ExcludeMarker>, String> {
        crate::engine::backup::exclude_markers(&self.exclude_if_present, self.exclude_caches)
            .map_err(|error| error.to_string())
    }

    /// The five schedules: backup, retention, verification, drill, replication.
    fn schedules(&self) -> Result<[Option<Schedule>; 5], AppError> {
        let parse = |expression: &Option<String>| {
            expression
                .as_deref()
                .map(|expression| Schedule::parse(expression, &self.time_zone))
                .transpose()
        };
        Ok([
            Some(Schedule::parse(&self.schedule, &self.time_zone)?),
            parse(&self.retention_schedule)?,
            parse(&self.verify_schedule)?,
            parse(&self.drill_schedule)?,
            parse(&self.replicate_schedule)?,
        ])
    }
}

/// A plan as the application shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanView {
    /// Id.
    pub id: PlanId,
    /// Agency.
    pub agency_id: AgencyId,
    /// Backup request.
    pub request_id: Option<RequestId>,
    /// Name.
    pub name: String,
    /// Status.
    pub status: String,
    /// Specification.
    pub spec: PlanSpec,
    /// Next backup, retention, verification, drill and replication slots.
    pub next: [Option<DateTime<Utc>>; 5],
}

fn view(record: &PlanRecord) -> Result<PlanView, AppError> {
    Ok(PlanView {
        id: record.id,
        agency_id: record.agency_id,
        request_id: record.request_id,
        name: record.name.clone(),
        status: record.status.clone(),
        spec: spec_of(record)?,
        next: [
            record.next_due_at,
            record.next_retention_at,
            record.next_verify_at,
            record.next_drill_at,
            record.next_replicate_at,
        ],
    })
}

/// The specification of a stored plan.
///
/// # Errors
/// [`AppError::Internal`] when the stored JSON does not decode.
pub fn spec_of(record: &PlanRecord) -> Result<PlanSpec, AppError> {
    serde_json::from_str(&record.spec_json)
        .map_err(|error| AppError::internal(format!("plan {}: {error}", record.id)))
}

/// The plan a restore reads instead of a server's cadang snapshots: `agency`'s own, on
/// an existing restic repository.
///
/// # Errors
/// [`AppError::NotFound`]; [`AppError::Forbidden`] for another agency's plan;
/// [`AppError::InvalidInput`] for a plan on a cadang repository (whose snapshots are
/// restored by server).
pub(super) async fn restic_source(
    tx: &mut crate::catalog::Tx,
    plan: PlanId,
    agency: AgencyId,
) -> Result<PlanRecord, AppError> {
    let record = tx.plan(plan).await?;
    if record.agency_id != agency {
        return Err(AppError::forbidden(format!(
            "plan {plan} belongs to another agency: a restore never crosses agencies"
        )));
    }
    if spec_of(&record)?.restic.is_none() {
        return Err(AppError::invalid(format!(
            "plan {plan} is on the agency's cadang repository: its snapshots are restored by server (leave the plan out)"
        )));
    }
    Ok(record)
}

const KINDS: [&str; 5] = ["backup", "retention", "verify", "drill", "replicate"];

/// A run claimed by a daemon, with what it needs to carry it out.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// The run.
    pub run: RunRecord,
    /// Its plan.
    pub plan: PlanRecord,
    /// The plan's agency code (names its repository).
    pub agency_code: String,
    /// When the plan's backup window closes (the run is stopped then), if it has one.
    pub window_closes_at: Option<DateTime<Utc>>,
    /// How many runs of this kind the plan had before this one (verification reads
    /// part `sequence mod t + 1` of `t`, so consecutive runs cover every pack).
    pub sequence: u64,
}

/// How long a plan action may stay claimed before it is taken for abandoned (applying
/// one takes milliseconds; a claim this old belongs to a daemon that stopped).
const STALE_CLAIM: TimeDelta = TimeDelta::minutes(10);

/// How long a backup whose agent is connected to another daemon (or none) waits before
/// it is offered again.
const AGENT_ELSEWHERE_RETRY: TimeDelta = TimeDelta::seconds(5);

/// Most claimed runs put back for a closed window in one claim.
const MAX_DEFERRALS: usize = 20;

impl App {
    /// Creates a plan for an active backup request (procedure B, from the clarification
    /// at B2). It is scheduled only when the request's steps start it.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for a bad specification or a
    /// request that is not an active backup request; [`AppError::Conflict`] for a taken
    /// name.
    pub async fn create_plan(
        &self,
        username: &str,
        request: RequestId,
        name: &str,
        spec: PlanSpec,
        now: DateTime<Utc>,
    ) -> Result<PlanView, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&PLAN_ROLES, "create backup plans")?;
        let name = super::required("the plan name", name)?;
        spec.validate()?;
        let mut spec = spec;
        if let Some(restic) = &mut spec.restic {
            if restic.password_secret.is_some() {
                return Err(AppError::invalid(
                    "restic.password_secret is set by the daemon; give restic.password",
                ));
            }
            let password = restic
                .password
                .take()
                .filter(|password| !password.is_blank())
                .ok_or_else(|| {
                    AppError::invalid(
                        "a plan on a restic repository needs its password (restic.password)",
                    )
                })?;
            restic.password_secret = Some(
                self.sealer()
                    .store(&mut work.tx, "restic_password", &password, now)
                    .await?,
            );
            if restic.env_secret.is_some() {
                return Err(AppError::invalid(
                    "restic.env_secret is set by the daemon; give restic.env",
                ));
            }
            if let Some(env) = restic.env.take().filter(|env| !env.is_blank()) {
                parse_restic_env(env.expose())?;
                restic.env_secret = Some(
                    self.sealer()
                        .store(&mut work.tx, "restic_env", &env, now)
                        .await?,
                );
            }
        }
        let record = work.tx.request(request).await?;
        if record.state.procedure.as_str() != "backup_request" || record.state.is_finished() {
            return Err(AppError::invalid(format!(
                "request {request} is not an active backup request"
            )));
        }
        if let Some(server) = spec.server {
            let server_record = work.tx.server(server).await?;
            if server_record.agency_id != record.agency_id {
                return Err(AppError::forbidden(format!(
                    "server {server} belongs to another agency than request {request}"
                )));
            }
        }
        let spec_json = serde_json::to_string(&spec)
            .map_err(|error| AppError::internal(format!("cannot encode a plan: {error}")))?;
        let plan = work
            .tx
            .insert_plan(
                &NewPlan {
                    agency_id: record.agency_id,
                    request_id: Some(request),
                    name,
                    spec_json,
                    created_by: username.to_owned(),
                },
                now,
            )
            .await?;
        work.audit("plan.create", "plan", plan.id).after = Some(serde_json::json!({
            "request": request, "agency": plan.agency_id, "name": plan.name, "spec": spec,
        }));
        work.commit().await?;
        view(&plan)
    }

    /// The password of a plan's restic repository, opened from the catalog's sealed
    /// secrets for the daemon that runs it; `None` for a plan on cadang's own engine.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; an internal error when the secret does not open (altered,
    /// or sealed by another master key).
    pub async fn restic_password(
        &self,
        spec: &PlanSpec,
    ) -> Result<Option<super::SecretString>, AppError> {
        let Some(restic) = &spec.restic else {
            return Ok(None);
        };
        let secret = restic.password_secret.ok_or_else(|| {
            AppError::invalid("the plan's restic repository has no password on file")
        })?;
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.secret(secret).await?;
        Ok(Some(self.sealer().open(&record)?))
    }

    /// The backend environment of a plan's restic repository, opened from the catalog's
    /// sealed secrets; empty when the plan gave none.
    ///
    /// # Errors
    /// As [`App::restic_password`]; [`AppError::InvalidInput`] when the stored text no
    /// longer parses.
    pub async fn restic_env(&self, spec: &PlanSpec) -> Result<Vec<(String, String)>, AppError> {
        let Some(secret) = spec.restic.as_ref().and_then(|restic| restic.env_secret) else {
            return Ok(Vec::new());
        };
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.secret(secret).await?;
        parse_restic_env(self.sealer().open(&record)?.expose())
    }

    /// Where the restic repository of the plan a restore reads is, its password and its
    /// backend environment: the daemon's own lookup when it carries a run or restore out
    /// (who may restore was decided when the restore was queued); the plan must still be
    /// `agency`'s and on restic.
    ///
    /// # Errors
    /// As [`restic_source`]; [`AppError::InvalidInput`] without a password on file.
    pub async fn restic_repository_of(
        &self,
        plan: PlanId,
        agency: AgencyId,
    ) -> Result<(String, super::SecretString, Vec<(String, String)>), AppError> {
        let record = {
            let mut tx = self.catalog().begin_read().await?;
            restic_source(&mut tx, plan, agency).await?
        };
        let spec = spec_of(&record)?;
        let password = self.restic_password(&spec).await?.ok_or_else(|| {
            AppError::invalid(format!("plan {plan} has no restic repository on file"))
        })?;
        let env = self.restic_env(&spec).await?;
        let location = spec
            .restic
            .map(|restic| restic.repository)
            .ok_or_else(|| AppError::invalid(format!("plan {plan} is not on restic")))?;
        Ok((location, password, env))
    }

    /// The plans of `agency` on restic repositories that may hold `server`'s files: its
    /// own, and those run on the daemon's host (which read what they are given). An
    /// erasure does not reach them (restic 0.14 cannot rewrite a snapshot).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn restic_plans_of_server(
        &self,
        agency: AgencyId,
        server: ServerId,
    ) -> Result<Vec<PlanId>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx
            .plans(Some(agency))
            .await?
            .iter()
            .filter(|record| {
                spec_of(record).is_ok_and(|spec| {
                    spec.restic.is_some() && spec.server.is_none_or(|on| on == server)
                })
            })
            .map(|record| record.id)
            .collect())
    }

    /// Plans the caller may see (of one agency, or all).
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for another agency.
    pub async fn plans_for(
        &self,
        caller: &Caller,
        agency: Option<AgencyId>,
    ) -> Result<Vec<PlanView>, AppError> {
        if let Some(agency) = agency {
            caller.check_agency(agency, &format!("agency {agency}"))?;
        }
        let agency = caller.confined_to().or(agency);
        let mut tx = self.catalog().begin_read().await?;
        tx.plans(agency).await?.iter().map(view).collect()
    }

    /// A plan with its latest runs, if the caller may see it.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`].
    pub async fn plan_for(
        &self,
        caller: &Caller,
        id: PlanId,
        runs: u32,
    ) -> Result<(PlanView, Vec<RunRecord>), AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let plan = tx.plan(id).await?;
        caller.check_agency(plan.agency_id, &format!("plan {id}"))?;
        let runs = tx.runs(Some(id), None, runs).await?;
        Ok((view(&plan)?, runs))
    }

    /// Runs the caller may see, newest first.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`] for an unknown plan.
    pub async fn runs_for(
        &self,
        caller: &Caller,
        plan: Option<PlanId>,
        agency: Option<AgencyId>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        if let Some(plan) = plan {
            let plan = tx.plan(plan).await?;
            caller.check_agency(plan.agency_id, &format!("plan {}", plan.id))?;
        }
        if let Some(agency) = agency {
            caller.check_agency(agency, &format!("agency {agency}"))?;
        }
        let agency = if plan.is_some() {
            None
        } else {
            caller.confined_to().or(agency)
        };
        Ok(tx
            .runs(plan, agency, limit.clamp(1, super::MAX_PAGE))
            .await?)
    }

    /// A run, if the caller may see it.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`].
    pub async fn run_for(&self, caller: &Caller, id: RunId) -> Result<RunRecord, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let run = tx.run(id).await?;
        let plan = tx.plan(run.plan_id).await?;
        caller.check_agency(plan.agency_id, &format!("run {id}"))?;
        Ok(run)
    }

    /// Queues a backup of a plan now (`ad_hoc`).
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::Conflict`] for a stopped plan or a run
    /// already queued for this instant.
    pub async fn run_now(
        &self,
        username: &str,
        plan: PlanId,
        now: DateTime<Utc>,
    ) -> Result<RunId, AppError> {
        self.run_now_kind(username, plan, "backup", now).await
    }

    /// Queues a run of one kind (`backup`, `verify`, `retention`, `drill`, `replicate`)
    /// now.
    ///
    /// # Errors
    /// As [`App::run_now`]; [`AppError::InvalidInput`] for an unknown kind, or
    /// retention without a policy that keeps something.
    pub async fn run_now_kind(
        &self,
        username: &str,
        plan: PlanId,
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<RunId, AppError> {
        let kind: &'static str = KINDS
            .iter()
            .chain(std::iter::once(&"import"))
            .find(|known| **known == kind)
            .ok_or_else(|| {
                AppError::invalid(format!(
                    "unknown run kind `{kind}`; one of backup, retention, verify, drill, replicate, import"
                ))
            })?;
        let mut work = self.work(username, now).await?;
        work.require(&PLAN_ROLES, "run backup plans")?;
        let record = work.tx.plan_for_update(plan).await?;
        if record.status == "stopped" {
            return Err(AppError::Conflict(format!("plan {plan} is stopped")));
        }
        if kind == "import" && spec_of(&record)?.restic.is_none() {
            return Err(AppError::invalid(format!(
                "plan {plan} is on a cadang repository: `import` lists the snapshots of an adopted restic repository"
            )));
        }
        if kind == "retention" && spec_of(&record)?.retention.is_empty() {
            return Err(AppError::invalid(format!(
                "plan {plan} has no retention policy that keeps something; retention would remove every snapshot"
            )));
        }
        let id = work
            .tx
            .insert_run(
                &NewRun {
                    plan_id: plan,
                    kind,
                    trigger: "ad_hoc",
                    due_at: now,
                    request_id: None,
                    step: None,
                },
                now,
            )
            .await?
            .ok_or_else(|| {
                AppError::Conflict(format!(
                    "plan {plan} already has a run queued for this instant"
                ))
            })?;
        work.audit("plan.run_now", "plan", plan).after =
            Some(serde_json::json!({ "run": id, "kind": kind }));
        work.commit().await?;
        Ok(id)
    }

    /// Pauses (`false`) or resumes (`true`) an active plan. Resuming schedules from now:
    /// the slots missed while paused are not caught up (that is what pausing means).
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::Conflict`] when the plan is not active
    /// (pausing) or not paused (resuming).
    pub async fn set_plan_running(
        &self,
        username: &str,
        plan: PlanId,
        running: bool,
        now: DateTime<Utc>,
    ) -> Result<PlanView, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&PLAN_ROLES, "pause or resume backup plans")?;
        let record = work.tx.plan_for_update(plan).await?;
        let (from, to, next) = if running {
            ("paused", "active", next_slots(&spec_of(&record)?, now)?)
        } else {
            ("active", "paused", [None; 5])
        };
        if record.status != from {
            return Err(AppError::Conflict(format!(
                "plan {plan} is {}, not {from}",
                record.status
            )));
        }
        work.tx.update_plan(plan, to, next, now).await?;
        work.audit(
            if running { "plan.resume" } else { "plan.pause" },
            "plan",
            plan,
        )
        .after = Some(serde_json::json!({ "status": to }));
        let updated = work.tx.plan(plan).await?;
        work.commit().await?;
        view(&updated)
    }

    /// Queues the runs that are due at `now` (the scheduler calls this every tick, from
    /// every daemon). Each plan is locked while its slots advance, and a slot's run is
    /// unique, so every due run is queued exactly once. Returns the runs queued.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn queue_due_runs(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, AppError> {
        let due = {
            let mut tx = self.catalog().begin_read().await?;
            tx.due_plans(now, 500).await?
        };
        let mut queued = Vec::new();
        for plan in due {
            let mut tx = self.catalog().begin().await?;
            let record = tx.plan_for_update(plan).await?;
            if record.status != "active" {
                continue;
            }
            let spec = match spec_of(&record) {
                Ok(spec) => spec,
                Err(error) => {
                    tracing::error!(plan = %plan, %error, "plan cannot be scheduled");
                    continue;
                }
            };
            let schedules = spec.schedules()?;
            let mut next = [
                record.next_due_at,
                record.next_retention_at,
                record.next_verify_at,
                record.next_drill_at,
                record.next_replicate_at,
            ];
            for (slot, schedule) in schedules.iter().enumerate() {
                let (Some(schedule), Some(stored)) = (schedule, next[slot]) else {
                    continue;
                };
                if let Some(due) = schedule.due(stored, now)? {
                    let following = due.next;
                    let run = NewRun {
                        plan_id: plan,
                        kind: KINDS[slot],
                        trigger: if due.missed { "catch_up" } else { "schedule" },
                        due_at: due.slot,
                        request_id: None,
                        step: None,
                    };
                    if let Some(id) = tx.insert_run(&run, now).await? {
                        queued.push(id);
                    }
                    next[slot] = Some(following);
                }
            }
            tx.update_plan(plan, &record.status, next, now).await?;
            tx.commit().await?;
        }
        Ok(queued)
    }

    /// Claims one run for `owner` with a lease of `lease`, if any is claimable. A backup
    /// whose plan's window is closed goes back to the queue until the window opens.
    ///
    /// # Errors
    /// Catalog errors (a simultaneous claim of the same plan is reported as nothing).
    pub async fn claim_run(
        &self,
        owner: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Option<ClaimedRun>, AppError> {
        self.claim_run_here(owner, lease, now, &|_| false, TimeDelta::zero())
            .await
    }

    /// Claims the next due run like [`App::claim_run`], where `here` says which servers'
    /// agents are connected to this daemon: a backup through an agent connected
    /// elsewhere goes back to the queue for a few seconds (the daemon holding the agent
    /// takes it), and one whose agent stays away for `agent_wait` fails with the reason.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn claim_run_here(
        &self,
        owner: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
        here: &(dyn Fn(ServerId) -> bool + Sync),
        agent_wait: TimeDelta,
    ) -> Result<Option<ClaimedRun>, AppError> {
        for _ in 0..MAX_DEFERRALS {
            let mut tx = self.catalog().begin().await?;
            let run = match tx.claim_run(owner, now + lease, now).await {
                Ok(Some(run)) => run,
                Ok(None) => return Ok(None),
                // Another daemon started a run of the same plan at this instant: the
                // unique index refused ours. Nothing was claimed; the next tick looks
                // again.
                Err(crate::catalog::CatalogError::Conflict(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            let plan = tx.plan(run.plan_id).await?;
            let agency = tx.agency(plan.agency_id).await?;
            let mut window_closes_at = None;
            if run.kind == "backup"
                && let Ok(spec) = spec_of(&plan)
                && let Some(window) = &spec.window
            {
                match window.state(&spec.time_zone, now)? {
                    WindowState::Open { closes_at } => window_closes_at = Some(closes_at),
                    WindowState::Closed { opens_at } => {
                        tx.defer_run(run.id, owner, opens_at).await?;
                        tx.commit().await?;
                        tracing::info!(run = %run.id, plan = %plan.id, %opens_at, "backup window closed; the run waits for it");
                        continue;
                    }
                }
            }
            if run.kind == "backup"
                && let Ok(spec) = spec_of(&plan)
                && let Some(server) = spec.server
                && !here(server)
            {
                if now - run.queued_at >= agent_wait {
                    tx.commit().await?;
                    let end = RunEnd {
                        status: "failed",
                        stats_json: "{}".into(),
                        snapshot_id: None,
                        error: Some(format!(
                            "the agent of server {server} did not connect within {} minutes of the run being due",
                            agent_wait.num_minutes()
                        )),
                    };
                    self.finish_run(run.id, owner, &end, now).await?;
                    continue;
                }
                tx.defer_run(run.id, owner, now + AGENT_ELSEWHERE_RETRY)
                    .await?;
                tx.commit().await?;
                continue;
            }
            let sequence = tx
                .count_earlier_runs(plan.id, &run.kind, run.due_at)
                .await?;
            tx.commit().await?;
            return Ok(Some(ClaimedRun {
                run,
                plan,
                agency_code: agency.code,
                window_closes_at,
                sequence,
            }));
        }
        Ok(None)
    }

    /// Takes back at once the runs and restores whose daemons are known to be gone:
    /// their leases end now, so the next claims take them over (a backup through an
    /// agent resumes where it stopped) instead of waiting for the leases to lapse.
    /// Only for a daemon that is alone on its catalog (SQLite, whose daemons lock the
    /// catalog file): every other holder of a lease there is a daemon that died (killed,
    /// its host lost power). Returns the runs and restores taken back.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn take_back_work_of_gone_daemons(
        &self,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64), AppError> {
        let mut tx = self.catalog().begin().await?;
        let runs = tx.lapse_run_leases_of_others(owner, now).await?;
        let restores = tx.lapse_restore_leases_of_others(owner, now).await?;
        tx.commit().await?;
        Ok((runs, restores))
    }

    /// Extends a lease; `false` when it was lost (taken over).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn renew_lease(
        &self,
        run: RunId,
        owner: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let mut tx = self.catalog().begin().await?;
        let held = tx.renew_lease(run, owner, now + lease).await?;
        tx.commit().await?;
        Ok(held)
    }

    /// Records the end of a run, and queues its notification when it ended badly, in
    /// one transaction; `false` when the lease was lost and another daemon's result
    /// stands.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn finish_run(
        &self,
        run: RunId,
        owner: &str,
        end: &RunEnd,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let mut tx = self.catalog().begin().await?;
        let recorded = tx.finish_run(run, owner, end, now).await?;
        if recorded && !self.config().notify_channels.is_empty() {
            let run = tx.run(run).await?;
            let plan = tx.plan(run.plan_id).await?;
            let agency = tx.agency(plan.agency_id).await?;
            if let Some(event) = super::notify::run_event(&run, &plan, &agency.code) {
                super::notify::queue_event(&mut tx, &self.config().notify_channels, &event, now)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Carries out the plan actions of procedure B from the outbox: `start_backup_plan`
    /// (B3: the first start runs the plan once; B5: later starts put it on its
    /// schedule) and `stop_backup_plan` (B7: the schedule ends, queued runs are
    /// cancelled, snapshots stay under retention).
    ///
    /// # Errors
    /// Catalog errors.
    /// An action's effect and its `done` mark commit in one transaction, so it is applied
    /// exactly once: an action claimed by a daemon that died before committing is put
    /// back after [`STALE_CLAIM`] and applied by another; a passing failure (the
    /// catalog busy or unreachable) leaves it for the next tick; a permanent one is
    /// recorded `failed` with the reason.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn apply_plan_actions(
        &self,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, AppError> {
        const ACTIONS: [&str; 2] = ["start_backup_plan", "stop_backup_plan"];
        {
            let mut tx = self.catalog().begin().await?;
            let mut released = 0;
            for action in ACTIONS {
                released += tx.release_stale_actions(action, now - STALE_CLAIM).await?;
            }
            tx.commit().await?;
            if released > 0 {
                tracing::warn!(
                    released,
                    "plan actions claimed by a daemon that stopped are put back"
                );
            }
        }
        let jobs = self.claim_actions(worker, &ACTIONS, 50, now).await?;
        let mut applied = 0;
        for job in jobs {
            match self
                .apply_plan_action(worker, job.id, job.request_id, job.step, job.action, now)
                .await
            {
                Ok(()) => applied += 1,
                Err(error @ (AppError::Unavailable(_) | AppError::Internal(_))) => {
                    tracing::warn!(action = %job.id, %error, "plan action not applied; retried on the next tick");
                    let mut tx = self.catalog().begin().await?;
                    tx.release_pending_action(job.id, worker).await?;
                    tx.commit().await?;
                }
                Err(error) => {
                    self.finish_action(worker, job.id, Err(error.to_string()), now)
                        .await?;
                }
            }
        }
        Ok(applied)
    }

    async fn apply_plan_action(
        &self,
        worker: &str,
        job: crate::catalog::PendingActionId,
        request: RequestId,
        step: StepNumber,
        action: SystemAction,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.system_work("scheduler", now).await?;
        let plans = work.tx.plans_of_request(request).await?;
        if plans.is_empty() {
            return Err(AppError::Conflict(format!(
                "request {request} has no backup plan: create one with `cadang plan create --request {request}`, then run it with `cadang plan run-now`"
            )));
        }
        let mut report = Vec::new();
        for plan in plans {
            let plan = work.tx.plan_for_update(plan.id).await?;
            match action {
                // Its first backup, unless one was run by hand already (an `import` of
                // an adopted repository's snapshots is not a backup).
                SystemAction::StartBackupPlan
                    if plan.status == "approved"
                        && work
                            .tx
                            .runs(Some(plan.id), None, 100)
                            .await?
                            .iter()
                            .all(|run| run.kind != "backup") =>
                {
                    let run = work
                        .tx
                        .insert_run(
                            &NewRun {
                                plan_id: plan.id,
                                kind: "backup",
                                trigger: "request",
                                due_at: now,
                                request_id: Some(request),
                                step: Some(i64::from(step.0)),
                            },
                            now,
                        )
                        .await?;
                    report.push(serde_json::json!({ "plan": plan.id, "queued_run": run }));
                }
                SystemAction::StartBackupPlan if plan.status != "stopped" => {
                    let next = next_slots(&spec_of(&plan)?, now)?;
                    work.tx.update_plan(plan.id, "active", next, now).await?;
                    work.audit("plan.activate", "plan", plan.id).after =
                        Some(serde_json::json!({ "request": request, "step": step, "next": next }));
                    report.push(serde_json::json!({ "plan": plan.id, "status": "active", "next_backup": next[0] }));
                }
                SystemAction::StopBackupPlan => {
                    work.tx
                        .update_plan(plan.id, "stopped", [None; 5], now)
                        .await?;
                    let cancelled = work
                        .tx
                        .cancel_queued_runs(
                            plan.id,
                            &format!("the plan was stopped at step {step} of request {request}"),
                            now,
                        )
                        .await?;
                    work.audit("plan.stop", "plan", plan.id).after = Some(
                        serde_json::json!({ "request": request, "step": step, "cancelled_runs": cancelled }),
                    );
                    report.push(serde_json::json!({ "plan": plan.id, "status": "stopped" }));
                }
                _ => report.push(serde_json::json!({ "plan": plan.id, "unchanged": plan.status })),
            }
        }
        let report = serde_json::Value::Array(report);
        // Done in the same transaction as the effect: never applied twice.
        let held = work.tx.pending_action(job).await?;
        if held.claimed_by.as_deref() != Some(worker) {
            return Err(AppError::Conflict(format!(
                "pending action {job} is no longer claimed by {worker}"
            )));
        }
        work.tx
            .finish_pending_action(
                job,
                crate::catalog::PendingStatus::Done,
                &report.to_string(),
                now,
            )
            .await?;
        work.audit("action.finish", "request", request).after = Some(serde_json::json!({
            "pending_action": job, "status": "done", "report": report,
        }));
        work.commit().await?;
        Ok(())
    }
}

/// The first slots after `now` of a plan's schedules.
fn next_slots(spec: &PlanSpec, now: DateTime<Utc>) -> Result<[Option<DateTime<Utc>>; 5], AppError> {
    let schedules = spec.schedules()?;
    let mut next = [None; 5];
    for (slot, schedule) in schedules.iter().enumerate() {
        if let Some(schedule) = schedule {
            next[slot] = Some(schedule.next_after(now)?);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn daily_schedules_fire_in_jakarta_time() {
        let daily = Schedule::parse("0 2 * * *", "Asia/Jakarta").unwrap();
        // 02:00 WIB is 19:00 UTC the day before.
        assert_eq!(
            daily.next_after(at("2026-03-01T12:00:00Z")).unwrap(),
            at("2026-03-01T19:00:00Z")
        );
        assert_eq!(
            daily.next_after(at("2026-03-01T19:00:00Z")).unwrap(),
            at("2026-03-02T19:00:00Z"),
            "strictly after"
        );
    }

    #[test]
    fn restic_backend_environments_parse_and_never_quote_a_value() {
        let env = parse_restic_env(
            "# S3 arsip\n\nexport AWS_ACCESS_KEY_ID=AKIA1\n  AWS_SECRET_ACCESS_KEY=a=b c\nRESTIC_CACHE_DIR=/var/cache/r\n",
        )
        .unwrap();
        assert_eq!(
            env,
            [
                ("AWS_ACCESS_KEY_ID".to_owned(), "AKIA1".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "a=b c".to_owned()),
                ("RESTIC_CACHE_DIR".to_owned(), "/var/cache/r".to_owned()),
            ]
        );
        assert!(parse_restic_env("").unwrap().is_empty());
        let refused = |text: &str, says: &str| {
            let error = parse_restic_env(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
            assert!(!error.contains("sekret-99"), "a value is quoted: {error}");
        };
        refused("AWS_SECRET_ACCESS_KEY sekret-99", "line 1");
        refused("X=1\n9BAD=sekret-99", "line 2");
        refused("BAD-NAME=sekret-99", "letters, digits");
        refused("RESTIC_PASSWORD=sekret-99", "RESTIC_PASSWORD");
        refused("RESTIC_PASSWORD_FILE=sekret-99", "RESTIC_PASSWORD_FILE");
        refused("RESTIC_REPOSITORY=s3:sekret-99", "RESTIC_REPOSITORY");
        refused("RESTIC_FROM_PASSWORD_COMMAND=sekret-99", "RESTIC_FROM_");
        refused("A=1\nA=sekret-99", "twice");
        refused("A=sekret-99\0", "NUL");
        let many: String = (0..65).map(|i| format!("V{i}=1\n")).collect();
        refused(&many, "more than 64");
    }

    #[test]
    fn missed_slots_are_caught_up_once() {
        let hourly = Schedule::parse("0 * * * *", "Asia/Jakarta").unwrap();
        assert_eq!(
            hourly
                .due(at("2026-03-01T10:00:00Z"), at("2026-03-01T09:59:59Z"))
                .unwrap(),
            None
        );
        assert_eq!(
            hourly
                .due(at("2026-03-01T10:00:00Z"), at("2026-03-01T10:00:00Z"))
                .unwrap(),
            Some(Due {
                slot: at("2026-03-01T10:00:00Z"),
                missed: false,
                next: at("2026-03-01T11:00:00Z")
            })
        );
        // Down from 09:30 to 15:20: five slots missed, one run for the latest of them.
        assert_eq!(
            hourly
                .due(at("2026-03-01T10:00:00Z"), at("2026-03-01T15:20:00Z"))
                .unwrap(),
            Some(Due {
                slot: at("2026-03-01T15:00:00Z"),
                missed: true,
                next: at("2026-03-01T16:00:00Z")
            })
        );
    }

    #[test]
    fn windows_open_and_close_across_midnight_in_jakarta() {
        let night = Window {
            start: "22:00".into(),
            end: "05:00".into(),
        };
        // 22:00 WIB is 15:00 UTC; 05:00 WIB is 22:00 UTC.
        assert_eq!(
            night
                .state("Asia/Jakarta", at("2026-03-01T14:59:59Z"))
                .unwrap(),
            WindowState::Closed {
                opens_at: at("2026-03-01T15:00:00Z")
            }
        );
        assert_eq!(
            night
                .state("Asia/Jakarta", at("2026-03-01T15:00:00Z"))
                .unwrap(),
            WindowState::Open {
                closes_at: at("2026-03-01T22:00:00Z")
            }
        );
        // 03:00 WIB on the 2nd belongs to the window that opened on the 1st.
        assert_eq!(
            night
                .state("Asia/Jakarta", at("2026-03-01T20:00:00Z"))
                .unwrap(),
            WindowState::Open {
                closes_at: at("2026-03-01T22:00:00Z")
            }
        );
        assert_eq!(
            night
                .state("Asia/Jakarta", at("2026-03-01T22:00:00Z"))
                .unwrap(),
            WindowState::Closed {
                opens_at: at("2026-03-02T15:00:00Z")
            }
        );
        let office = Window {
            start: "08:00".into(),
            end: "16:00".into(),
        };
        // 17:00 WIB: closed until 08:00 WIB tomorrow (01:00 UTC).
        assert_eq!(
            office
                .state("Asia/Jakarta", at("2026-03-02T10:00:00Z"))
                .unwrap(),
            WindowState::Closed {
                opens_at: at("2026-03-03T01:00:00Z")
            }
        );
        let bad = Window {
            start: "25:00".into(),
            end: "05:00".into(),
        };
        assert!(
            bad.state("Asia/Jakarta", at("2026-03-01T00:00:00Z"))
                .unwrap_err()
                .to_string()
                .contains("25:00")
        );
    }

    #[test]
    fn bad_specifications_are_named() {
        let spec = |schedule: &str| PlanSpec {
            server: None,
            paths: vec!["/srv/data".into()],
            excludes: vec![],
            exclude_if_present: vec![],
            exclude_caches: false,
            exclude_larger_than: None,
            schedule: schedule.into(),
            time_zone: jakarta(),
            retention: Retention::default(),
            retention_schedule: None,
            verify_schedule: None,
            verify_parts: 7,
            drill_schedule: None,
            replicate_schedule: None,
            window: None,
            bandwidth_limit_kib: None,
            compress_on: CompressOn::Agent,
            restic: None,
            before_backup: None,
            after_backup: None,
        };
        spec("0 2 * * *").validate().unwrap();
        let error = spec("every night").validate().unwrap_err().to_string();
        assert!(error.contains("every night"), "{error}");
        let mut relative = spec("0 2 * * *");
        relative.paths = vec!["srv/../etc".into()];
        assert!(
            relative
                .validate()
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let mut no_policy = spec("0 2 * * *");
        no_policy.retention_schedule = Some("0 4 * * 0".into());
        assert!(
            no_policy
                .validate()
                .unwrap_err()
                .to_string()
                .contains("retention")
        );
        let mut zone = spec("0 2 * * *");
        zone.time_zone = "Mars/Olympus".into();
        assert!(
            zone.validate()
                .unwrap_err()
                .to_string()
                .contains("Mars/Olympus")
        );
        // Compression on the daemon needs an agent that sends to cadang's engine.
        let mut on_daemon = spec("0 2 * * *");
        on_daemon.compress_on = CompressOn::Daemon;
        assert!(
            on_daemon
                .validate()
                .unwrap_err()
                .to_string()
                .contains("compress_on")
        );
        on_daemon.server = Some(ServerId(4));
        on_daemon.validate().unwrap();
        on_daemon.restic = Some(ResticTarget {
            repository: "/srv/restic".into(),
            password: None,
            password_secret: None,
            env: None,
            env_secret: None,
        });
        assert!(on_daemon.validate().is_err());
        // A before-backup program by absolute path, for at most a day; stored as given,
        // the timeout an hour unless said.
        let mut before = spec("0 2 * * *");
        before.before_backup = Some(BackupProgram {
            command: vec!["pg_dump".into(), "simpeg".into()],
            timeout_secs: 3600,
        });
        let error = before.validate().unwrap_err().to_string();
        assert!(error.contains("absolute path"), "{error}");
        before.before_backup = Some(BackupProgram {
            command: vec!["/usr/bin/pg_dump".into(), "simpeg".into()],
            timeout_secs: 0,
        });
        let error = before.validate().unwrap_err().to_string();
        assert!(error.contains("timeout_secs"), "{error}");
        let stored: PlanSpec = serde_json::from_str(
            r#"{"paths":["/srv"],"schedule":"0 2 * * *","before_backup":{"command":["/usr/bin/pg_dump","-Fc","simpeg"]}}"#,
        )
        .unwrap();
        stored.validate().unwrap();
        assert_eq!(stored.before_backup.map(|b| b.timeout_secs), Some(3600));
        // The after-backup program, alike.
        let mut after = spec("0 2 * * *");
        after.after_backup = Some(BackupProgram {
            command: vec!["lvremove".into()],
            timeout_secs: 60,
        });
        let error = after.validate().unwrap_err().to_string();
        assert!(error.contains("after-backup command"), "{error}");
        after.after_backup = Some(BackupProgram {
            command: vec!["/sbin/lvremove".into(), "-y".into()],
            timeout_secs: 86_401,
        });
        let error = after.validate().unwrap_err().to_string();
        assert!(error.contains("after_backup.timeout_secs"), "{error}");
        after.after_backup.as_mut().unwrap().timeout_secs = 600;
        after.validate().unwrap();
        // Exclude patterns are read as the engine and the agent will read them, when the
        // plan is written; restic reads its own.
        let mut excludes = spec("0 2 * * *");
        excludes.excludes = vec!["*.tmp".into(), "/srv/cache".into()];
        excludes.validate().unwrap();
        excludes.excludes.push("/srv/{unclosed".into());
        let error = excludes.validate().unwrap_err().to_string();
        assert!(error.contains("/srv/{unclosed"), "{error}");
        excludes.excludes = vec!["x".repeat(5000)];
        assert!(excludes.validate().is_err());
        excludes.excludes = vec![];
        excludes.exclude_if_present = vec![".nobackup".into(), "TAG:header".into()];
        excludes.exclude_caches = true;
        excludes.validate().unwrap();
        let markers = excludes.markers().unwrap();
        assert_eq!(markers.len(), 3);
        assert_eq!(
            markers[2],
            crate::engine::backup::ExcludeMarker::cache_dir_tag()
        );
        excludes.exclude_larger_than = Some(0);
        let error = excludes.validate().unwrap_err().to_string();
        assert!(error.contains("exclude_larger_than"), "{error}");
        excludes.exclude_larger_than = Some(1 << 30);
        excludes.validate().unwrap();
        // Holds: lists of tags, none empty or spaced.
        excludes.retention.keep_tags = vec!["hold".into(), "hold,bpk-2026".into()];
        excludes.validate().unwrap();
        for bad in ["hold,", "", "two words"] {
            excludes.retention.keep_tags = vec![bad.into()];
            let error = excludes.validate().unwrap_err().to_string();
            assert!(error.contains("keep_tags"), "{bad}: {error}");
        }
        excludes.retention.keep_tags = vec![];
        excludes.exclude_if_present = vec!["../.nobackup".into()];
        let error = excludes.validate().unwrap_err().to_string();
        assert!(error.contains("../.nobackup"), "{error}");
        excludes.exclude_if_present = vec![];
        excludes.excludes = vec!["/srv/{unclosed".into()];
        excludes.restic = Some(ResticTarget {
            repository: "/srv/restic".into(),
            password: None,
            password_secret: None,
            env: None,
            env_secret: None,
        });
        excludes.validate().unwrap();
    }

    /// Plans stored before the choice existed read as compressing on the agent, and
    /// such plans are stored as before.
    #[test]
    fn compression_side_defaults_to_the_agent_and_is_stored_only_when_chosen() {
        let stored = r#"{"paths":["/srv"],"server":3,"schedule":"0 2 * * *"}"#;
        let spec: PlanSpec = serde_json::from_str(stored).unwrap();
        assert_eq!(spec.compress_on, CompressOn::Agent);
        assert!(
            !serde_json::to_string(&spec)
                .unwrap()
                .contains("compress_on")
        );
        let chosen: PlanSpec = serde_json::from_str(
            r#"{"paths":["/srv"],"server":3,"schedule":"0 2 * * *","compress_on":"daemon"}"#,
        )
        .unwrap();
        assert_eq!(chosen.compress_on, CompressOn::Daemon);
        assert!(
            serde_json::to_string(&chosen)
                .unwrap()
                .contains(r#""compress_on":"daemon""#)
        );
        assert!(
            serde_json::from_str::<PlanSpec>(
                r#"{"paths":["/srv"],"schedule":"0 2 * * *","compress_on":"elsewhere"}"#
            )
            .is_err()
        );
    }
}
