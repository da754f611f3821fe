//! The asset register (record #3 of the SOP): entering servers at the A7 handover after
//! comparing the declared specification (form 3) with the observed one, recording every
//! mismatch; withdrawing them; later agent reports; registering servers that predate
//! cadang; and the audited reveal of a sealed host admin password.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::audit::json;
use super::details::{ColocationApplication, DeclaredServer, Validity, WithdrawalApplication};
use super::identifiers::{DomainName, parse_server_ip};
use super::secrets::{HOST_ADMIN_PASSWORD, SecretString};
use super::{App, AppError, Work, optional, required};
use crate::catalog::{
    AgencyId, AllocationStatus, HardwareSpec, NewAllocation, NewMismatch, NewObservation,
    NewServer, ObservationSource, RackId, RequestId, Server, ServerId, ServerStatus, UplinkId,
};
use crate::workflow::{Role, SystemAction, Trigger};

/// A server's specification as seen by an officer at the handover, or reported by the
/// agent. `None` means "not observed" (nothing to compare).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedServer {
    /// The name, to match a declared server when the serial number is not readable.
    pub name: Option<String>,
    /// S/N.
    pub serial_number: Option<String>,
    /// Type.
    pub server_type: Option<String>,
    /// Brand.
    pub brand: Option<String>,
    /// Processor.
    pub processor: Option<String>,
    /// RAM.
    pub ram: Option<String>,
    /// Motherboard.
    pub motherboard: Option<String>,
    /// Storage.
    pub storage: Option<String>,
    /// PSU.
    pub psu: Option<String>,
    /// Height in U.
    pub u_size: Option<i64>,
    /// Power draw in W.
    pub power_draw_w: Option<i64>,
    /// IP addresses configured.
    pub ip_addresses: Option<Vec<String>>,
}

/// One difference between what was declared and what was observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecDifference {
    /// The server (declared name, else the observed name or S/N).
    pub server_name: String,
    /// The field (`ram`, `serial_number`, … or `presence`).
    pub field: String,
    /// Declared value.
    pub declared: Option<String>,
    /// Observed value.
    pub observed: Option<String>,
}

/// A server already in the room when cadang was installed.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterServer {
    /// Owner.
    pub agency_id: AgencyId,
    /// Name.
    pub name: String,
    /// Hardware.
    pub hardware: HardwareSpec,
    /// IP addresses.
    pub ip_addresses: Vec<String>,
    /// Domain or sub-domain.
    pub domain: Option<String>,
    /// Domain activation date.
    pub domain_activated_on: Option<NaiveDate>,
    /// Rack and lowest U, if racked.
    pub placement: Option<(RackId, i64)>,
    /// Uplink carrying its bandwidth.
    pub uplink_id: Option<UplinkId>,
    /// Height in U.
    pub u_size: i64,
    /// Power draw in W.
    pub power_draw_w: i64,
    /// Bandwidth in Mbps.
    pub bandwidth_mbps: i64,
    /// Permanent or temporary.
    pub validity: Validity,
    /// Host admin user.
    pub host_admin_user: Option<String>,
    /// Host admin password (sealed before storage).
    pub host_admin_password: Option<SecretString>,
    /// Contact person.
    pub contact: Option<String>,
}

/// Text compared loosely: case and spaces do not count ("16 GB" = "16gb").
fn loose(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

fn canonical_ips(ips: &[String]) -> Result<Vec<String>, AppError> {
    let mut canonical: Vec<String> = Vec::with_capacity(ips.len());
    for ip in ips {
        let address = parse_server_ip(ip).map_err(|error| AppError::invalid(error.to_string()))?;
        let text = address.to_string();
        if !canonical.contains(&text) {
            canonical.push(text);
        }
    }
    canonical.sort();
    Ok(canonical)
}

/// The declared values of a server, by field name, for comparison.
fn declared_fields(
    hardware: &HardwareSpec,
    u_size: i64,
    power_w: i64,
    ips: &[String],
) -> Vec<(&'static str, String)> {
    let mut sorted_ips = ips.to_vec();
    sorted_ips.sort();
    vec![
        ("serial_number", hardware.serial_number.clone()),
        ("server_type", hardware.server_type.clone()),
        ("brand", hardware.brand.clone()),
        ("processor", hardware.processor.clone()),
        ("ram", hardware.ram.clone()),
        ("motherboard", hardware.motherboard.clone()),
        ("storage", hardware.storage.clone()),
        ("psu", hardware.psu.clone()),
        ("u_size", u_size.to_string()),
        ("power_draw_w", power_w.to_string()),
        ("ip_addresses", sorted_ips.join(", ")),
    ]
}

fn observed_field(observed: &ObservedServer, field: &str) -> Option<String> {
    match field {
        "serial_number" => observed.serial_number.clone(),
        "server_type" => observed.server_type.clone(),
        "brand" => observed.brand.clone(),
        "processor" => observed.processor.clone(),
        "ram" => observed.ram.clone(),
        "motherboard" => observed.motherboard.clone(),
        "storage" => observed.storage.clone(),
        "psu" => observed.psu.clone(),
        "u_size" => observed.u_size.map(|u| u.to_string()),
        "power_draw_w" => observed.power_draw_w.map(|w| w.to_string()),
        "ip_addresses" => observed.ip_addresses.as_ref().map(|ips| {
            let mut sorted = ips.clone();
            sorted.sort();
            sorted.join(", ")
        }),
        _ => None,
    }
    .map(|value| value.trim().to_owned())
    .filter(|value| !value.is_empty())
}

/// Compares one declared server with its observation: every observed field that differs.
fn compare_one(
    name: &str,
    declared: &[(&'static str, String)],
    observed: &ObservedServer,
) -> Vec<SpecDifference> {
    declared
        .iter()
        .filter_map(|(field, declared_value)| {
            let observed_value = observed_field(observed, field)?;
            (loose(declared_value) != loose(&observed_value)).then(|| SpecDifference {
                server_name: name.to_owned(),
                field: (*field).to_owned(),
                declared: Some(declared_value.clone()),
                observed: Some(observed_value),
            })
        })
        .collect()
}

/// Matches observations to declared servers (by serial number, then by name) and lists
/// every difference, including declared servers not found and servers found but not
/// declared. Returns, per declared server, the index of its observation.
pub(crate) fn compare_specs(
    declared: &[DeclaredServer],
    observed: &[ObservedServer],
) -> (Vec<Option<usize>>, Vec<SpecDifference>) {
    let mut used = vec![false; observed.len()];
    let mut matched: Vec<Option<usize>> = Vec::with_capacity(declared.len());
    for server in declared {
        let by_serial = observed.iter().enumerate().position(|(index, seen)| {
            !used[index]
                && seen
                    .serial_number
                    .as_deref()
                    .is_some_and(|serial| loose(serial) == loose(&server.hardware.serial_number))
        });
        let found = by_serial.or_else(|| {
            observed.iter().enumerate().position(|(index, seen)| {
                !used[index]
                    && seen
                        .name
                        .as_deref()
                        .is_some_and(|name| loose(name) == loose(&server.name))
            })
        });
        if let Some(index) = found {
            used[index] = true;
        }
        matched.push(found);
    }
    let mut differences = Vec::new();
    for (server, found) in declared.iter().zip(&matched) {
        match found {
            Some(index) => {
                let fields = declared_fields(
                    &server.hardware,
                    server.u_size,
                    server.power_draw_w,
                    &server.ip_addresses,
                );
                differences.extend(compare_one(&server.name, &fields, &observed[*index]));
            }
            None => differences.push(SpecDifference {
                server_name: server.name.clone(),
                field: "presence".into(),
                declared: Some("dideklarasikan / declared".into()),
                observed: Some("tidak ditemukan / not found".into()),
            }),
        }
    }
    for (index, seen) in observed.iter().enumerate() {
        if !used[index] {
            differences.push(SpecDifference {
                server_name: seen
                    .name
                    .clone()
                    .or_else(|| seen.serial_number.clone())
                    .unwrap_or_else(|| format!("observed #{}", index + 1)),
                field: "presence".into(),
                declared: Some("tidak dideklarasikan / not declared".into()),
                observed: Some("ditemukan / found".into()),
            });
        }
    }
    (matched, differences)
}

fn pick(observed: Option<&String>, declared: &str) -> String {
    observed
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
        .unwrap_or(declared)
        .to_owned()
}

/// Puts what an agent measured over what an officer saw, field by field.
fn merge_measurement(seen: &mut ObservedServer, measured: ObservedServer) {
    macro_rules! take {
        ($($field:ident),*) => {
            $(if measured.$field.is_some() {
                seen.$field = measured.$field;
            })*
        };
    }
    if seen.name.is_none() {
        seen.name = measured.name.clone();
    }
    take!(
        serial_number,
        server_type,
        brand,
        processor,
        ram,
        motherboard,
        storage,
        psu,
        u_size,
        power_draw_w,
        ip_addresses
    );
}

/// Normalizes an observation as entered (IPs canonical, blanks dropped).
fn normalize_observation(observed: ObservedServer) -> Result<ObservedServer, AppError> {
    let clean = |value: &Option<String>| optional(value);
    if observed.u_size.is_some_and(|u| u < 0) || observed.power_draw_w.is_some_and(|w| w < 0) {
        return Err(AppError::invalid(
            "observed height and power draw cannot be negative",
        ));
    }
    Ok(ObservedServer {
        name: clean(&observed.name),
        serial_number: clean(&observed.serial_number),
        server_type: clean(&observed.server_type),
        brand: clean(&observed.brand),
        processor: clean(&observed.processor),
        ram: clean(&observed.ram),
        motherboard: clean(&observed.motherboard),
        storage: clean(&observed.storage),
        psu: clean(&observed.psu),
        u_size: observed.u_size,
        power_draw_w: observed.power_draw_w,
        ip_addresses: observed
            .ip_addresses
            .as_deref()
            .map(canonical_ips)
            .transpose()?,
    })
}

/// Records a specification measured on a registered server (by its agent) in `work`,
/// compares it with the register and records every mismatch. Returns the differences.
pub(crate) async fn agent_observation(
    work: &mut Work<'_>,
    server: ServerId,
    observed: ObservedServer,
) -> Result<Vec<SpecDifference>, AppError> {
    let registered = work.tx.server(server).await?;
    let observed = normalize_observation(observed)?;
    let fields = declared_fields(
        &registered.hardware,
        registered.u_size,
        registered.power_draw_w,
        &registered.ip_addresses,
    );
    let differences = compare_one(&registered.name, &fields, &observed);
    let spec_json =
        serde_json::to_string(&observed).map_err(|error| AppError::internal(error.to_string()))?;
    let id = work
        .tx
        .insert_observation(&NewObservation {
            request_id: None,
            server_id: Some(server),
            source: ObservationSource::Agent,
            observed_by: work.actor_name.clone(),
            observed_at: work.now,
            spec_json,
        })
        .await?;
    for difference in &differences {
        work.tx
            .insert_mismatch(&NewMismatch {
                request_id: None,
                server_id: Some(server),
                server_name: difference.server_name.clone(),
                field: difference.field.clone(),
                declared: difference.declared.clone(),
                observed: difference.observed.clone(),
                source: ObservationSource::Agent,
                detected_at: work.now,
            })
            .await?;
    }
    work.audit("asset.agent_report", "server", server).after = Some(serde_json::json!({
        "observation": id,
        "mismatches": differences,
    }));
    Ok(differences)
}

/// A7 (on completion): compares the officer's observation with the declared servers,
/// records the mismatches, enters the delivered servers in the register, hands their
/// reserved capacity over to them, and releases what undelivered servers had reserved.
pub(crate) async fn register_handover(
    work: &mut Work<'_>,
    request: RequestId,
    agency: AgencyId,
    application: &ColocationApplication,
) -> Result<Vec<Server>, AppError> {
    let officer = work.tx.latest_observation_for_request(request).await?;
    let measured = work.tx.agent_observations_for_request(request).await?;
    if officer.is_none() && measured.is_empty() {
        return Err(AppError::invalid(format!(
            "request {request}: enter the observed specification of the servers (record_handover_observation), or enrol their agents (agent enroll-token --request), before completing the handover step"
        )));
    }
    let mut observed: Vec<ObservedServer> = match &officer {
        Some(observation) => serde_json::from_str(&observation.spec_json).map_err(|error| {
            AppError::internal(format!("observation {}: {error}", observation.id))
        })?,
        None => Vec::new(),
    };
    // What an agent measured replaces what was seen by eye, field by field; the latest
    // measurement of each server counts.
    for observation in &measured {
        let reported: Vec<ObservedServer> =
            serde_json::from_str(&observation.spec_json).map_err(|error| {
                AppError::internal(format!("observation {}: {error}", observation.id))
            })?;
        // An agent's measurement carries its declared server's name; the officer's entry
        // for that server is the one the comparison matches to it (by S/N or name).
        let (matched, _) = compare_specs(&application.servers, &observed);
        for agent_seen in reported {
            let slot = application
                .servers
                .iter()
                .position(|declared| agent_seen.name.as_deref() == Some(declared.name.as_str()))
                .and_then(|position| matched.get(position).copied().flatten());
            match slot {
                Some(index) => merge_measurement(&mut observed[index], agent_seen),
                None => observed.push(agent_seen),
            }
        }
    }
    let (matched, differences) = compare_specs(&application.servers, &observed);

    let reservations = work.tx.allocations_for_request(request).await?;
    let mut servers = Vec::new();
    for (declared, found) in application.servers.iter().zip(&matched) {
        let Some(index) = found else { continue };
        let seen = &observed[*index];
        let reservation = reservations.iter().find(|allocation| {
            allocation.status == AllocationStatus::Reserved
                && allocation.server_name == declared.name
                && allocation.rack_id.is_some()
        });
        let noc = match reservation.and_then(|allocation| allocation.rack_id) {
            Some(rack) => Some(work.tx.rack(rack).await?.noc),
            None => None,
        };
        let hardware = HardwareSpec {
            serial_number: pick(
                seen.serial_number.as_ref(),
                &declared.hardware.serial_number,
            ),
            server_type: pick(seen.server_type.as_ref(), &declared.hardware.server_type),
            brand: pick(seen.brand.as_ref(), &declared.hardware.brand),
            processor: pick(seen.processor.as_ref(), &declared.hardware.processor),
            ram: pick(seen.ram.as_ref(), &declared.hardware.ram),
            motherboard: pick(seen.motherboard.as_ref(), &declared.hardware.motherboard),
            storage: pick(seen.storage.as_ref(), &declared.hardware.storage),
            psu: pick(seen.psu.as_ref(), &declared.hardware.psu),
        };
        let (permanent, temporary_until) = match application.validity {
            Validity::Permanent => (true, None),
            Validity::Temporary { until } => (false, Some(until)),
        };
        // The register holds what is actually in the room: observed values where the
        // officer saw them, declared ones otherwise; the differences are recorded below.
        let server = work
            .tx
            .insert_server(&NewServer {
                agency_id: agency,
                request_id: Some(request),
                name: declared.name.clone(),
                hardware,
                ip_addresses: seen
                    .ip_addresses
                    .clone()
                    .unwrap_or_else(|| declared.ip_addresses.clone()),
                domain: Some(application.domain.clone()),
                domain_activated_on: application.domain_activation_date,
                noc,
                rack_id: reservation.and_then(|allocation| allocation.rack_id),
                u_position: reservation.and_then(|allocation| allocation.u_start),
                u_size: seen.u_size.unwrap_or(declared.u_size),
                power_draw_w: seen.power_draw_w.unwrap_or(declared.power_draw_w),
                bandwidth_mbps: declared.bandwidth_mbps,
                permanent,
                temporary_until,
                host_admin_user: declared.host_admin_user.clone(),
                host_admin_secret_id: declared.host_admin_secret,
                contact: application.contact_person.clone(),
                registered_at: work.now,
            })
            .await
            .map_err(|error| match AppError::from(error) {
                AppError::Conflict(_) => AppError::Conflict(format!(
                    "server `{}`: an active server with serial number {} is already in the register",
                    declared.name, declared.hardware.serial_number
                )),
                other => other,
            })?;
        if let Some(allocation) = reservation {
            work.tx
                .activate_allocation(allocation.id, server.id)
                .await?;
        }
        work.audit("asset.register", "server", server.id).after = Some(json(&server));
        // Agents enrolled at the handover now serve the registered server.
        let bound = work
            .tx
            .bind_handover_agents(request, &declared.name, server.id)
            .await?;
        if bound > 0 {
            work.audit("agent.bind", "server", server.id).after =
                Some(serde_json::json!({ "request": request, "agents": bound }));
        }
        servers.push(server);
    }
    for difference in &differences {
        let server_id = servers
            .iter()
            .find(|server| server.name == difference.server_name)
            .map(|server| server.id);
        work.tx
            .insert_mismatch(&NewMismatch {
                request_id: Some(request),
                server_id,
                server_name: difference.server_name.clone(),
                field: difference.field.clone(),
                declared: difference.declared.clone(),
                observed: difference.observed.clone(),
                source: ObservationSource::Officer,
                detected_at: work.now,
            })
            .await?;
    }
    // Servers that were declared but not delivered give their reservation back.
    let released = work
        .tx
        .release_request_reservations(request, work.now)
        .await?;
    work.audit("asset.handover_check", "request", request).after = Some(serde_json::json!({
        "observation": officer.as_ref().map(|observation| observation.id),
        "agent_observations": measured.iter().map(|observation| observation.id).collect::<Vec<_>>(),
        "servers_registered": servers.iter().map(|server| server.id).collect::<Vec<_>>(),
        "mismatches": differences,
        "released_allocations": released,
    }));
    Ok(servers)
}

/// Withdrawal (on completion of the physical withdrawal): marks the server withdrawn and
/// releases everything it held.
pub(crate) async fn register_withdrawal(
    work: &mut Work<'_>,
    application: &WithdrawalApplication,
) -> Result<Server, AppError> {
    let before = work.tx.server(application.server_id).await?;
    work.tx
        .withdraw_server(application.server_id, work.now)
        .await?;
    let released = work
        .tx
        .release_server_allocations(application.server_id, work.now)
        .await?;
    let after = work.tx.server(application.server_id).await?;
    let entry = work.audit("asset.withdraw", "server", application.server_id);
    entry.before = Some(json(&before));
    entry.after = Some(serde_json::json!({
        "server": json(&after),
        "released_allocations": released,
    }));
    Ok(after)
}

impl App {
    /// Records the specification an officer observed at the handover (A7), before the
    /// step is completed. Allowed to the roles of the request's current step, which must be
    /// the step that updates the asset register.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::Conflict`] when the request is not at that
    /// step; [`AppError::InvalidInput`] for an empty list or a bad IP address.
    pub async fn record_handover_observation(
        &self,
        username: &str,
        request: RequestId,
        observed: Vec<ObservedServer>,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let registry = self.registry();
        let mut work = self.work(username, now).await?;
        let record = work.tx.request_for_update(request).await?;
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let step = record
            .state
            .current_step()
            .and_then(|current| definition.step(current))
            .filter(|step| {
                step.actions_on(Trigger::Complete)
                    .any(|action| action == SystemAction::UpdateAssetRegister)
            })
            .ok_or_else(|| {
                AppError::Conflict(format!(
                    "request {request} is not at the step where the servers are checked and registered"
                ))
            })?;
        let roles = step.roles.clone();
        work.require(&roles, "record what was observed at this step")?;
        if observed.is_empty() {
            return Err(AppError::invalid("list at least one observed server"));
        }
        let observed = observed
            .into_iter()
            .map(normalize_observation)
            .collect::<Result<Vec<_>, _>>()?;
        let spec_json = serde_json::to_string(&observed)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let id = work
            .tx
            .insert_observation(&NewObservation {
                request_id: Some(request),
                server_id: None,
                source: ObservationSource::Officer,
                observed_by: username.to_owned(),
                observed_at: now,
                spec_json,
            })
            .await?;
        work.audit("asset.observe", "request", request).after =
            Some(serde_json::json!({ "observation": id, "observed": observed }));
        work.commit().await?;
        Ok(())
    }

    /// Records a specification reported by the agent on a registered server, comparing it
    /// with the register and recording every mismatch. Returns the differences.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown server; [`AppError::InvalidInput`] for a bad
    /// IP address.
    pub async fn record_agent_observation(
        &self,
        agent: &str,
        server: ServerId,
        observed: ObservedServer,
        now: DateTime<Utc>,
    ) -> Result<Vec<SpecDifference>, AppError> {
        let agent = required("the agent name", agent)?;
        let mut work = self.system_work(&format!("agent:{agent}"), now).await?;
        let differences = agent_observation(&mut work, server, observed).await?;
        work.commit().await?;
        Ok(differences)
    }

    /// Enters a server that was colocated before cadang, with its rack placement (checked
    /// against the capacity model under lock). ADMIN or KASI_INFRAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for bad fields, IPs or domain;
    /// [`AppError::Conflict`] when the placement overlaps another allocation or exceeds a
    /// budget, or the serial number is active already.
    pub async fn register_server(
        &self,
        username: &str,
        server: RegisterServer,
        now: DateTime<Utc>,
    ) -> Result<Server, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&[Role::Admin, Role::KasiInfras], "register servers")?;
        work.tx.agency(server.agency_id).await?;
        let name = required("the server name", &server.name)?;
        let label = format!("server {name}");
        let hardware = HardwareSpec {
            serial_number: required(
                &format!("{label}: the serial number"),
                &server.hardware.serial_number,
            )?,
            server_type: required(&format!("{label}: the type"), &server.hardware.server_type)?,
            brand: required(&format!("{label}: the brand"), &server.hardware.brand)?,
            processor: server.hardware.processor.trim().to_owned(),
            ram: server.hardware.ram.trim().to_owned(),
            motherboard: server.hardware.motherboard.trim().to_owned(),
            storage: server.hardware.storage.trim().to_owned(),
            psu: server.hardware.psu.trim().to_owned(),
        };
        let ip_addresses = canonical_ips(&server.ip_addresses)?;
        let domain = match optional(&server.domain) {
            Some(domain) => Some(
                DomainName::parse(&domain)
                    .map_err(|error| AppError::invalid(error.to_string()))?
                    .as_str()
                    .to_owned(),
            ),
            None => None,
        };
        if server.u_size < 1 || server.power_draw_w < 0 || server.bandwidth_mbps < 0 {
            return Err(AppError::invalid(format!(
                "{label}: height must be at least 1 U; power and bandwidth cannot be negative"
            )));
        }
        let mut noc = None;
        if let Some((rack_id, u_start)) = server.placement {
            let (_, racks, uplinks) = work.tx.lock_capacity_model().await?;
            let rack = racks
                .iter()
                .find(|rack| rack.id == rack_id)
                .ok_or_else(|| AppError::NotFound(format!("rack {rack_id} does not exist")))?;
            if let Some(uplink) = server.uplink_id
                && !uplinks.iter().any(|candidate| candidate.id == uplink)
            {
                return Err(AppError::NotFound(format!(
                    "uplink {uplink} does not exist"
                )));
            }
            if u_start < 1 || u_start + server.u_size - 1 > rack.u_size {
                return Err(AppError::invalid(format!(
                    "{label}: U{}–U{} does not fit in rack {} (U1–U{})",
                    u_start,
                    u_start + server.u_size - 1,
                    rack.name,
                    rack.u_size
                )));
            }
            let live = work.tx.live_allocations().await?;
            let end = u_start + server.u_size;
            if let Some(other) = live.iter().find(|allocation| {
                allocation.rack_id == Some(rack_id)
                    && allocation
                        .u_start
                        .is_some_and(|start| start < end && u_start < start + allocation.u_count)
            }) {
                return Err(AppError::Conflict(format!(
                    "{label}: U{}–U{} of rack {} overlaps {} (allocation {})",
                    u_start,
                    end - 1,
                    rack.name,
                    other.server_name,
                    other.id
                )));
            }
            noc = Some(rack.noc.clone());
        }
        let secret = match server
            .host_admin_password
            .filter(|password| !password.is_blank())
        {
            Some(password) => {
                if optional(&server.host_admin_user).is_none() {
                    return Err(AppError::invalid(format!(
                        "{label}: a host admin password needs its host admin user"
                    )));
                }
                Some(
                    self.sealer()
                        .store(&mut work.tx, HOST_ADMIN_PASSWORD, &password, now)
                        .await?,
                )
            }
            None => None,
        };
        let (permanent, temporary_until) = match server.validity {
            Validity::Permanent => (true, None),
            Validity::Temporary { until } => (false, Some(until)),
        };
        let stored = work
            .tx
            .insert_server(&NewServer {
                agency_id: server.agency_id,
                request_id: None,
                name,
                hardware,
                ip_addresses,
                domain,
                domain_activated_on: server.domain_activated_on,
                noc,
                rack_id: server.placement.map(|(rack, _)| rack),
                u_position: server.placement.map(|(_, u)| u),
                u_size: server.u_size,
                power_draw_w: server.power_draw_w,
                bandwidth_mbps: server.bandwidth_mbps,
                permanent,
                temporary_until,
                host_admin_user: optional(&server.host_admin_user),
                host_admin_secret_id: secret,
                contact: optional(&server.contact),
                registered_at: now,
            })
            .await?;
        if server.placement.is_some() || server.bandwidth_mbps > 0 {
            work.tx
                .insert_allocation(
                    &NewAllocation {
                        request_id: None,
                        server_id: Some(stored.id),
                        server_name: stored.name.clone(),
                        rack_id: stored.rack_id,
                        u_start: stored.u_position,
                        u_count: if stored.rack_id.is_some() {
                            stored.u_size
                        } else {
                            0
                        },
                        power_w: if stored.rack_id.is_some() {
                            stored.power_draw_w
                        } else {
                            0
                        },
                        uplink_id: server.uplink_id,
                        bandwidth_mbps: if server.uplink_id.is_some() {
                            stored.bandwidth_mbps
                        } else {
                            0
                        },
                        status: AllocationStatus::Active,
                    },
                    now,
                )
                .await?;
        }
        work.audit("asset.register", "server", stored.id).after = Some(json(&stored));
        work.commit().await?;
        Ok(stored)
    }

    /// A server of the register.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn server(&self, id: ServerId) -> Result<Server, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.server(id).await?)
    }

    /// The servers an agency owns.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn servers_of(&self, agency: AgencyId) -> Result<Vec<Server>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.servers_for_agency(agency).await?)
    }

    /// The mismatches recorded for a server (handover and agent reports).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn server_mismatches(
        &self,
        server: ServerId,
    ) -> Result<Vec<crate::catalog::Mismatch>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.mismatches_for_server(server).await?)
    }

    /// Reveals the host admin password of a server to a user holding one of the configured
    /// reveal roles, giving a reason. Every reveal — and every refused attempt — writes an
    /// audit row (without the password).
    ///
    /// # Errors
    /// [`AppError::Forbidden`] (the attempt is still audited); [`AppError::InvalidInput`]
    /// without a reason; [`AppError::NotFound`] when the server has no password;
    /// [`AppError::Internal`] when it cannot be opened (another master key).
    pub async fn reveal_host_admin_password(
        &self,
        username: &str,
        server: ServerId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<SecretString, AppError> {
        let mut work = self.work(username, now).await?;
        let allowed = self.config().reveal_roles.clone();
        if let Err(refused) = work.require(&allowed, "reveal a host admin password") {
            work.audit("secret.reveal_denied", "server", server).after = Some(serde_json::json!({
                "purpose": HOST_ADMIN_PASSWORD,
                "reason": reason.trim(),
            }));
            work.commit().await?;
            return Err(refused);
        }
        let reason = required("the reason for revealing the password", reason)?;
        let registered = work.tx.server(server).await?;
        let secret_id = registered.host_admin_secret_id.ok_or_else(|| {
            AppError::NotFound(format!("server {server} has no host admin password"))
        })?;
        let record = work.tx.secret(secret_id).await?;
        let secret = self.sealer().open(&record)?;
        work.audit("secret.reveal", "server", server).after = Some(serde_json::json!({
            "purpose": record.purpose,
            "secret": record.id,
            "host_admin_user": registered.host_admin_user,
            "reason": reason,
        }));
        work.commit().await?;
        Ok(secret)
    }

    /// Replaces the host admin password of a server (sealed). Allowed to the reveal roles.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for a blank password or a
    /// server without host admin user; [`AppError::NotFound`].
    pub async fn set_host_admin_password(
        &self,
        username: &str,
        server: ServerId,
        password: SecretString,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.work(username, now).await?;
        let allowed = self.config().reveal_roles.clone();
        work.require(&allowed, "set a host admin password")?;
        if password.is_blank() {
            return Err(AppError::invalid(
                "the host admin password must not be empty",
            ));
        }
        let registered = work.tx.server(server).await?;
        if registered.status != ServerStatus::Active || registered.host_admin_user.is_none() {
            return Err(AppError::invalid(format!(
                "server {server} is withdrawn or has no host admin user"
            )));
        }
        let secret = self
            .sealer()
            .store(&mut work.tx, HOST_ADMIN_PASSWORD, &password, now)
            .await?;
        work.tx.set_server_secret(server, secret, now).await?;
        let entry = work.audit("secret.replace", "server", server);
        entry.before = Some(serde_json::json!({ "secret": registered.host_admin_secret_id }));
        entry.after = Some(serde_json::json!({ "secret": secret }));
        work.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, serial: &str) -> DeclaredServer {
        DeclaredServer {
            name: name.into(),
            hardware: HardwareSpec {
                serial_number: serial.into(),
                server_type: "PowerEdge R740".into(),
                brand: "Dell".into(),
                processor: "Intel Xeon Silver 4214".into(),
                ram: "64 GB".into(),
                motherboard: "Dell 0WXD1Y".into(),
                storage: "2 x 1.2 TB SAS".into(),
                psu: "2 x 750 W".into(),
            },
            u_size: 2,
            power_draw_w: 450,
            bandwidth_mbps: 100,
            ip_addresses: vec!["10.1.2.3".into()],
            host_admin_user: None,
            host_admin_password: None,
            host_admin_secret: None,
        }
    }

    #[test]
    fn matching_by_serial_then_name_and_loose_text() {
        let servers = [declared("web-01", "SN-AAA"), declared("db-01", "SN-BBB")];
        let observed = [
            ObservedServer {
                name: Some("DB-01".into()),
                ram: Some("32GB".into()),
                ..Default::default()
            },
            ObservedServer {
                serial_number: Some("sn-aaa".into()),
                ram: Some("64GB".into()),
                psu: Some("2 x 750 W".into()),
                ..Default::default()
            },
        ];
        let (matched, differences) = compare_specs(&servers, &observed);
        assert_eq!(matched, vec![Some(1), Some(0)]);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert_eq!(differences[0].server_name, "db-01");
        assert_eq!(differences[0].field, "ram");
        assert_eq!(differences[0].declared.as_deref(), Some("64 GB"));
        assert_eq!(differences[0].observed.as_deref(), Some("32GB"));
    }

    #[test]
    fn missing_and_undeclared_servers_are_mismatches() {
        let servers = [declared("web-01", "SN-AAA")];
        let observed = [ObservedServer {
            serial_number: Some("SN-ZZZ".into()),
            ..Default::default()
        }];
        let (matched, differences) = compare_specs(&servers, &observed);
        assert_eq!(matched, vec![None]);
        let fields: Vec<(&str, &str)> = differences
            .iter()
            .map(|d| (d.server_name.as_str(), d.field.as_str()))
            .collect();
        assert_eq!(fields, vec![("web-01", "presence"), ("SN-ZZZ", "presence")]);
    }
}
