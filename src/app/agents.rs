//! Agents on the colocated servers: one-time enrolment tokens, enrolment, the agent's
//! credential, revocation, inventory reports (compared with the asset register), and the
//! restores to agents with their claims and results.
//!
//! Agent secrets follow the bearer tokens' rule (see `tokens.rs`): 256 random bits with a
//! recognisable prefix (`cdge_` for enrolment, `cdga_` for the agent's credential), only a
//! keyed hash in the catalog, the secret shown once.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::assets::{ObservedServer, SpecDifference, agent_observation};
use super::secrets::random_bytes;
use super::{App, AppError, Caller, SecretString};
use crate::agent::inventory::Inventory;
use crate::catalog::{
    AgencyId, AgentId, AgentRecord, InventoryRecord, NewAgent, NewRestore, PlanId, RequestId,
    RestoreId, RestoreRecord, RunId, ServerId,
};
use crate::workflow::Role;

/// Prefix of enrolment tokens.
const ENROLLMENT_PREFIX: &str = "cdge_";
/// Prefix of agent credentials.
const CREDENTIAL_PREFIX: &str = "cdga_";
/// Who may create enrolment tokens and revoke agents: the officers who hand servers over.
const AGENT_ROLES: [Role; 3] = [Role::Admin, Role::KasiInfras, Role::Petugas];
/// Who may start restores.
const RESTORE_ROLES: [Role; 3] = [Role::Admin, Role::KasiInfras, Role::Petugas];
/// Who holds a snapshot past its retention, or releases the hold.
const HOLD_ROLES: [Role; 3] = [Role::Admin, Role::KabidTik, Role::KasiInfras];
/// Who takes files out of a server's backups: the head of the division and the
/// administrator.
const ERASE_ROLES: [Role; 2] = [Role::Admin, Role::KabidTik];

/// Default lifetime of an enrolment token.
const DEFAULT_ENROLLMENT_HOURS: i64 = 24;
/// Most failed files kept in a restore's record.
pub const MAX_FAILED_LISTED: usize = 1000;

/// An agent admitted by its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCaller {
    /// The agent.
    pub agent: AgentRecord,
}

/// A restore to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRestore {
    /// The server whose backups are restored.
    pub server_id: ServerId,
    /// `latest` or a snapshot id (prefix).
    pub snapshot: String,
    /// Only these paths; empty for all.
    pub paths: Vec<String>,
    /// Left out, with what is below them (a backup plan's exclude syntax).
    pub excludes: Vec<String>,
    /// What becomes of files already in the target directory.
    pub overwrite: crate::engine::restore::Overwrite,
    /// Also delete from the target what the snapshot does not hold, at or below the
    /// snapshot's backed-up paths (only from the server's cadang snapshots).
    pub delete: bool,
    /// Only find out what the restore would do (not for a restore request).
    pub dry_run: bool,
    /// The server to restore to (same agency).
    pub target_server_id: ServerId,
    /// Absolute directory on the target.
    pub target_dir: String,
    /// The restore request served.
    pub request_id: Option<RequestId>,
    /// A plan on an existing restic repository to restore from instead of the
    /// server's snapshots in the agency's cadang repository.
    pub plan_id: Option<PlanId>,
}

/// A server's latest inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryView {
    /// The latest report, if any.
    pub latest: Option<InventoryRecord>,
    /// How many reports are kept.
    pub reports: i64,
}

/// How a restore ended, as the agent and the daemon saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreEnd {
    /// `ok`, `verify_differences`, `failed` or `cancelled`.
    pub status: String,
    /// Statistics and failed files (JSON).
    pub stats_json: String,
    /// Why it failed.
    pub error: Option<String>,
}

fn well_formed(secret: &str, prefix: &str) -> bool {
    secret.len() == prefix.len() + 64
        && secret.starts_with(prefix)
        && secret[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// The measured specification in the register's terms, so the handover comparison and the
/// daily check use the same fields as the forms.
pub fn observed_from_inventory(inventory: &Inventory) -> ObservedServer {
    let processor = inventory
        .cpu
        .model
        .as_ref()
        .map(|model| match inventory.cpu.sockets {
            Some(sockets) if sockets > 1 => format!("{sockets} x {model}"),
            _ => model.clone(),
        });
    let motherboard = match (&inventory.system.board_vendor, &inventory.system.board_name) {
        (Some(vendor), Some(name)) => Some(format!("{vendor} {name}")),
        (None, Some(name)) => Some(name.clone()),
        _ => None,
    };
    let storage = (!inventory.disks.is_empty()).then(|| {
        // Grouped by size, largest first: "2 x 480 GB, 1 x 4 TB".
        let mut sizes: Vec<(u64, usize)> = Vec::new();
        for disk in &inventory.disks {
            let size = decimal_size(disk.size_bytes);
            match sizes
                .iter_mut()
                .find(|(bytes, _)| decimal_size(*bytes) == size)
            {
                Some((_, count)) => *count += 1,
                None => sizes.push((disk.size_bytes, 1)),
            }
        }
        sizes.sort_by_key(|size| std::cmp::Reverse(size.0));
        sizes
            .iter()
            .map(|(bytes, count)| format!("{count} x {}", decimal_size(*bytes)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let psu = (!inventory.power_supplies.is_empty()).then(|| {
        let models: Vec<String> = inventory
            .power_supplies
            .iter()
            .map(|psu| {
                psu.model
                    .clone()
                    .or_else(|| psu.manufacturer.clone())
                    .unwrap_or_else(|| psu.name.clone())
            })
            .collect();
        format!("{} x {}", models.len(), models.join(" / "))
    });
    ObservedServer {
        name: inventory.hostname.clone(),
        serial_number: inventory.system.serial.clone(),
        server_type: inventory.system.product.clone(),
        brand: inventory.system.vendor.clone(),
        processor,
        ram: inventory
            .memory_gib_installed()
            .map(|gib| format!("{gib} GB")),
        motherboard,
        storage,
        psu,
        u_size: None,
        power_draw_w: None,
        ip_addresses: (!inventory.ip_addresses.is_empty()).then(|| inventory.ip_addresses.clone()),
    }
}

/// Bytes in decimal units as disk makers label them ("480 GB", "4 TB", "1.9 TB").
fn decimal_size(bytes: u64) -> String {
    let gb = bytes as f64 / 1e9;
    if gb >= 1000.0 {
        let tb = gb / 1000.0;
        if (tb - tb.round()).abs() < 0.05 {
            format!("{} TB", tb.round())
        } else {
            format!("{tb:.1} TB")
        }
    } else {
        format!("{} GB", gb.round())
    }
}

/// A hold set on a server's snapshot, or released ([`App::record_snapshot_hold`]).
#[derive(Debug, Clone)]
pub struct SnapshotHold {
    /// The server.
    pub server: ServerId,
    /// The snapshot named.
    pub snapshot: String,
    /// The snapshot as it is now (another id when the hold changed).
    pub now_snapshot: String,
    /// Set (true) or released.
    pub held: bool,
    /// Whether anything changed.
    pub changed: bool,
    /// Why.
    pub reason: String,
}

/// Files taken out of a server's backups ([`App::record_erasure`]). The audit trail keeps
/// the patterns, the snapshots replaced and counts, never the paths taken out: a name
/// can itself be the personal data erased.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The server.
    pub server: ServerId,
    /// The patterns, as given.
    pub patterns: Vec<String>,
    /// Each snapshot of the primary replaced: (original, replacement).
    pub replaced: Vec<(String, String)>,
    /// Entries taken out, in all snapshots.
    pub entries: u64,
    /// Whether the replica was erased as well.
    pub replica: bool,
    /// Snapshots of the replica replaced or rewritten.
    pub replica_changed: u64,
    /// Bytes marked for deletion by the prunes.
    pub bytes_marked: u64,
    /// What is left to do.
    pub notes: Vec<String>,
    /// Snapshots still holding matches at the end (`primary:ID`, `replica:ID`).
    pub remaining: Vec<String>,
    /// Why.
    pub reason: String,
}

impl App {
    fn agent_hash(&self, secret: &str) -> String {
        // The tokens' keyed hash, under a distinct domain so an agent secret can never
        // match a person's token row or the other way round.
        let mut input = Vec::with_capacity(secret.len() + 16);
        input.extend_from_slice(b"cadang-agent\0");
        input.extend_from_slice(secret.as_bytes());
        blake3::keyed_hash(&self.inner.token_key, &input)
            .to_hex()
            .to_string()
    }

    /// Creates a one-time enrolment token for a server in the register. ADMIN,
    /// KASI_INFRAS or PETUGAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`] for an unknown server;
    /// [`AppError::Conflict`] for a withdrawn one; [`AppError::InvalidInput`] for a bad
    /// lifetime.
    pub async fn create_enrollment_token(
        &self,
        username: &str,
        server: ServerId,
        valid_hours: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(AgentRecord, SecretString), AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&AGENT_ROLES, "create agent enrolment tokens")?;
        let hours = valid_hours.unwrap_or(DEFAULT_ENROLLMENT_HOURS);
        if !(1..=24 * 30).contains(&hours) {
            return Err(AppError::invalid(
                "an enrolment token is valid for 1 to 720 hours",
            ));
        }
        let record = work.tx.server(server).await?;
        if record.status != crate::catalog::ServerStatus::Active {
            return Err(AppError::Conflict(format!(
                "server {server} is not active in the register"
            )));
        }
        let secret = format!("{ENROLLMENT_PREFIX}{}", hex::encode(random_bytes::<32>()?));
        let agent = work
            .tx
            .insert_agent(
                &NewAgent {
                    agency_id: record.agency_id,
                    server_id: Some(server),
                    request_id: None,
                    declared_name: None,
                    enrollment_hash: self.agent_hash(&secret),
                    enrollment_expires_at: now + TimeDelta::hours(hours),
                    created_by: username.to_owned(),
                },
                now,
            )
            .await?;
        work.audit("agent.enrollment_token", "agent", agent.id)
            .after = Some(serde_json::json!({
            "server": server, "agency": agent.agency_id, "expires_at": agent.enrollment_expires_at,
        }));
        work.commit().await?;
        Ok((agent, SecretString::new(secret)))
    }

    /// Creates a one-time enrolment token for a server declared in a colocation request
    /// that is at its handover step (A7), before the server is in the register: the
    /// agent's measurement becomes the step's observation, and the server it is bound
    /// to once the step registers it. The step's roles.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::Conflict`] when the request is not at the
    /// handover step; [`AppError::InvalidInput`] for a name the request does not declare.
    pub async fn create_handover_enrollment_token(
        &self,
        username: &str,
        request: RequestId,
        declared_name: &str,
        valid_hours: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(AgentRecord, SecretString), AppError> {
        let registry = self.registry();
        let mut work = self.work(username, now).await?;
        let record = work.tx.request(request).await?;
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let step = record
            .state
            .current_step()
            .and_then(|current| definition.step(current))
            .filter(|step| {
                step.actions_on(crate::workflow::Trigger::Complete)
                    .any(|action| action == crate::workflow::SystemAction::UpdateAssetRegister)
            })
            .ok_or_else(|| {
                AppError::Conflict(format!(
                    "request {request} is not at the step where the servers are checked and registered"
                ))
            })?;
        let roles = step.roles.clone();
        work.require(&roles, "enrol agents at the handover")?;
        let super::RequestDetails::Colocation(application) =
            super::requests::decode_details(&record)?
        else {
            return Err(AppError::invalid(format!(
                "request {request} is not a colocation request"
            )));
        };
        let name = declared_name.trim();
        if !application.servers.iter().any(|server| server.name == name) {
            return Err(AppError::invalid(format!(
                "request {request} declares no server named `{name}` (declared: {})",
                application
                    .servers
                    .iter()
                    .map(|server| server.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let hours = valid_hours.unwrap_or(DEFAULT_ENROLLMENT_HOURS);
        if !(1..=24 * 30).contains(&hours) {
            return Err(AppError::invalid(
                "an enrolment token is valid for 1 to 720 hours",
            ));
        }
        let secret = format!("{ENROLLMENT_PREFIX}{}", hex::encode(random_bytes::<32>()?));
        let agent = work
            .tx
            .insert_agent(
                &NewAgent {
                    agency_id: record.agency_id,
                    server_id: None,
                    request_id: Some(request),
                    declared_name: Some(name.to_owned()),
                    enrollment_hash: self.agent_hash(&secret),
                    enrollment_expires_at: now + TimeDelta::hours(hours),
                    created_by: username.to_owned(),
                },
                now,
            )
            .await?;
        work.audit("agent.enrollment_token", "agent", agent.id)
            .after = Some(serde_json::json!({
            "request": request, "declared_server": name, "agency": agent.agency_id,
            "expires_at": agent.enrollment_expires_at,
        }));
        work.commit().await?;
        Ok((agent, SecretString::new(secret)))
    }

    /// Exchanges an enrolment token for the agent's credential, once.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for a malformed, unknown, used, expired or revoked
    /// token (a second use is audited); [`AppError::InvalidInput`] for a bad host name.
    pub async fn enroll_agent(
        &self,
        token: &str,
        hostname: &str,
        version: &str,
        now: DateTime<Utc>,
    ) -> Result<(AgentRecord, SecretString), AppError> {
        let token = token.trim();
        if !well_formed(token, ENROLLMENT_PREFIX) {
            return Err(AppError::Unauthenticated(
                "the enrolment token is malformed (expected `cdge_` and 64 hex digits)".into(),
            ));
        }
        let hostname = hostname.trim();
        let version = version.trim();
        if hostname.is_empty()
            || hostname.len() > 253
            || version.len() > 64
            || hostname
                .chars()
                .chain(version.chars())
                .any(char::is_control)
        {
            return Err(AppError::invalid(
                "the agent must send its host name (1–253 printable characters) and version",
            ));
        }
        let mut work = self.system_work("agent-enrolment", now).await?;
        let agent = work
            .tx
            .agent_by_enrollment(&self.agent_hash(token))
            .await?
            .ok_or_else(|| AppError::Unauthenticated("the enrolment token is not known".into()))?;
        let refusal = match agent.status(now) {
            "enrolled" => Some("this enrolment token was used already; ask for a new one"),
            "revoked" => Some("this agent was revoked"),
            "expired" => Some("this enrolment token has expired; ask for a new one"),
            _ => None,
        };
        if let Some(reason) = refusal {
            work.audit("agent.enroll_refused", "agent", agent.id).after =
                Some(serde_json::json!({ "reason": reason, "hostname": hostname }));
            work.commit().await?;
            return Err(AppError::Unauthenticated(reason.into()));
        }
        let credential = format!("{CREDENTIAL_PREFIX}{}", hex::encode(random_bytes::<32>()?));
        let won = work
            .tx
            .enroll_agent(
                agent.id,
                &self.agent_hash(&credential),
                hostname,
                version,
                now,
            )
            .await?;
        if !won {
            return Err(AppError::Unauthenticated(
                "this enrolment token was used already; ask for a new one".into(),
            ));
        }
        work.audit("agent.enroll", "agent", agent.id).after = Some(serde_json::json!({
            "server": agent.server_id, "request": agent.request_id,
            "declared_server": agent.declared_name, "agency": agent.agency_id,
            "hostname": hostname, "version": version,
        }));
        let agent = work.tx.agent(agent.id).await?;
        work.commit().await?;
        Ok((agent, SecretString::new(credential)))
    }

    /// The agent behind a credential.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for a malformed, unknown or revoked credential.
    pub async fn authenticate_agent(
        &self,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<AgentCaller, AppError> {
        if !well_formed(secret, CREDENTIAL_PREFIX) {
            return Err(AppError::Unauthenticated(
                "the agent credential is malformed (expected `cdga_` and 64 hex digits)".into(),
            ));
        }
        let mut tx = self.catalog().begin_read().await?;
        let agent = tx
            .agent_by_credential(&self.agent_hash(secret))
            .await?
            .ok_or_else(|| AppError::Unauthenticated("the agent credential is not known".into()))?;
        drop(tx);
        if agent.revoked_at.is_some() {
            return Err(AppError::Unauthenticated(format!(
                "agent {} was revoked",
                agent.id
            )));
        }
        // Last contact to the minute: one write per agent per minute at most.
        if agent
            .last_seen_at
            .is_none_or(|seen| now - seen >= TimeDelta::minutes(1))
        {
            let mut tx = self.catalog().begin().await?;
            tx.touch_agent(agent.id, now).await?;
            tx.commit().await?;
        }
        Ok(AgentCaller { agent })
    }

    /// Whether an agent may still act (not revoked).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn agent_active(&self, id: AgentId) -> Result<bool, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.agent(id).await?.revoked_at.is_none())
    }

    /// Revokes an agent. ADMIN, KASI_INFRAS or PETUGAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`]; [`AppError::Conflict`] when it
    /// was revoked already.
    pub async fn revoke_agent(
        &self,
        username: &str,
        id: AgentId,
        now: DateTime<Utc>,
    ) -> Result<AgentRecord, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&AGENT_ROLES, "revoke agents")?;
        let before = work.tx.agent(id).await?;
        if !work.tx.revoke_agent(id, now).await? {
            return Err(AppError::Conflict(format!(
                "agent {id} was revoked already"
            )));
        }
        work.audit("agent.revoke", "agent", id).after = Some(serde_json::json!({
            "server": before.server_id, "agency": before.agency_id,
        }));
        let after = work.tx.agent(id).await?;
        work.commit().await?;
        Ok(after)
    }

    /// Agents the caller may see.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for another agency.
    pub async fn agents_for(
        &self,
        caller: &Caller,
        agency: Option<AgencyId>,
    ) -> Result<Vec<AgentRecord>, AppError> {
        if let Some(agency) = agency {
            caller.check_agency(agency, &format!("agency {agency}"))?;
        }
        let agency = agency.or(caller.confined_to());
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.agents(agency).await?)
    }

    /// The enrolled, unrevoked agent of a server, if any (the newest).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn agent_of_server(&self, server: ServerId) -> Result<Option<AgentRecord>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let server = tx.server(server).await?;
        Ok(tx
            .agents(Some(server.agency_id))
            .await?
            .into_iter()
            .find(|agent| {
                agent.server_id == Some(server.id)
                    && agent.enrolled_at.is_some()
                    && agent.revoked_at.is_none()
            }))
    }

    /// Records an agent's inventory report; when the measured specification differs from
    /// the previous report (or is the first), compares it with the register and records
    /// the mismatches. Returns the differences against the register.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] for a report that is not an inventory.
    pub async fn record_inventory(
        &self,
        agent: &AgentCaller,
        inventory_json: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<SpecDifference>, AppError> {
        if inventory_json.len() > 1 << 20 {
            return Err(AppError::invalid("an inventory report is at most 1 MiB"));
        }
        let inventory: Inventory = serde_json::from_str(inventory_json)
            .map_err(|error| AppError::invalid(format!("the inventory is not valid: {error}")))?;
        let mut observed = observed_from_inventory(&inventory);
        let mut work = self
            .system_work(&format!("agent:{}", agent.agent.id), now)
            .await?;
        let canonical = serde_json::to_string(&inventory)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let Some(server) = agent.agent.server_id else {
            // Enrolled at the handover: the measurement is the observation of step 7,
            // compared with the declared server now and again when the step completes.
            let (Some(request), Some(declared_name)) =
                (agent.agent.request_id, agent.agent.declared_name.clone())
            else {
                return Err(AppError::internal(format!(
                    "agent {} has neither a server nor a handover",
                    agent.agent.id
                )));
            };
            observed.name = Some(declared_name.clone());
            let record = work.tx.request(request).await?;
            let declared: Vec<_> = match super::requests::decode_details(&record)? {
                super::RequestDetails::Colocation(application) => application
                    .servers
                    .into_iter()
                    .filter(|server| server.name == declared_name)
                    .collect(),
                _ => Vec::new(),
            };
            let (_, differences) = super::assets::compare_specs(&declared, &[observed.clone()]);
            let spec_json = serde_json::to_string(&vec![observed])
                .map_err(|error| AppError::internal(error.to_string()))?;
            let id = work
                .tx
                .insert_observation(&crate::catalog::NewObservation {
                    request_id: Some(request),
                    server_id: None,
                    source: crate::catalog::ObservationSource::Agent,
                    observed_by: work.actor_name.clone(),
                    observed_at: now,
                    spec_json,
                })
                .await?;
            work.tx
                .insert_inventory(&InventoryRecord {
                    server_id: None,
                    agent_id: agent.agent.id,
                    reported_at: now,
                    inventory_json: canonical,
                    mismatches_json: serde_json::to_string(&differences)
                        .map_err(|error| AppError::internal(error.to_string()))?,
                })
                .await?;
            work.audit("asset.observe", "request", request).after = Some(serde_json::json!({
                "observation": id, "agent": agent.agent.id, "server": declared_name,
                "differences": differences,
            }));
            work.commit().await?;
            return Ok(differences);
        };
        let previous = work.tx.latest_inventory(server).await?.0;
        let previous_observed = previous
            .as_ref()
            .and_then(|record| serde_json::from_str::<Inventory>(&record.inventory_json).ok())
            .map(|inventory| observed_from_inventory(&inventory));
        let differences = if previous_observed.as_ref() == Some(&observed) {
            // Unchanged since the last report: the mismatches were recorded then.
            previous
                .as_ref()
                .and_then(|record| serde_json::from_str(&record.mismatches_json).ok())
                .unwrap_or_default()
        } else {
            agent_observation(&mut work, server, observed).await?
        };
        work.tx
            .insert_inventory(&InventoryRecord {
                server_id: Some(server),
                agent_id: agent.agent.id,
                reported_at: now,
                inventory_json: canonical,
                mismatches_json: serde_json::to_string(&differences)
                    .map_err(|error| AppError::internal(error.to_string()))?,
            })
            .await?;
        work.commit().await?;
        Ok(differences)
    }

    /// A server's latest inventory.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`] for another agency's server.
    pub async fn inventory_for(
        &self,
        caller: &Caller,
        server: ServerId,
    ) -> Result<InventoryView, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.server(server).await?;
        caller.check_agency(record.agency_id, &format!("server {server}"))?;
        let (latest, reports) = tx.latest_inventory(server).await?;
        Ok(InventoryView { latest, reports })
    }

    /// The reason for a hold, checked before the hold is set: required, and the caller
    /// must be ADMIN, KABID_TIK or KASI_INFRAS (whether the caller may read the server's
    /// repository at all is the transport's check, as for every browse).
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for a blank reason.
    pub fn check_snapshot_hold(&self, caller: &Caller, reason: &str) -> Result<String, AppError> {
        if !HOLD_ROLES.iter().any(|role| caller.has(*role)) {
            return Err(AppError::forbidden(
                "only ADMIN, KABID_TIK or KASI_INFRAS may hold a snapshot or release it",
            ));
        }
        super::required("the reason for the hold", reason)
    }

    /// The reason for an erasure, checked before anything is read: required, and the
    /// caller must be ADMIN or KABID_TIK (whether the caller may read the server's
    /// repository at all is the transport's check, as for every browse).
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for a blank reason.
    pub fn check_erasure(&self, caller: &Caller, reason: &str) -> Result<String, AppError> {
        if !ERASE_ROLES.iter().any(|role| caller.has(*role)) {
            return Err(AppError::forbidden(
                "only ADMIN or KABID_TIK may take files out of a server's backups",
            ));
        }
        super::required("the reason for the erasure", reason)
    }

    /// Records an erasure in the audit trail (see [`Erasure`] for what is kept).
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; catalog errors.
    pub async fn record_erasure(
        &self,
        username: &str,
        erasure: &Erasure,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&ERASE_ROLES, "take files out of a server's backups")?;
        let entry = work.audit("snapshot.erase", "server", erasure.server);
        entry.before = Some(serde_json::json!({
            "snapshots": erasure.replaced.iter().map(|(from, _)| from).collect::<Vec<_>>(),
        }));
        entry.after = Some(serde_json::json!({
            "replaced": erasure
                .replaced
                .iter()
                .map(|(from, to)| serde_json::json!({ "from": from, "to": to }))
                .collect::<Vec<_>>(),
            "patterns": erasure.patterns,
            "entries_removed": erasure.entries,
            "replica": erasure.replica,
            "replica_snapshots_changed": erasure.replica_changed,
            "bytes_marked": erasure.bytes_marked,
            "notes": erasure.notes,
            "remaining": erasure.remaining,
            "reason": erasure.reason,
        }));
        work.commit().await
    }

    /// Records a hold set on a server's snapshot (or released) in the audit trail, with
    /// the snapshot before and after and the reason.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; catalog errors.
    pub async fn record_snapshot_hold(
        &self,
        username: &str,
        hold: &SnapshotHold,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&HOLD_ROLES, "hold a snapshot or release it")?;
        let action = if hold.held {
            "snapshot.hold"
        } else {
            "snapshot.release"
        };
        let entry = work.audit(action, "server", hold.server);
        entry.before = Some(serde_json::json!({ "snapshot": hold.snapshot }));
        entry.after = Some(serde_json::json!({
            "snapshot": hold.now_snapshot,
            "held": hold.held,
            "changed": hold.changed,
            "reason": hold.reason,
        }));
        work.commit().await
    }

    /// Queues a restore of a server's snapshot to an agent of the same agency. ADMIN,
    /// KASI_INFRAS or PETUGAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`], also for a target of another agency;
    /// [`AppError::NotFound`]; [`AppError::InvalidInput`] for a relative target or bad
    /// paths; [`AppError::Conflict`] when the target server has no enrolled agent.
    pub async fn start_restore(
        &self,
        caller: &Caller,
        restore: StartRestore,
        now: DateTime<Utc>,
    ) -> Result<RestoreRecord, AppError> {
        let username = caller.account.username.clone();
        let mut work = self.work(&username, now).await?;
        work.require(&RESTORE_ROLES, "start restores")?;
        let source = work.tx.server(restore.server_id).await?;
        caller.check_agency(source.agency_id, &format!("server {}", source.id))?;
        if restore.dry_run && restore.request_id.is_some() {
            return Err(AppError::invalid(
                "a dry run is no attempt of a restore request: start it without --request",
            ));
        }
        if let Some(plan) = restore.plan_id {
            super::plans::restic_source(&mut work.tx, plan, source.agency_id).await?;
            if restore.delete {
                return Err(AppError::invalid(
                    crate::remote::restic::DELETE_NEEDS_CADANG,
                ));
            }
        }
        let target = work.tx.server(restore.target_server_id).await?;
        if target.agency_id != source.agency_id {
            return Err(AppError::forbidden(format!(
                "server {} belongs to another agency than server {}: a restore never crosses agencies",
                target.id, source.id
            )));
        }
        let target_dir = restore.target_dir.trim();
        if !target_dir.starts_with('/')
            || target_dir.split('/').any(|part| part == "..")
            || target_dir.len() > 4096
            || target_dir.contains('\0')
        {
            return Err(AppError::invalid(
                "the target directory must be an absolute path without `..`",
            ));
        }
        for path in &restore.paths {
            if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
                return Err(AppError::invalid(format!(
                    "`{path}`: restore paths are absolute paths as backed up, without `..`"
                )));
            }
        }
        super::plans::check_excludes(&restore.excludes)?;
        let snapshot = restore.snapshot.trim();
        let snapshot = if snapshot.is_empty() {
            "latest"
        } else {
            snapshot
        };
        if snapshot != "latest"
            && (!(4..=64).contains(&snapshot.len())
                || !snapshot.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(AppError::invalid(
                "the snapshot is `latest` or an id (at least 4 hex digits)",
            ));
        }
        let has_agent = work
            .tx
            .agents(Some(target.agency_id))
            .await?
            .iter()
            .any(|agent| {
                agent.server_id == Some(target.id)
                    && agent.enrolled_at.is_some()
                    && agent.revoked_at.is_none()
            });
        if !has_agent {
            return Err(AppError::Conflict(format!(
                "server {} has no enrolled agent to restore to",
                target.id
            )));
        }
        if let Some(request) = restore.request_id {
            let record = work.tx.request(request).await?;
            if record.agency_id != source.agency_id {
                return Err(AppError::forbidden(format!(
                    "request {request} belongs to another agency"
                )));
            }
        }
        let record = work
            .tx
            .insert_restore(
                &NewRestore {
                    agency_id: source.agency_id,
                    server_id: source.id,
                    target_server_id: target.id,
                    snapshot: snapshot.to_owned(),
                    paths_json: serde_json::to_string(&restore.paths)
                        .map_err(|error| AppError::internal(error.to_string()))?,
                    excludes_json: serde_json::to_string(&restore.excludes)
                        .map_err(|error| AppError::internal(error.to_string()))?,
                    overwrite: restore.overwrite.name().to_owned(),
                    delete: restore.delete,
                    dry_run: restore.dry_run,
                    target_dir: target_dir.to_owned(),
                    request_id: restore.request_id,
                    requested_by: username,
                    attempt: None,
                    use_replica: false,
                    check_json: None,
                    plan_id: restore.plan_id,
                },
                now,
            )
            .await?;
        work.audit("restore.start", "restore", record.id).after = Some(serde_json::json!({
            "server": record.server_id, "target_server": record.target_server_id,
            "plan": record.plan_id,
            "snapshot": record.snapshot, "paths": restore.paths, "excludes": restore.excludes,
            "overwrite": record.overwrite, "delete": record.delete, "dry_run": record.dry_run,
            "target_dir": record.target_dir,
            "request": record.request_id,
        }));
        work.commit().await?;
        Ok(record)
    }

    /// One restore.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`] for another agency's.
    pub async fn restore_for(
        &self,
        caller: &Caller,
        id: RestoreId,
    ) -> Result<RestoreRecord, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.restore(id).await?;
        caller.check_agency(record.agency_id, &format!("restore {id}"))?;
        Ok(record)
    }

    /// Restores the caller may see, newest first.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for another agency.
    pub async fn restores_for(
        &self,
        caller: &Caller,
        agency: Option<AgencyId>,
        limit: i64,
    ) -> Result<Vec<RestoreRecord>, AppError> {
        if let Some(agency) = agency {
            caller.check_agency(agency, &format!("agency {agency}"))?;
        }
        let agency = agency.or(caller.confined_to());
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.restores(agency, limit.clamp(1, 1000)).await?)
    }

    /// A server (for the caller), with its agency's code (which names the repository).
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`] for another agency's server.
    pub async fn server_with_agency_code(
        &self,
        caller: &Caller,
        server: ServerId,
    ) -> Result<(crate::catalog::Server, String), AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.server(server).await?;
        caller.check_agency(record.agency_id, &format!("server {server}"))?;
        let agency = tx.agency(record.agency_id).await?;
        Ok((record, agency.code))
    }

    /// The code of an agency (names its repository).
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn agency_code(&self, agency: AgencyId) -> Result<String, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.agency(agency).await?.code)
    }

    /// Claims the oldest restore whose target server satisfies `here` (its agent is
    /// connected to this daemon). A restore still queued `agent_wait` after it was
    /// queued fails with the reason: its agent did not connect to any daemon in time,
    /// and a request's plan can go on to its fallback steps (an alternate target).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn claim_restore(
        &self,
        owner: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
        here: &(dyn Fn(ServerId) -> bool + Sync),
        agent_wait: TimeDelta,
    ) -> Result<Option<RestoreRecord>, AppError> {
        let mut tx = self.catalog().begin().await?;
        let mut stale = Vec::new();
        for candidate in tx.claimable_restores(now).await? {
            if !here(candidate.target_server_id) {
                if candidate.status == "queued" && now - candidate.queued_at >= agent_wait {
                    stale.push(candidate);
                }
                continue;
            }
            if tx
                .claim_restore(candidate.id, owner, now + lease, now)
                .await?
            {
                let claimed = tx.restore(candidate.id).await?;
                tx.commit().await?;
                return Ok(Some(claimed));
            }
        }
        drop(tx);
        for restore in stale {
            self.fail_unreached_restore(&restore, owner, agent_wait, now)
                .await?;
        }
        Ok(None)
    }

    /// Fails a queued restore whose target's agent stayed away, with the notification and
    /// audit row of any failed restore.
    async fn fail_unreached_restore(
        &self,
        restore: &RestoreRecord,
        owner: &str,
        agent_wait: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.system_work(&format!("daemon:{owner}"), now).await?;
        let target = work.tx.server(restore.target_server_id).await?;
        let error = format!(
            "the agent of server {} did not connect within {} minute(s) of the restore being queued",
            target.name,
            agent_wait.num_minutes().max(1)
        );
        if !work
            .tx
            .end_queued_restore(restore.id, "failed", &error, now)
            .await?
        {
            // Claimed or cancelled meanwhile.
            return Ok(());
        }
        let record = work.tx.restore(restore.id).await?;
        let agency = work.tx.agency(record.agency_id).await?;
        if let Some(event) =
            super::notify::restore_event(&record, "failed", &serde_json::Value::Null, &agency.code)
        {
            super::notify::queue_event(&mut work.tx, &self.config().notify_channels, &event, now)
                .await?;
        }
        work.audit("restore.finish", "restore", restore.id).after = Some(serde_json::json!({
            "status": "failed",
            "error": error,
        }));
        work.commit().await?;
        tracing::warn!(restore = %restore.id, server = %target.name, "restore failed: its agent did not connect in time");
        Ok(())
    }

    /// Extends a restore's lease; `false` when it was lost.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn renew_restore_lease(
        &self,
        id: RestoreId,
        owner: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let mut tx = self.catalog().begin().await?;
        let renewed = tx.renew_restore_lease(id, owner, now + lease).await?;
        tx.commit().await?;
        Ok(renewed)
    }

    /// Records a running restore's progress.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn restore_progress(
        &self,
        id: RestoreId,
        owner: &str,
        snapshot: &str,
        stats: &serde_json::Value,
    ) -> Result<(), AppError> {
        let mut tx = self.catalog().begin().await?;
        tx.restore_progress(id, owner, snapshot, &stats.to_string())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how a restore ended, with an audit row; `false` when the lease was lost.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn finish_restore(
        &self,
        id: RestoreId,
        owner: &str,
        end: &RestoreEnd,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let mut work = self.system_work(&format!("daemon:{owner}"), now).await?;
        let stats: serde_json::Value =
            serde_json::from_str(&end.stats_json).unwrap_or(serde_json::Value::Null);
        let snapshot = stats
            .get("snapshot")
            .and_then(serde_json::Value::as_str)
            .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if !work
            .tx
            .finish_restore(
                id,
                owner,
                &crate::catalog::FinishedRestore {
                    status: &end.status,
                    stats_json: &end.stats_json,
                    error: end.error.as_deref(),
                    snapshot,
                },
                now,
            )
            .await?
        {
            return Ok(false);
        }
        let record = work.tx.restore(id).await?;
        let agency = work.tx.agency(record.agency_id).await?;
        if let Some(event) =
            super::notify::restore_event(&record, &end.status, &stats, &agency.code)
        {
            super::notify::queue_event(&mut work.tx, &self.config().notify_channels, &event, now)
                .await?;
        }
        work.audit("restore.finish", "restore", id).after = Some(serde_json::json!({
            "status": end.status,
            "files_verified": stats.get("files_verified"),
            "files_failed": stats.get("files_failed"),
            "repaired": stats.get("repaired"),
            "error": end.error,
        }));
        work.commit().await?;
        Ok(true)
    }

    /// Hands a running run back to the queue (this daemon stops; the next claim resumes
    /// it); `false` when the lease was lost.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn release_run(
        &self,
        run: RunId,
        owner: &str,
        stats: &str,
    ) -> Result<bool, AppError> {
        let mut tx = self.catalog().begin().await?;
        let released = tx.release_run(run, owner, stats).await?;
        tx.commit().await?;
        Ok(released)
    }

    /// Records a running run's live progress (visible in `cadang run show`).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn run_progress(
        &self,
        run: RunId,
        owner: &str,
        stats: &serde_json::Value,
    ) -> Result<(), AppError> {
        let mut tx = self.catalog().begin().await?;
        tx.run_progress(run, owner, &stats.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }
}
