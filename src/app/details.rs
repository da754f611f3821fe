//! What an agency submits with a request: the application data of each procedure (form 1
//! and the declared servers for a colocation, the backup plan, the restore, the
//! withdrawal, the maintenance report), and their validation.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::identifiers::{DomainName, parse_server_ip};
use super::secrets::SecretString;
use super::{AppError, optional, required};
use crate::catalog::{AgencyId, HardwareSpec, PersonId, RequestId, SecretId, ServerId};

/// A request to open.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRequest {
    /// The requesting agency (an SKPD account may only name its own).
    pub agency_id: AgencyId,
    /// A one-line subject (*perihal*).
    pub subject: String,
    /// The application data; its kind must fit the procedure.
    pub details: RequestDetails,
}

/// How long a colocation lasts (*Masa Berlaku Co-location*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Validity {
    /// *Permanen*.
    Permanent,
    /// *Tidak permanen*, until a date.
    Temporary {
        /// The last day.
        until: NaiveDate,
    },
}

/// A server the agency declares on its application (and hands over at A7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeclaredServer {
    /// *Nama Server*.
    pub name: String,
    /// Declared hardware (form 3 columns, S/N, type and brand).
    pub hardware: HardwareSpec,
    /// Height in rack units.
    pub u_size: i64,
    /// Power draw in W.
    pub power_draw_w: i64,
    /// Bandwidth needed in Mbps.
    pub bandwidth_mbps: i64,
    /// IP addresses requested or already assigned.
    pub ip_addresses: Vec<String>,
    /// Host admin user (form 2).
    pub host_admin_user: Option<String>,
    /// Host admin password as entered; sealed when the request is stored and never
    /// serialized (it may only arrive).
    #[serde(default, skip_serializing)]
    pub host_admin_password: Option<SecretString>,
    /// The sealed password, once stored.
    pub host_admin_secret: Option<SecretId>,
}

/// Form 1 (*Formulir Pengajuan Colocation*) plus the declared servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColocationApplication {
    /// *Penanggung Jawab* (a registered person with a NIP).
    pub responsible_person: PersonId,
    /// *Kontak Number*.
    pub contact_number: String,
    /// *Nama Domain/Sub-Domain*.
    pub domain: String,
    /// *Tanggal Aktif Domain/Subdomain*.
    pub domain_activation_date: Option<NaiveDate>,
    /// *Masa Berlaku Co-location*.
    pub validity: Validity,
    /// *Contact Person* on form 2.
    pub contact_person: Option<String>,
    /// The servers to colocate.
    pub servers: Vec<DeclaredServer>,
}

/// A backup request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupApplication {
    /// The colocated server to back up, if it is one.
    pub server_id: Option<ServerId>,
    /// What to back up (paths, databases).
    pub scope: String,
    /// When (as agreed with the agency, e.g. "harian 02:00").
    pub schedule: String,
    /// How long to keep backups.
    pub retention: String,
    /// Estimated size in GB.
    pub estimated_size_gb: Option<i64>,
}

/// A restore request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreApplication {
    /// The server to restore to, if colocated.
    pub server_id: Option<ServerId>,
    /// The backup request whose data is restored, if known.
    pub backup_request: Option<RequestId>,
    /// Which backup (date or snapshot).
    pub restore_point: String,
    /// Where to restore.
    pub target: String,
    /// Why.
    pub reason: String,
}

/// A colocation withdrawal request (form 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalApplication {
    /// The server to withdraw.
    pub server_id: ServerId,
    /// Why the agency asks for it.
    pub reason: String,
}

/// A maintenance request (record #2 of the SOP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceApplication {
    /// The server concerned.
    pub server_id: Option<ServerId>,
    /// What the agency reports.
    pub description: String,
}

/// The application data of a request, by procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestDetails {
    /// Procedure A.
    Colocation(ColocationApplication),
    /// Procedure B.
    Backup(BackupApplication),
    /// Procedure C.
    Restore(RestoreApplication),
    /// The withdrawal procedure.
    Withdrawal(WithdrawalApplication),
    /// The maintenance procedure.
    Maintenance(MaintenanceApplication),
    /// A procedure this build has no application form for.
    General {
        /// Free description.
        description: String,
    },
}

impl RequestDetails {
    /// The kind's name, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            RequestDetails::Colocation(_) => "colocation",
            RequestDetails::Backup(_) => "backup",
            RequestDetails::Restore(_) => "restore",
            RequestDetails::Withdrawal(_) => "withdrawal",
            RequestDetails::Maintenance(_) => "maintenance",
            RequestDetails::General { .. } => "general",
        }
    }

    /// The server a request concerns, if any.
    pub fn server(&self) -> Option<ServerId> {
        match self {
            RequestDetails::Backup(backup) => backup.server_id,
            RequestDetails::Restore(restore) => restore.server_id,
            RequestDetails::Withdrawal(withdrawal) => Some(withdrawal.server_id),
            RequestDetails::Maintenance(maintenance) => maintenance.server_id,
            RequestDetails::Colocation(_) | RequestDetails::General { .. } => None,
        }
    }
}

/// The application kind each known procedure needs; `None` accepts any kind.
pub(crate) fn expected_kind(procedure: &str) -> Option<&'static str> {
    match procedure {
        "colocation_handover" => Some("colocation"),
        "backup_request" => Some("backup"),
        "restore_request" => Some("restore"),
        "colocation_withdrawal" => Some("withdrawal"),
        "maintenance_request" => Some("maintenance"),
        _ => None,
    }
}

/// Checks and normalizes application data that needs no catalog lookups (references are
/// checked by the caller). Blank optional texts become `None`, domains are lower-cased,
/// IP addresses canonical.
///
/// # Errors
/// [`AppError::InvalidInput`] naming the field and what is wrong with it.
pub(crate) fn normalize(details: RequestDetails) -> Result<RequestDetails, AppError> {
    Ok(match details {
        RequestDetails::Colocation(application) => {
            RequestDetails::Colocation(normalize_colocation(application)?)
        }
        RequestDetails::Backup(backup) => {
            if backup.estimated_size_gb.is_some_and(|size| size < 0) {
                return Err(AppError::invalid(
                    "the estimated backup size cannot be negative",
                ));
            }
            RequestDetails::Backup(BackupApplication {
                server_id: backup.server_id,
                scope: required("the backup scope", &backup.scope)?,
                schedule: required("the backup schedule", &backup.schedule)?,
                retention: required("the backup retention", &backup.retention)?,
                estimated_size_gb: backup.estimated_size_gb,
            })
        }
        RequestDetails::Restore(restore) => RequestDetails::Restore(RestoreApplication {
            server_id: restore.server_id,
            backup_request: restore.backup_request,
            restore_point: required("the restore point", &restore.restore_point)?,
            target: required("the restore target", &restore.target)?,
            reason: required("the reason for the restore", &restore.reason)?,
        }),
        RequestDetails::Withdrawal(withdrawal) => {
            RequestDetails::Withdrawal(WithdrawalApplication {
                server_id: withdrawal.server_id,
                reason: required("the reason for the withdrawal", &withdrawal.reason)?,
            })
        }
        RequestDetails::Maintenance(maintenance) => {
            RequestDetails::Maintenance(MaintenanceApplication {
                server_id: maintenance.server_id,
                description: required("the maintenance report", &maintenance.description)?,
            })
        }
        RequestDetails::General { description } => RequestDetails::General {
            description: required("the description", &description)?,
        },
    })
}

fn normalize_colocation(
    application: ColocationApplication,
) -> Result<ColocationApplication, AppError> {
    let domain = DomainName::parse(&application.domain)
        .map_err(|error| AppError::invalid(error.to_string()))?;
    if application.servers.is_empty() {
        return Err(AppError::invalid(
            "a colocation application must declare at least one server",
        ));
    }
    let mut servers = Vec::with_capacity(application.servers.len());
    for (index, server) in application.servers.into_iter().enumerate() {
        let label = format!("server {} ({})", index + 1, server.name.trim());
        let name = required(&format!("the name of server {}", index + 1), &server.name)?;
        if servers
            .iter()
            .any(|other: &DeclaredServer| other.name == name)
        {
            return Err(AppError::invalid(format!(
                "two declared servers are named `{name}`: server names must be unique in a request"
            )));
        }
        let hardware = normalize_hardware(&label, server.hardware)?;
        if server.u_size < 1 || server.u_size > 60 {
            return Err(AppError::invalid(format!(
                "{label}: height must be 1–60 rack units, not {}",
                server.u_size
            )));
        }
        if server.power_draw_w < 0 || server.bandwidth_mbps < 0 {
            return Err(AppError::invalid(format!(
                "{label}: power draw and bandwidth cannot be negative"
            )));
        }
        let mut ip_addresses = Vec::with_capacity(server.ip_addresses.len());
        for ip in &server.ip_addresses {
            let address = parse_server_ip(ip)
                .map_err(|error| AppError::invalid(format!("{label}: {error}")))?;
            let canonical = address.to_string();
            if !ip_addresses.contains(&canonical) {
                ip_addresses.push(canonical);
            }
        }
        let host_admin_user = optional(&server.host_admin_user);
        let host_admin_password = server
            .host_admin_password
            .filter(|password| !password.is_blank());
        if host_admin_password.is_some() && host_admin_user.is_none() {
            return Err(AppError::invalid(format!(
                "{label}: a host admin password needs its host admin user"
            )));
        }
        servers.push(DeclaredServer {
            name,
            hardware,
            u_size: server.u_size,
            power_draw_w: server.power_draw_w,
            bandwidth_mbps: server.bandwidth_mbps,
            ip_addresses,
            host_admin_user,
            host_admin_password,
            host_admin_secret: None,
        });
    }
    Ok(ColocationApplication {
        responsible_person: application.responsible_person,
        contact_number: required("the contact number", &application.contact_number)?,
        domain: domain.as_str().to_owned(),
        domain_activation_date: application.domain_activation_date,
        validity: application.validity,
        contact_person: optional(&application.contact_person),
        servers,
    })
}

fn normalize_hardware(label: &str, hardware: HardwareSpec) -> Result<HardwareSpec, AppError> {
    let field = |name: &str, value: &str| required(&format!("{label}: {name}"), value);
    Ok(HardwareSpec {
        serial_number: field("the serial number (S/N)", &hardware.serial_number)?,
        server_type: field("the type", &hardware.server_type)?,
        brand: field("the brand (merk)", &hardware.brand)?,
        processor: field("the processor", &hardware.processor)?,
        ram: field("the RAM", &hardware.ram)?,
        motherboard: field("the motherboard", &hardware.motherboard)?,
        storage: field("the storage", &hardware.storage)?,
        psu: field("the PSU", &hardware.psu)?,
    })
}
