//! The use cases of cadang: every change follows **load → decide → persist + audit in one
//! transaction**. A use case opens one catalog transaction, loads what it needs, asks the
//! pure workflow ([`crate::workflow::decide`]) or its own rules whether the change is
//! allowed, writes the change, runs the system actions it owns (capacity check, asset
//! register update, documents), queues the ones other components own (backup plans,
//! restores), appends its audit rows to the hash chain, and commits — all or nothing.
//!
//! This module owns the **business rules** that are not the SOP's step sequence: who may
//! administer the directory, that an SKPD account acts only for its own agency, NIP / IP /
//! domain validation, capacity planning and reservation, the comparison of declared and
//! observed server specifications, sealing and revealing secrets, document numbering and
//! rendering, and time-standard reports. It must not contain SQL (that is
//! [`crate::catalog`]) and never sees transport types (gRPC, clap). Time is always an
//! input: every use case takes `now`.

mod actions;
mod agents;
mod assets;
pub mod audit;
mod capacity;
mod details;
mod directory;
pub mod documents;
mod error;
pub mod identifiers;
pub mod notify;
mod operations;
mod plans;
pub mod report_html;
mod reports;
mod requests;
pub mod restore_requests;
pub mod secrets;
mod tokens;
mod views;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use actions::ActionJob;
pub use agents::{
    AgentCaller, Erasure, InventoryView, MAX_FAILED_LISTED, RestoreEnd, SnapshotHold, StartRestore,
    observed_from_inventory,
};
pub use assets::{ObservedServer, RegisterServer, SpecDifference};
pub use audit::{AuditCheckpoint, AuditProblem, AuditVerification};
pub use capacity::{CapacityNeeds, CapacityReport, RackCapacity, ServerNeed, UplinkCapacity};
pub use details::{
    BackupApplication, ColocationApplication, DeclaredServer, MaintenanceApplication, OpenRequest,
    RequestDetails, RestoreApplication, Validity, WithdrawalApplication,
};
pub use directory::{NewAccountInput, NewPersonInput};
pub use documents::{DocumentNumbering, OfficeIdentity, Signatory};
pub use error::AppError;
pub use operations::{
    AgencyStorage, PlanRuns, ReplicaLag, RunFilter, RunLine, RunsReport, ScheduleLine,
    ScheduleReport, SizePoint, SlaGroup, SlaReport, StorageReport,
};
pub use plans::{
    BackupProgram, ClaimedRun, CompressOn, HOLD_TAG, PlanSpec, PlanView, ResticTarget, Retention,
    Schedule, Window, WindowState, spec_of,
};
pub use reports::{RequestOverruns, StepOverrun};
pub use requests::{EventOutcome, IssuedDocument, RequestView};
pub use secrets::{MasterKey, SecretString};
pub use tokens::{Caller, IssuedToken};
pub use views::MAX_PAGE;

use crate::catalog::{Account, Catalog, Tx};
use crate::workflow::{Registry, Role, WorkCalendar};
use audit::AuditEntry;
use secrets::Sealer;

/// Settings of the application layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// The data center's letterhead, units and signatories.
    pub office: OfficeIdentity,
    /// How official document numbers are made.
    pub numbering: DocumentNumbering,
    /// Office hours and holidays for "1 hari".
    pub calendar: WorkCalendar,
    /// Roles that may reveal a sealed host admin password.
    pub reveal_roles: Vec<Role>,
    /// How late a plan's backup may be, past the slot its schedule promised, before it
    /// is reported overdue (minutes).
    pub overdue_grace_minutes: u32,
    /// The channels notifications are queued for (`webhook`, `email`), set by the daemon
    /// from its `[notify]` section; none queues nothing.
    #[serde(skip)]
    pub notify_channels: Vec<String>,
}

impl Default for AppConfig {
    /// Diskominfo Jawa Tengah's letterhead, the default numbering, Monday–Friday in
    /// Asia/Jakarta, and reveal by KABID_TIK, KASI_INFRAS and PETUGAS.
    fn default() -> Self {
        AppConfig {
            office: OfficeIdentity::default(),
            numbering: DocumentNumbering::default(),
            calendar: WorkCalendar::default(),
            reveal_roles: vec![Role::KabidTik, Role::KasiInfras, Role::Petugas],
            overdue_grace_minutes: 60,
            notify_channels: Vec::new(),
        }
    }
}

impl AppConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] naming the setting.
    pub fn validate(&self) -> Result<(), AppError> {
        self.numbering.validate()?;
        for signatory in &self.office.signatories {
            if let Some(nip) = &signatory.nip {
                identifiers::Nip::parse(nip).map_err(|error| {
                    AppError::invalid(format!("office.signatories ({}): {error}", signatory.role))
                })?;
            }
        }
        if self.reveal_roles.is_empty() {
            return Err(AppError::invalid(
                "reveal_roles must name at least one role (or nobody could read a sealed password)",
            ));
        }
        Ok(())
    }
}

struct Inner {
    catalog: Catalog,
    registry: RwLock<Arc<Registry>>,
    config: AppConfig,
    sealer: Sealer,
    token_key: [u8; 32],
}

/// The application: the catalog, the loaded procedure definitions, the settings and the
/// master key. Cheap to clone; every use case is a method taking `now`.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("catalog", &self.inner.catalog)
            .field("definitions", &self.registry().len())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens the application on a migrated catalog with the procedure definition files
    /// (`(file name, text)` pairs, e.g. the contents of `config/sop/*.toml`).
    ///
    /// Every definition is stored in the catalog the first time it is seen, so a request
    /// can finish under its revision even after the file is gone; stored revisions missing
    /// from the files are loaded from the catalog. A file that changes a stored revision
    /// is refused: requests may be running under it, so it needs a new revision number.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] for invalid settings, an invalid or changed definition;
    /// catalog errors.
    pub async fn open<N: AsRef<str>, T: AsRef<str>>(
        catalog: Catalog,
        definitions: impl IntoIterator<Item = (N, T)>,
        config: AppConfig,
        master_key: &MasterKey,
        now: DateTime<Utc>,
    ) -> Result<App, AppError> {
        config.validate()?;
        let from_files = Registry::from_sources(definitions)
            .map_err(|error| AppError::invalid(error.to_string()))?;
        let app = App {
            inner: Arc::new(Inner {
                catalog,
                registry: RwLock::new(Arc::new(Registry::new())),
                config,
                sealer: Sealer::new(master_key),
                token_key: master_key.derive(tokens::TOKEN_HASH_CONTEXT),
            }),
        };
        let registry = requests::sync_definitions(&app, from_files, now).await?;
        app.replace_registry(registry);
        Ok(app)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The settings.
    pub fn config(&self) -> &AppConfig {
        &self.inner.config
    }

    /// The loaded procedure definitions (a snapshot: a definition loaded later does not
    /// change it).
    pub fn registry(&self) -> Arc<Registry> {
        match self.inner.registry.read() {
            Ok(registry) => Arc::clone(&registry),
            // A writer panicked while swapping an Arc: the old value is still whole.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace_registry(&self, registry: Registry) {
        let registry = Arc::new(registry);
        match self.inner.registry.write() {
            Ok(mut slot) => *slot = registry,
            Err(poisoned) => *poisoned.into_inner() = registry,
        }
    }

    fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    /// Starts a unit of work: a write transaction acting as `username`.
    async fn work(&self, username: &str, now: DateTime<Utc>) -> Result<Work<'_>, AppError> {
        let mut tx = self.catalog().begin().await?;
        let account = load_account(&mut tx, username).await?;
        Ok(Work {
            app: self,
            tx,
            account: Some(account),
            actor_name: username.to_owned(),
            role: None,
            now,
            audit: Vec::new(),
        })
    }

    /// Starts a unit of work done by the system itself (no account).
    async fn system_work(
        &self,
        actor_name: &str,
        now: DateTime<Utc>,
    ) -> Result<Work<'_>, AppError> {
        Ok(Work {
            app: self,
            tx: self.catalog().begin().await?,
            account: None,
            actor_name: actor_name.to_owned(),
            role: None,
            now,
            audit: Vec::new(),
        })
    }
}

/// The active account with this user name.
async fn load_account(tx: &mut Tx, username: &str) -> Result<Account, AppError> {
    match tx.account_by_username(username).await? {
        Some(account) if account.active => Ok(account),
        Some(_) => Err(AppError::forbidden(format!(
            "account `{username}` is disabled"
        ))),
        None => Err(AppError::forbidden(format!(
            "there is no account `{username}`"
        ))),
    }
}

/// One use case in progress: its transaction, who acts, when, and the audit entries to
/// append. The entries are appended only in [`Work::commit`], after every other write,
/// because the chain head is the last lock a transaction may take (see
/// [`crate::catalog`] on lock order).
struct Work<'a> {
    app: &'a App,
    tx: Tx,
    account: Option<Account>,
    actor_name: String,
    role: Option<Role>,
    now: DateTime<Utc>,
    audit: Vec<AuditEntry>,
}

impl Work<'_> {
    /// The account acting (absent for system work).
    fn account(&self) -> Result<&Account, AppError> {
        self.account
            .as_ref()
            .ok_or_else(|| AppError::internal("a user use case ran without an account"))
    }

    /// Requires one of `allowed`; records it as the acting role.
    fn require(&mut self, allowed: &[Role], what: &str) -> Result<Role, AppError> {
        let account = self.account()?;
        match allowed
            .iter()
            .copied()
            .find(|role| account.roles.contains(role))
        {
            Some(role) => {
                self.role = Some(role);
                Ok(role)
            }
            None => Err(AppError::forbidden(format!(
                "only {} may {what} (`{}` holds: {})",
                describe(allowed),
                account.username,
                if account.roles.is_empty() {
                    "no role".to_owned()
                } else {
                    describe_all(&account.roles)
                }
            ))),
        }
    }

    /// Queues an audit entry by the acting user and role.
    fn audit(&mut self, action: &str, entity: &str, entity_id: impl ToString) -> &mut AuditEntry {
        self.audit.push(AuditEntry::new(
            self.now,
            self.actor_name.clone(),
            self.role,
            action,
            entity,
            entity_id,
        ));
        let last = self.audit.len() - 1;
        &mut self.audit[last]
    }

    /// Appends the audit entries and commits.
    async fn commit(mut self) -> Result<(), AppError> {
        for entry in std::mem::take(&mut self.audit) {
            audit::append(&mut self.tx, entry).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// `A`, `A or B`, `A, B or C`.
fn describe(roles: &[Role]) -> String {
    match roles {
        [] => "nobody".to_owned(),
        [only] => only.code().to_owned(),
        [init @ .., last] => format!(
            "{} or {}",
            init.iter()
                .map(|role| role.code())
                .collect::<Vec<_>>()
                .join(", "),
            last.code()
        ),
    }
}

fn describe_all(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|role| role.code())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Trims a required text field.
fn required(field: &str, value: &str) -> Result<String, AppError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(AppError::invalid(format!("{field} must not be empty")))
    } else {
        Ok(trimmed.to_owned())
    }
}

/// Trims an optional text field (blank becomes `None`).
fn optional(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_and_round_trips_through_toml() {
        let config = AppConfig::default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        let back: AppConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn bad_settings_are_named() {
        let mut config = AppConfig::default();
        config.office.signatories.push(Signatory {
            role: Role::KabidTik,
            name: "X".into(),
            nip: Some("123".into()),
            rank: None,
        });
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("office.signatories (KABID_TIK)"), "{error}");
        let config = AppConfig {
            reveal_roles: vec![],
            ..AppConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("reveal_roles")
        );
        let partial: AppConfig = toml::from_str(
            "reveal_roles = [\"PETUGAS\"]\n[numbering]\npattern = \"{seq}/{code}/DISKOMINFO/{roman_month}/{year}\"\n",
        )
        .unwrap();
        partial.validate().unwrap();
        assert_eq!(partial.reveal_roles, vec![Role::Petugas]);
        assert_eq!(partial.numbering.seq_width, 3);
    }
}
