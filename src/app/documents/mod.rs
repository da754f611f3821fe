//! Official documents: the four SOP forms (application, approval, handover, withdrawal)
//! and the letters to the agencies, gathered from the catalog, numbered in the issuing
//! transaction and rendered as printable, self-contained A4 HTML with the SOP's
//! Indonesian labels.
//!
//! Gathering (`gather`) reads the catalog; rendering ([`render::render`]) is pure and
//! golden-tested; numbering ([`DocumentNumbering`]) follows a configurable pattern and a
//! running number per year drawn inside the transaction, so a number is used exactly once
//! and only by a committed document. An issued document is stored with its HTML and a
//! BLAKE3 hash and never re-rendered: what was signed stays what was signed.

pub mod render;

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::capacity::CapacityReport;
use super::details::{RequestDetails, Validity};
use super::identifiers::Nip;
use super::requests::IssuedDocument;
use super::{App, AppError, Work};
use crate::catalog::{
    Account, AllocationStatus, DocumentRecord, NewDocument, RequestId, RequestRecord, Server,
};
use crate::engine::restore::Overwrite;
use crate::workflow::{Answer, DocumentKind, RequestState, Role, StepNumber};

/// Who signs for a role, as printed under the signature line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signatory {
    /// The role.
    pub role: Role,
    /// Name with titles.
    pub name: String,
    /// NIP (18 digits).
    pub nip: Option<String>,
    /// Rank (*pangkat*), e.g. "Pembina Utama Madya".
    pub rank: Option<String>,
}

/// The data center's identity on letters and forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfficeIdentity {
    /// First letterhead line.
    pub government: String,
    /// Second letterhead line.
    pub agency: String,
    /// Address line.
    pub address: String,
    /// Telephone, e-mail, web line (optional).
    pub contact: Option<String>,
    /// City written before the date.
    pub city: String,
    /// The unit receiving colocations (form 3 *Kepada*).
    pub unit: String,
    /// The data center's NOC (form 2 and 4, *Data Center*).
    pub data_center_noc: String,
    /// The data center's location.
    pub data_center_location: String,
    /// Signatories by role.
    pub signatories: Vec<Signatory>,
}

impl Default for OfficeIdentity {
    /// Diskominfo Provinsi Jawa Tengah as on the SOP's cover.
    fn default() -> Self {
        OfficeIdentity {
            government: "PEMERINTAH PROVINSI JAWA TENGAH".into(),
            agency: "DINAS KOMUNIKASI DAN INFORMATIKA".into(),
            address: "Jl. Menteri Supeno I Nomor 2, Semarang".into(),
            contact: None,
            city: "Semarang".into(),
            unit: "Bidang Teknologi Informasi dan Komunikasi, Dinas Komunikasi dan Informatika Provinsi Jawa Tengah".into(),
            data_center_noc: "NOC Diskominfo Provinsi Jawa Tengah".into(),
            data_center_location: "Data Center Diskominfo Provinsi Jawa Tengah".into(),
            signatories: Vec::new(),
        }
    }
}

impl OfficeIdentity {
    /// The signatory configured for a role.
    pub fn signatory(&self, role: Role) -> Option<&Signatory> {
        self.signatories
            .iter()
            .find(|signatory| signatory.role == role)
    }
}

/// How document numbers are made: a pattern with `{seq}` (the running number of the
/// year, zero-padded to `seq_width`), `{code}` (per document kind), `{year}`, `{month}`
/// and `{roman_month}` (as Indonesian letters write it, e.g. `IV`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentNumbering {
    /// The pattern, e.g. `{seq}/{code}/DISKOMINFO/{year}`.
    pub pattern: String,
    /// Zero-padding of `{seq}`.
    pub seq_width: usize,
    /// `{code}` per document kind code (`approval_form = "FPSC"`); kinds not listed use
    /// the defaults of [`DocumentNumbering::default_code`].
    pub codes: BTreeMap<String, String>,
}

impl Default for DocumentNumbering {
    /// `{seq}/{code}/DISKOMINFO/{year}`, three digits.
    fn default() -> Self {
        DocumentNumbering {
            pattern: "{seq}/{code}/DISKOMINFO/{year}".into(),
            seq_width: 3,
            codes: BTreeMap::new(),
        }
    }
}

const PLACEHOLDERS: [&str; 5] = ["{seq}", "{code}", "{year}", "{month}", "{roman_month}"];

impl DocumentNumbering {
    /// The built-in `{code}` of a kind.
    pub fn default_code(kind: DocumentKind) -> &'static str {
        match kind {
            DocumentKind::ApplicationForm => "FPC",
            DocumentKind::ApprovalForm => "FPSC",
            DocumentKind::HandoverForm => "FSTC",
            DocumentKind::WithdrawalForm => "FPNC",
            DocumentKind::MaintenanceReport => "LPP",
            DocumentKind::RestoreExecutionForm => "FPRD",
            // 555: the archive classification of telecommunication matters.
            DocumentKind::LetterRequestApproved
            | DocumentKind::LetterCapacityUnavailable
            | DocumentKind::LetterBackupStopped
            | DocumentKind::LetterRestoreResult
            | DocumentKind::LetterWithdrawalDone
            | DocumentKind::LetterWithdrawalRejected => "555",
        }
    }

    /// The `{code}` of a kind.
    pub fn code(&self, kind: DocumentKind) -> &str {
        self.codes
            .get(kind.code())
            .map(String::as_str)
            .unwrap_or_else(|| Self::default_code(kind))
    }

    /// Checks the pattern: it must contain `{seq}` and `{year}` (so numbers are unique
    /// per year) and no unknown placeholder; codes must name known kinds.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] naming the problem.
    pub fn validate(&self) -> Result<(), AppError> {
        for required in ["{seq}", "{year}"] {
            if !self.pattern.contains(required) {
                return Err(AppError::invalid(format!(
                    "the document number pattern `{}` must contain {required}",
                    self.pattern
                )));
            }
        }
        let mut rest = self.pattern.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|offset| open + offset)
                .ok_or_else(|| {
                    AppError::invalid(format!(
                        "the document number pattern `{}` has an unclosed `{{`",
                        self.pattern
                    ))
                })?;
            let placeholder = &rest[open..=close];
            if !PLACEHOLDERS.contains(&placeholder) {
                return Err(AppError::invalid(format!(
                    "unknown placeholder {placeholder} in the document number pattern (known: {})",
                    PLACEHOLDERS.join(", ")
                )));
            }
            rest = &rest[close + 1..];
        }
        if !(1..=9).contains(&self.seq_width) {
            return Err(AppError::invalid("seq_width must be 1–9"));
        }
        for (kind, code) in &self.codes {
            if DocumentKind::from_code(kind).is_none() {
                return Err(AppError::invalid(format!(
                    "numbering.codes: unknown document kind `{kind}`"
                )));
            }
            if code.trim().is_empty() || code.contains(['{', '}']) {
                return Err(AppError::invalid(format!(
                    "numbering.codes.{kind}: the code must not be empty or contain braces"
                )));
            }
        }
        Ok(())
    }

    /// The number of the `seq`-th document of the year of `date`.
    pub fn format(&self, kind: DocumentKind, seq: i64, date: NaiveDate) -> String {
        self.pattern
            .replace("{seq}", &format!("{seq:0width$}", width = self.seq_width))
            .replace("{code}", self.code(kind))
            .replace("{year}", &date.year().to_string())
            .replace("{roman_month}", roman_month(date.month()))
            .replace("{month}", &format!("{:02}", date.month()))
    }
}

fn roman_month(month: u32) -> &'static str {
    const ROMAN: [&str; 12] = [
        "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII",
    ];
    ROMAN
        .get(usize::try_from(month).unwrap_or(1).saturating_sub(1))
        .copied()
        .unwrap_or("I")
}

/// A party on a form: a unit and its responsible person.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// *Nama Unit*.
    pub unit: String,
    /// *Penanggung Jawab*.
    pub person: Option<String>,
    /// NIP, grouped.
    pub nip: Option<String>,
    /// *Alamat Unit*.
    pub address: Option<String>,
    /// *Kontak Number*.
    pub phone: Option<String>,
}

/// Where a colocation sits (*Data Center* block of forms 2 and 4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// NOC.
    pub noc: String,
    /// *Letak Server*.
    pub location: String,
    /// *Nama Domain/Sub-Domain*.
    pub domain: String,
}

/// One server in the *Colocation* block of forms 2 and 4.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColocationEntry {
    /// Server name.
    pub name: String,
    /// NOC.
    pub noc: String,
    /// *Letak Server* (rack and units).
    pub location: String,
    /// *S/N Server*.
    pub serial_number: String,
    /// *Type & Merk*.
    pub type_and_brand: String,
    /// *Nama Domain/Sub-Domain*.
    pub domain: String,
    /// *Host Admin User*.
    pub host_admin_user: Option<String>,
    /// Whether a sealed password is on file (the form never shows it).
    pub password_on_file: bool,
    /// *IP Address*.
    pub ip_addresses: String,
    /// *Contact Person*.
    pub contact_person: Option<String>,
}

/// One row of the form 3 table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRow {
    /// *Nama Server*.
    pub name: String,
    /// *Prosesor*.
    pub processor: String,
    /// *RAM*.
    pub ram: String,
    /// *Motherboard*.
    pub motherboard: String,
    /// *Storage*.
    pub storage: String,
    /// *PSU*.
    pub psu: String,
}

/// One attempt of a restore request, as the restore execution form lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRow {
    /// *Langkah*: the planned restore or a fallback step.
    pub step: String,
    /// The snapshot restored (16 hex digits), or `-` when it never started.
    pub snapshot: String,
    /// Which copy the data came from.
    pub source: String,
    /// Server and directory written.
    pub target: String,
    /// When it ended (local time).
    pub finished: String,
    /// Files verified and failed, and the check.
    pub verification: String,
    /// *Hasil*.
    pub outcome: String,
}

/// One step's time against its time standard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRow {
    /// The step.
    pub step: String,
    /// How long it took.
    pub took: String,
    /// The standard.
    pub standard: String,
    /// Whether the standard was met.
    pub met: bool,
}

/// One line of the specification conformity check attached to form 3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRow {
    /// Server.
    pub server: String,
    /// Field, in Indonesian.
    pub field: String,
    /// Declared.
    pub declared: String,
    /// Observed.
    pub observed: String,
}

/// The content of a document, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "body", rename_all = "snake_case")]
pub enum DocumentBody {
    /// Form 1.
    Application {
        /// The applying unit.
        applicant: Party,
        /// Domain.
        domain: String,
        /// Domain activation date.
        domain_activation: Option<NaiveDate>,
        /// Validity.
        validity: Validity,
    },
    /// Form 2.
    Approval {
        /// Domain.
        domain: String,
        /// Approved or rejected.
        approved: bool,
        /// *Pertimbangan*.
        considerations: String,
        /// Where (*di …*).
        data_center_name: String,
        /// *Data Center* block (when approved).
        data_center: Option<Placement>,
        /// *Colocation* blocks (when approved).
        colocation: Vec<ColocationEntry>,
    },
    /// Form 3 with the conformity check attached.
    Handover {
        /// The weekday (*hari*).
        day: String,
        /// *Yang Menyerahkan*.
        handing: Party,
        /// *Kepada* / *Yang Menerima*.
        receiving: Party,
        /// The servers.
        servers: Vec<SpecRow>,
        /// Whether the check was done.
        checked: bool,
        /// Every mismatch found.
        mismatches: Vec<CheckRow>,
    },
    /// Form 4.
    Withdrawal {
        /// Domain.
        domain: String,
        /// *Data Center* block.
        data_center: Placement,
        /// *Colocation* block.
        colocation: ColocationEntry,
        /// *Pertimbangan*.
        considerations: String,
    },
    /// The restore execution form (C7).
    RestoreExecution {
        /// The requesting agency.
        agency: Party,
        /// The request as the agency wrote it (label/value).
        requested: Vec<(String, String)>,
        /// The plan approved at C3 (label/value); empty when none was written.
        plan: Vec<(String, String)>,
        /// Every attempt, in order.
        attempts: Vec<AttemptRow>,
        /// Files of the last attempt that failed verification: path and reason.
        failed: Vec<(String, String)>,
        /// How many more failed than are listed.
        failed_unlisted: u64,
        /// Steps 4–6 against their time standards.
        times: Vec<TimeRow>,
        /// The result, in words.
        result: String,
    },
    /// A letter to an agency (or the maintenance report).
    Letter {
        /// *Kepada Yth.*
        recipient: Party,
        /// *Hal*.
        subject: String,
        /// Body paragraphs.
        paragraphs: Vec<String>,
        /// Label/value table.
        facts: Vec<(String, String)>,
    },
}

/// Everything a renderer needs: header, letterhead and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentData {
    /// Which document.
    pub kind: DocumentKind,
    /// Its official number.
    pub number: String,
    /// Its date (local).
    pub date: NaiveDate,
    /// The data center.
    pub office: OfficeIdentity,
    /// Who signs (None leaves the line blank).
    pub signatory_role: Role,
    /// The content.
    pub body: DocumentBody,
}

/// The Indonesian title of a document kind.
pub fn title(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::ApplicationForm => "FORMULIR PENGAJUAN COLOCATION",
        DocumentKind::ApprovalForm => "FORMULIR PERSETUJUAN COLOCATION",
        DocumentKind::HandoverForm | DocumentKind::WithdrawalForm => {
            "FORMULIR SERAH TERIMA COLOCATION"
        }
        DocumentKind::LetterRequestApproved => "Persetujuan Permohonan Colocation Server",
        DocumentKind::LetterCapacityUnavailable => {
            "Pemberitahuan Ketidaktersediaan Kapasitas Infrastruktur"
        }
        DocumentKind::LetterBackupStopped => "Pemberitahuan Penghentian Back up",
        DocumentKind::LetterRestoreResult => "Hasil Pelaksanaan Restore Data Back up",
        DocumentKind::LetterWithdrawalDone => "Pemberitahuan Pelaksanaan Penarikan Colocation",
        DocumentKind::LetterWithdrawalRejected => {
            "Pemberitahuan Permohonan Penarikan Colocation Tidak Disetujui"
        }
        DocumentKind::MaintenanceReport => "Laporan Perawatan Server",
        DocumentKind::RestoreExecutionForm => "FORMULIR PELAKSANAAN RESTORE DATA BACK UP",
    }
}

/// The request a document is issued for, as the use case sees it.
pub(in crate::app) struct RequestContext<'a> {
    pub record: &'a RequestRecord,
    pub details: &'a RequestDetails,
    /// The state after the event (the decision being recorded is in it).
    pub state: &'a RequestState,
    /// The step whose action issues the document.
    pub step: StepNumber,
    /// That step's roles (the first is who signs letters drafted at it).
    pub step_roles: &'a [Role],
}

/// The last finished record of a step: its decision, reason and note.
fn finished_record(state: &RequestState, step: u32) -> Option<&crate::workflow::StepRecord> {
    state
        .steps
        .iter()
        .rev()
        .find(|record| record.step.0 == step && record.finished_at.is_some())
}

/// The reason of the latest decision in the request.
fn latest_decision(state: &RequestState) -> Option<(Answer, String)> {
    state.steps.iter().rev().find_map(|record| {
        record
            .decision
            .map(|answer| (answer, record.reason.clone().unwrap_or_default()))
    })
}

fn grouped_nip(nip: &str) -> String {
    Nip::parse(nip)
        .map(|nip| nip.grouped())
        .unwrap_or_else(|_| nip.to_owned())
}

fn location_of(rack: &crate::catalog::Rack, u_start: Option<i64>, u_count: i64) -> String {
    match u_start {
        Some(start) if u_count > 0 => format!(
            "{}, rak {}, U{}–U{}",
            rack.location,
            rack.name,
            start,
            start + u_count - 1
        ),
        _ => format!("{}, rak {}", rack.location, rack.name),
    }
}

async fn account_party(
    work: &mut Work<'_>,
    account: Option<&Account>,
    unit: &str,
) -> Result<Party, AppError> {
    let mut party = Party {
        unit: unit.to_owned(),
        ..Party::default()
    };
    if let Some(person) = account.and_then(|account| account.person_id) {
        let person = work.tx.person(person).await?;
        party.person = Some(person.name);
        party.nip = Some(grouped_nip(&person.nip));
    } else if let Some(account) = account {
        party.person = Some(account.username.clone());
    }
    Ok(party)
}

async fn server_entry(
    work: &mut Work<'_>,
    server: &Server,
) -> Result<(Placement, ColocationEntry), AppError> {
    let (noc, location) = match server.rack_id {
        Some(rack) => {
            let rack = work.tx.rack(rack).await?;
            (
                rack.noc.clone(),
                location_of(&rack, server.u_position, server.u_size),
            )
        }
        None => (server.noc.clone().unwrap_or_default(), String::new()),
    };
    let domain = server.domain.clone().unwrap_or_default();
    Ok((
        Placement {
            noc: noc.clone(),
            location: location.clone(),
            domain: domain.clone(),
        },
        ColocationEntry {
            name: server.name.clone(),
            noc,
            location,
            serial_number: server.hardware.serial_number.clone(),
            type_and_brand: format!(
                "{} / {}",
                server.hardware.server_type, server.hardware.brand
            ),
            domain,
            host_admin_user: server.host_admin_user.clone(),
            password_on_file: server.host_admin_secret_id.is_some(),
            ip_addresses: server.ip_addresses.join(", "),
            contact_person: server.contact.clone(),
        },
    ))
}

fn field_label(field: &str) -> &str {
    match field {
        "serial_number" => "S/N Server",
        "server_type" => "Type",
        "brand" => "Merk",
        "processor" => "Prosesor",
        "ram" => "RAM",
        "motherboard" => "Motherboard",
        "storage" => "Storage",
        "psu" => "PSU",
        "u_size" => "Tinggi (U)",
        "power_draw_w" => "Daya (W)",
        "ip_addresses" => "IP Address",
        "presence" => "Keberadaan server",
        other => other,
    }
}

fn mismatch_context(kind: DocumentKind, details: &RequestDetails) -> AppError {
    AppError::InvalidInput(format!(
        "document {kind} cannot be issued for a {} request",
        details.kind_name()
    ))
}

/// Reads everything a document needs from the catalog and the request.
pub(in crate::app) async fn gather(
    work: &mut Work<'_>,
    kind: DocumentKind,
    context: &RequestContext<'_>,
    number: String,
    date: NaiveDate,
) -> Result<DocumentData, AppError> {
    let office = work.app.config().office.clone();
    let record = context.record;
    let agency = work.tx.agency(record.agency_id).await?;
    let agency_party = Party {
        unit: agency.name.clone(),
        person: None,
        nip: None,
        address: Some(agency.address.clone()),
        phone: agency.phone.clone(),
    };
    let letter_signer = context
        .step_roles
        .first()
        .copied()
        .unwrap_or(Role::KabidTik);
    let (signatory_role, body) = match (kind, context.details) {
        (DocumentKind::ApplicationForm, RequestDetails::Colocation(application)) => {
            let person = work.tx.person(application.responsible_person).await?;
            (
                Role::KabidTik,
                DocumentBody::Application {
                    applicant: Party {
                        unit: agency.name.clone(),
                        person: Some(person.name),
                        nip: Some(grouped_nip(&person.nip)),
                        address: Some(agency.address.clone()),
                        phone: Some(application.contact_number.clone()),
                    },
                    domain: application.domain.clone(),
                    domain_activation: application.domain_activation_date,
                    validity: application.validity,
                },
            )
        }
        (DocumentKind::ApprovalForm, RequestDetails::Colocation(application)) => {
            let (approved, considerations) = finished_record(context.state, context.step.0)
                .and_then(|record| {
                    record.decision.map(|answer| {
                        (
                            answer == Answer::Yes,
                            record.reason.clone().unwrap_or_default(),
                        )
                    })
                })
                .or_else(|| {
                    latest_decision(context.state)
                        .map(|(answer, reason)| (answer == Answer::Yes, reason))
                })
                .unwrap_or((false, String::new()));
            let mut colocation = Vec::new();
            let mut data_center = None;
            if approved {
                let allocations = work.tx.allocations_for_request(record.id).await?;
                for server in &application.servers {
                    let held = allocations.iter().find(|allocation| {
                        allocation.server_name == server.name
                            && allocation.status != AllocationStatus::Released
                    });
                    let (noc, location) = match held.and_then(|allocation| allocation.rack_id) {
                        Some(rack) => {
                            let rack = work.tx.rack(rack).await?;
                            let location = location_of(
                                &rack,
                                held.and_then(|allocation| allocation.u_start),
                                server.u_size,
                            );
                            (rack.noc.clone(), location)
                        }
                        None => (office.data_center_noc.clone(), String::new()),
                    };
                    if data_center.is_none() {
                        data_center = Some(Placement {
                            noc: noc.clone(),
                            location: location.clone(),
                            domain: application.domain.clone(),
                        });
                    }
                    colocation.push(ColocationEntry {
                        name: server.name.clone(),
                        noc,
                        location,
                        serial_number: server.hardware.serial_number.clone(),
                        type_and_brand: format!(
                            "{} / {}",
                            server.hardware.server_type, server.hardware.brand
                        ),
                        domain: application.domain.clone(),
                        host_admin_user: server.host_admin_user.clone(),
                        password_on_file: server.host_admin_secret.is_some(),
                        ip_addresses: server.ip_addresses.join(", "),
                        contact_person: application.contact_person.clone(),
                    });
                }
            }
            (
                Role::KabidTik,
                DocumentBody::Approval {
                    domain: application.domain.clone(),
                    approved,
                    considerations,
                    data_center_name: office.data_center_location.clone(),
                    data_center,
                    colocation,
                },
            )
        }
        (DocumentKind::HandoverForm, RequestDetails::Colocation(application)) => {
            let person = work.tx.person(application.responsible_person).await?;
            let registered = work.tx.servers_for_request(record.id).await?;
            let servers: Vec<SpecRow> = if registered.is_empty() {
                application
                    .servers
                    .iter()
                    .map(|server| SpecRow {
                        name: server.name.clone(),
                        processor: server.hardware.processor.clone(),
                        ram: server.hardware.ram.clone(),
                        motherboard: server.hardware.motherboard.clone(),
                        storage: server.hardware.storage.clone(),
                        psu: server.hardware.psu.clone(),
                    })
                    .collect()
            } else {
                registered
                    .iter()
                    .map(|server| SpecRow {
                        name: server.name.clone(),
                        processor: server.hardware.processor.clone(),
                        ram: server.hardware.ram.clone(),
                        motherboard: server.hardware.motherboard.clone(),
                        storage: server.hardware.storage.clone(),
                        psu: server.hardware.psu.clone(),
                    })
                    .collect()
            };
            let checked = work
                .tx
                .latest_observation_for_request(record.id)
                .await?
                .is_some();
            let mismatches = work
                .tx
                .mismatches_for_request(record.id)
                .await?
                .into_iter()
                .map(|found| CheckRow {
                    server: found.mismatch.server_name.clone(),
                    field: field_label(&found.mismatch.field).to_owned(),
                    declared: found.mismatch.declared.clone().unwrap_or_default(),
                    observed: found.mismatch.observed.clone().unwrap_or_default(),
                })
                .collect();
            let receiver = work.account.clone();
            let receiving = account_party(work, receiver.as_ref(), &office.unit).await?;
            (
                Role::KabidTik,
                DocumentBody::Handover {
                    day: render::indonesian_weekday(date).to_owned(),
                    handing: Party {
                        unit: agency.name.clone(),
                        person: Some(person.name),
                        nip: Some(grouped_nip(&person.nip)),
                        address: None,
                        phone: None,
                    },
                    receiving,
                    servers,
                    checked,
                    mismatches,
                },
            )
        }
        (DocumentKind::WithdrawalForm, RequestDetails::Withdrawal(application)) => {
            let server = work.tx.server(application.server_id).await?;
            let (mut data_center, colocation) = server_entry(work, &server).await?;
            data_center.noc = office.data_center_noc.clone();
            let considerations = latest_decision(context.state)
                .map(|(_, reason)| reason)
                .unwrap_or_else(|| application.reason.clone());
            (
                Role::KabidTik,
                DocumentBody::Withdrawal {
                    domain: server.domain.clone().unwrap_or_default(),
                    data_center,
                    colocation,
                    considerations,
                },
            )
        }
        (DocumentKind::LetterRequestApproved, RequestDetails::Colocation(application)) => {
            let allocations = work.tx.allocations_for_request(record.id).await?;
            let mut placement = Vec::new();
            for allocation in allocations
                .iter()
                .filter(|allocation| allocation.status != AllocationStatus::Released)
            {
                if let Some(rack) = allocation.rack_id {
                    let rack = work.tx.rack(rack).await?;
                    placement.push(format!(
                        "{}: {}",
                        allocation.server_name,
                        location_of(&rack, allocation.u_start, allocation.u_count)
                    ));
                }
            }
            let approval = latest_decision(context.state)
                .map(|(_, reason)| reason)
                .unwrap_or_default();
            let mut facts = vec![
                ("Nomor permohonan".to_owned(), record.id.to_string()),
                (
                    "Nama Domain/Sub-Domain".to_owned(),
                    application.domain.clone(),
                ),
                (
                    "Jumlah server".to_owned(),
                    application.servers.len().to_string(),
                ),
            ];
            if !placement.is_empty() {
                facts.push(("Letak Server".to_owned(), placement.join("; ")));
            }
            (
                letter_signer,
                DocumentBody::Letter {
                    recipient: agency_party.clone(),
                    subject: title(kind).to_owned(),
                    paragraphs: vec![
                        format!(
                            "Menindaklanjuti surat permohonan colocation server dari {} untuk domain {}, dengan ini kami sampaikan bahwa permohonan tersebut telah disetujui oleh Kepala Dinas Komunikasi dan Informatika Provinsi Jawa Tengah.",
                            agency.name, application.domain
                        ),
                        format!("Pertimbangan persetujuan: {approval}"),
                        "Selanjutnya dimohon agar server diserahkan kepada petugas jaringan kami untuk pengecekan kesesuaian spesifikasi dan serah terima colocation (Formulir Serah Terima Colocation).".to_owned(),
                        "Demikian disampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.".to_owned(),
                    ],
                    facts,
                },
            )
        }
        (DocumentKind::LetterCapacityUnavailable, RequestDetails::Colocation(application)) => {
            let report: Option<CapacityReport> =
                match work.tx.latest_capacity_check(record.id).await? {
                    Some(check) => serde_json::from_str(&check.report_json).ok(),
                    None => None,
                };
            let needs = super::capacity::CapacityNeeds::of(application);
            let reason = latest_decision(context.state)
                .map(|(_, reason)| reason)
                .unwrap_or_default();
            let mut facts = vec![
                (
                    "Nama Domain/Sub-Domain".to_owned(),
                    application.domain.clone(),
                ),
                (
                    "Kebutuhan tempat".to_owned(),
                    format!("{} U", needs.total_u()),
                ),
                (
                    "Kebutuhan listrik".to_owned(),
                    format!("{} W", super::capacity::thousands(needs.total_power_w())),
                ),
                (
                    "Kebutuhan bandwidth".to_owned(),
                    format!(
                        "{} Mbps",
                        super::capacity::thousands(needs.total_bandwidth_mbps())
                    ),
                ),
            ];
            if let Some(report) = &report {
                facts.push((
                    "Hasil pengecekan kapasitas".to_owned(),
                    report.reason_id.clone(),
                ));
            }
            (
                letter_signer,
                DocumentBody::Letter {
                    recipient: agency_party.clone(),
                    subject: title(kind).to_owned(),
                    paragraphs: vec![
                        format!(
                            "Menindaklanjuti surat permohonan colocation server dari {} untuk domain {}, dengan ini kami sampaikan bahwa kapasitas infrastruktur (listrik, bandwidth, tempat) pada Data Center Dinas Komunikasi dan Informatika Provinsi Jawa Tengah saat ini tidak tersedia.",
                            agency.name, application.domain
                        ),
                        format!("Pertimbangan: {reason}"),
                        "Permohonan dapat diajukan kembali apabila kapasitas telah tersedia.".to_owned(),
                        "Demikian disampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.".to_owned(),
                    ],
                    facts,
                },
            )
        }
        (DocumentKind::LetterBackupStopped, RequestDetails::Backup(backup)) => {
            let stopped = finished_record(context.state, context.step.0.saturating_sub(1))
                .and_then(|record| record.finished_at)
                .map(|at| render::indonesian_date(local_date(work, at)))
                .unwrap_or_else(|| render::indonesian_date(date));
            let mut facts = vec![
                ("Nomor permohonan".to_owned(), record.id.to_string()),
                ("Cakupan back up".to_owned(), backup.scope.clone()),
                ("Jadwal".to_owned(), backup.schedule.clone()),
                ("Tanggal penghentian".to_owned(), stopped),
            ];
            if let Some(server) = backup.server_id {
                let server = work.tx.server(server).await?;
                facts.insert(
                    1,
                    (
                        "Server".to_owned(),
                        format!("{} (S/N {})", server.name, server.hardware.serial_number),
                    ),
                );
            }
            (
                letter_signer,
                DocumentBody::Letter {
                    recipient: agency_party.clone(),
                    subject: title(kind).to_owned(),
                    paragraphs: vec![
                        format!(
                            "Menindaklanjuti surat permohonan penghentian pelaksanaan back up dari {}, dengan ini kami sampaikan bahwa pelaksanaan back up data telah dihentikan.",
                            agency.name
                        ),
                        "Data hasil back up yang telah tersimpan tetap dikelola sesuai ketentuan retensi yang disepakati.".to_owned(),
                        "Demikian disampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.".to_owned(),
                    ],
                    facts,
                },
            )
        }
        (DocumentKind::LetterRestoreResult, RequestDetails::Restore(restore)) => {
            let attempts = work.tx.restores_of_request(record.id).await?;
            let facts_of_run = restore_facts(work, context, &attempts).await?;
            let verification = context
                .state
                .steps
                .iter()
                .rev()
                .find(|record| record.decision.is_some() && record.step.0 > 3);
            let fallback = context.state.path().len() > 1
                && context
                    .state
                    .steps
                    .iter()
                    .any(|record| record.decision == Some(Answer::No) && record.step.0 > 3);
            let result = match (&facts_of_run, verification.and_then(|record| record.decision), fallback) {
                (Some(run), _, _) => run.result.clone(),
                (None, Some(Answer::Yes), _) => "berhasil".to_owned(),
                (None, Some(Answer::No), _) | (None, None, true) => {
                    "tidak berhasil pada percobaan pertama; langkah-langkah pemulihan sesuai perencanaan telah dilaksanakan".to_owned()
                }
                (None, None, false) => "telah dilaksanakan".to_owned(),
            };
            let note = verification
                .and_then(|record| record.reason.clone())
                .unwrap_or_default();
            let mut facts = vec![
                ("Nomor permohonan".to_owned(), record.id.to_string()),
                ("Titik restore".to_owned(), restore.restore_point.clone()),
                ("Tujuan restore".to_owned(), restore.target.clone()),
                ("Hasil".to_owned(), result.clone()),
            ];
            if let Some(run) = facts_of_run {
                facts.extend(run.facts);
            }
            (
                letter_signer,
                DocumentBody::Letter {
                    recipient: agency_party.clone(),
                    subject: title(kind).to_owned(),
                    paragraphs: vec![
                        format!(
                            "Menindaklanjuti surat permohonan restore data back up dari {}, dengan ini kami sampaikan bahwa proses restore data {}.",
                            agency.name, result
                        ),
                        format!("Keterangan hasil verifikasi: {note}"),
                        "Mohon SKPD melakukan pengecekan atas data yang telah dipulihkan dan menyampaikan apabila terdapat ketidaksesuaian.".to_owned(),
                        "Demikian disampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.".to_owned(),
                    ],
                    facts,
                },
            )
        }
        (DocumentKind::RestoreExecutionForm, RequestDetails::Restore(restore)) => {
            let attempts = work.tx.restores_of_request(record.id).await?;
            let run = restore_facts(work, context, &attempts).await?;
            let plan = match work.tx.restore_plan(record.id).await? {
                Some(stored) => plan_lines(work, &stored).await?,
                None => Vec::new(),
            };
            let requested = vec![
                ("Nomor permohonan".to_owned(), record.id.to_string()),
                ("Titik restore".to_owned(), restore.restore_point.clone()),
                ("Tujuan restore".to_owned(), restore.target.clone()),
                ("Alasan".to_owned(), restore.reason.clone()),
            ];
            let body = match run {
                Some(run) => DocumentBody::RestoreExecution {
                    agency: agency_party.clone(),
                    requested,
                    plan,
                    attempts: run.rows,
                    failed: run.failed,
                    failed_unlisted: run.failed_unlisted,
                    times: run.times,
                    result: run.result,
                },
                None => DocumentBody::RestoreExecution {
                    agency: agency_party.clone(),
                    requested,
                    plan,
                    attempts: Vec::new(),
                    failed: Vec::new(),
                    failed_unlisted: 0,
                    times: Vec::new(),
                    result: "restore belum dijalankan oleh sistem".to_owned(),
                },
            };
            (Role::KasiInfras, body)
        }
        (
            DocumentKind::LetterWithdrawalDone | DocumentKind::LetterWithdrawalRejected,
            RequestDetails::Withdrawal(application),
        ) => {
            let server = work.tx.server(application.server_id).await?;
            let considerations = latest_decision(context.state)
                .map(|(_, reason)| reason)
                .unwrap_or_default();
            let done = kind == DocumentKind::LetterWithdrawalDone;
            let first = if done {
                format!(
                    "Menindaklanjuti surat permohonan penarikan colocation dari {}, dengan ini kami sampaikan bahwa penarikan server {} telah dilaksanakan dan aset register telah diperbarui.",
                    agency.name, server.name
                )
            } else {
                format!(
                    "Menindaklanjuti surat permohonan penarikan colocation dari {}, dengan ini kami sampaikan bahwa permohonan penarikan server {} tidak dapat disetujui.",
                    agency.name, server.name
                )
            };
            (
                letter_signer,
                DocumentBody::Letter {
                    recipient: agency_party.clone(),
                    subject: title(kind).to_owned(),
                    paragraphs: vec![
                        first,
                        format!("Pertimbangan: {considerations}"),
                        "Demikian disampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.".to_owned(),
                    ],
                    facts: vec![
                        ("Nomor permohonan".to_owned(), record.id.to_string()),
                        ("Server".to_owned(), server.name.clone()),
                        ("S/N Server".to_owned(), server.hardware.serial_number.clone()),
                        (
                            "Nama Domain/Sub-Domain".to_owned(),
                            server.domain.clone().unwrap_or_default(),
                        ),
                    ],
                },
            )
        }
        (DocumentKind::MaintenanceReport, RequestDetails::Maintenance(maintenance)) => {
            let notes: Vec<String> = context
                .state
                .steps
                .iter()
                .filter_map(|record| {
                    let text = record.note.clone().or_else(|| record.reason.clone())?;
                    Some(format!("Langkah {}: {}", record.step, text))
                })
                .collect();
            let mut facts = vec![
                ("Nomor permohonan".to_owned(), record.id.to_string()),
                ("Laporan SKPD".to_owned(), maintenance.description.clone()),
            ];
            if let Some(server) = maintenance.server_id {
                let server = work.tx.server(server).await?;
                facts.push((
                    "Server".to_owned(),
                    format!("{} (S/N {})", server.name, server.hardware.serial_number),
                ));
            }
            let visits = context
                .state
                .steps
                .iter()
                .filter(|record| record.step.0 == 3)
                .count();
            facts.push((
                "Jumlah pelaksanaan perawatan".to_owned(),
                visits.to_string(),
            ));
            (
                letter_signer,
                DocumentBody::Letter {
                    recipient: agency_party.clone(),
                    subject: title(kind).to_owned(),
                    paragraphs: std::iter::once(format!(
                        "Berikut kami sampaikan laporan pelaksanaan perawatan atas permintaan perawatan dari {}.",
                        agency.name
                    ))
                    .chain(notes)
                    .chain(std::iter::once(
                        "Demikian laporan ini dibuat dengan sebenarnya.".to_owned(),
                    ))
                    .collect(),
                    facts,
                },
            )
        }
        (kind, details) => return Err(mismatch_context(kind, details)),
    };
    Ok(DocumentData {
        kind,
        number,
        date,
        office,
        signatory_role,
        body,
    })
}

/// What the restore form and letter state about the restore itself (C7), all from the
/// recorded attempts: the result, the attempt that verified (or the last one), every
/// attempt, the files that failed and the times of C4–C6 against their time standards.
struct RestoreFacts {
    result: String,
    /// Label/value lines for the letter.
    facts: Vec<(String, String)>,
    rows: Vec<AttemptRow>,
    times: Vec<TimeRow>,
    failed: Vec<(String, String)>,
    failed_unlisted: u64,
}

/// Files listed on the form at most; the rest are counted.
const FORM_FAILED_FILES: usize = 50;

fn attempt_name(label: &str) -> &'static str {
    match label {
        "primary" => "restore utama",
        "replica" => "baca chunk rusak dari replika",
        "previous_snapshot" => "snapshot sebelumnya",
        "alternate_target" => "tujuan alternatif",
        _ => "restore",
    }
}

/// Which copy an attempt read, in words.
fn copy_read(attempt: &crate::catalog::RestoreRecord, report: &serde_json::Value) -> String {
    let repaired = report["repaired_from_replica"]
        .as_array()
        .map_or(0, Vec::len);
    if attempt.use_replica && repaired > 0 {
        format!(
            "repositori utama; {repaired} chunk rusak dibaca dari repositori replika (kerusakan dilaporkan untuk diperbaiki)"
        )
    } else if attempt.use_replica {
        "repositori utama, dengan repositori replika sebagai cadangan baca".to_owned()
    } else {
        "repositori utama".to_owned()
    }
}

/// How an attempt was verified, in words.
fn verification_of(report: &serde_json::Value) -> String {
    let mut verified = format!(
        "{} berkas cocok dengan snapshot (hash BLAKE3 berkunci), {} gagal",
        report["files_verified"].as_u64().unwrap_or(0),
        report["files_failed"].as_u64().unwrap_or(0)
    );
    if let Some(check) = report.get("check").filter(|check| !check.is_null()) {
        let command = check["command"]
            .as_array()
            .map(|args| {
                args.iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        verified.push_str(&format!(
            "; pemeriksaan `{command}`: {}",
            if check["passed"].as_bool() == Some(true) {
                "lulus"
            } else {
                "gagal"
            }
        ));
    }
    verified
}

/// The files that failed in the attempts that did not verify, once per attempt (the
/// daemon and the agent may both report a file, one with its leading `/`), each reason
/// led by the attempt's step; at most [`FORM_FAILED_FILES`] listed, the rest counted.
fn failed_files<'a>(
    attempts: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
) -> (Vec<(String, String)>, u64) {
    let mut listed = Vec::new();
    let mut unlisted = 0u64;
    for (step, report) in attempts {
        let mut seen = std::collections::BTreeSet::new();
        for item in report["failed"].as_array().into_iter().flatten() {
            let Some(path) = item["path"].as_str() else {
                continue;
            };
            if !seen.insert(path.trim_start_matches('/')) {
                continue;
            }
            if listed.len() < FORM_FAILED_FILES {
                let reason = item["reason"].as_str().unwrap_or_default();
                listed.push((path.to_owned(), format!("{step}: {reason}")));
            } else {
                unlisted += 1;
            }
        }
    }
    (listed, unlisted)
}

fn local_time(work: &Work<'_>, at: DateTime<Utc>) -> String {
    at.with_timezone(&work.app.config().calendar.config().time_zone)
        .format("%d-%m-%Y %H:%M")
        .to_string()
}

/// A server's name and serial number, for the form and letter.
async fn server_label(
    work: &mut Work<'_>,
    names: &mut BTreeMap<crate::catalog::ServerId, String>,
    id: crate::catalog::ServerId,
) -> Result<String, AppError> {
    if let Some(name) = names.get(&id) {
        return Ok(name.clone());
    }
    let server = work.tx.server(id).await?;
    let name = format!("{} (S/N {})", server.name, server.hardware.serial_number);
    names.insert(id, name.clone());
    Ok(name)
}

async fn restore_facts(
    work: &mut Work<'_>,
    context: &RequestContext<'_>,
    attempts: &[crate::catalog::RestoreRecord],
) -> Result<Option<RestoreFacts>, AppError> {
    use crate::app::restore_requests::judge;
    let verdicts: Vec<_> = attempts.iter().map(judge).collect();
    let passed = verdicts.iter().position(|verdict| verdict.passed);
    let Some(shown) = passed.or(attempts.len().checked_sub(1)) else {
        return Ok(None);
    };
    let attempt = &attempts[shown];
    let result = match passed {
        Some(0) => "berhasil dan seluruh berkas terverifikasi".to_owned(),
        Some(_) => format!(
            "berhasil setelah langkah pemulihan ({}) dan seluruh berkas terverifikasi",
            attempt_name(attempt.attempt.as_deref().unwrap_or(""))
        ),
        None => "tidak berhasil: hasil verifikasi berbeda dari snapshot (verify differences) setelah seluruh langkah pemulihan dijalankan".to_owned(),
    };
    let mut names = BTreeMap::new();
    let mut rows = Vec::with_capacity(attempts.len());
    for (each, verdict) in attempts.iter().zip(&verdicts) {
        let target = format!(
            "{}, direktori {}",
            server_label(work, &mut names, each.target_server_id).await?,
            each.target_dir
        );
        let outcome = if verdict.passed {
            "berhasil".to_owned()
        } else {
            match each.status.as_str() {
                "verify_differences" | "ok" => "tidak berhasil (verify differences)".to_owned(),
                "cancelled" => "dibatalkan".to_owned(),
                "queued" | "running" => "belum selesai".to_owned(),
                _ => format!(
                    "gagal: {}",
                    each.error.as_deref().unwrap_or("tanpa keterangan")
                ),
            }
        };
        rows.push(AttemptRow {
            step: attempt_name(each.attempt.as_deref().unwrap_or("")).to_owned(),
            snapshot: if each.snapshot.is_empty() {
                "-".to_owned()
            } else {
                each.snapshot.chars().take(16).collect()
            },
            source: copy_read(each, &verdict.report),
            target,
            finished: each
                .finished_at
                .map_or_else(|| "-".to_owned(), |at| local_time(work, at)),
            verification: verification_of(&verdict.report),
            outcome,
        });
    }
    let calendar = &work.app.config().calendar;
    let times: Vec<TimeRow> = context
        .state
        .steps
        .iter()
        .enumerate()
        .filter(|(_, record)| (4..=6).contains(&record.step.0) && record.finished_at.is_some())
        .map(|(visit, record)| {
            let timing = crate::workflow::step_timing(record, visit, calendar, work.now);
            let took = record
                .finished_at
                .map_or(0, |end| (end - record.started_at).num_minutes());
            TimeRow {
                step: format!("langkah {}", record.step),
                took: format!("{took} menit"),
                standard: record.time_standard.to_string(),
                met: !timing.is_overrun(),
            }
        })
        .collect();
    let steps: Vec<String> = rows
        .iter()
        .skip(1)
        .map(|row| format!("{}: {}", row.step, row.outcome))
        .collect();
    let shown_row = &rows[shown];
    let mut facts = vec![
        ("Snapshot dipulihkan".to_owned(), shown_row.snapshot.clone()),
        ("Sumber data".to_owned(), shown_row.source.clone()),
        ("Dipulihkan ke".to_owned(), shown_row.target.clone()),
        ("Verifikasi".to_owned(), shown_row.verification.clone()),
        (
            "Langkah pemulihan".to_owned(),
            if steps.is_empty() {
                "tidak diperlukan".to_owned()
            } else {
                steps.join("; ")
            },
        ),
    ];
    if !times.is_empty() {
        let times: Vec<String> = times
            .iter()
            .map(|time| {
                format!(
                    "{}: {} (standar {}, {})",
                    time.step,
                    time.took,
                    time.standard,
                    if time.met { "terpenuhi" } else { "terlampaui" }
                )
            })
            .collect();
        facts.push(("Waktu pelaksanaan".to_owned(), times.join("; ")));
    }
    let (failed, failed_unlisted) = failed_files(
        rows.iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| !verdict.passed)
            .map(|(row, verdict)| (row.step.as_str(), &verdict.report)),
    );
    Ok(Some(RestoreFacts {
        result,
        facts,
        rows,
        times,
        failed,
        failed_unlisted,
    }))
}

/// The approved plan as label/value lines for the form.
async fn plan_lines(
    work: &mut Work<'_>,
    stored: &crate::catalog::RestorePlanRecord,
) -> Result<Vec<(String, String)>, AppError> {
    use crate::app::restore_requests::{FallbackStep, RestorePlan};
    let mut lines = vec![(
        "Versi rencana".to_owned(),
        format!(
            "{} (sidik BLAKE3 {})",
            stored.version,
            stored.digest.chars().take(16).collect::<String>()
        ),
    )];
    match serde_json::from_str::<RestorePlan>(&stored.plan_json) {
        Ok(plan) => {
            let mut names = BTreeMap::new();
            lines.push((
                "Server sumber".to_owned(),
                server_label(work, &mut names, plan.server).await?,
            ));
            let snapshot = match plan.snapshot.as_str() {
                "latest" => "terbaru".to_owned(),
                other => match other.strip_prefix("as-of:") {
                    Some(at) => format!("kondisi per {at}"),
                    None => format!("snapshot {other}"),
                },
            };
            lines.push(("Titik restore".to_owned(), snapshot));
            lines.push((
                "Data".to_owned(),
                if plan.paths.is_empty() {
                    "seluruh data back up".to_owned()
                } else {
                    plan.paths.join(", ")
                },
            ));
            // What the approver agrees to leave out is written on the form too.
            if !plan.excludes.is_empty() {
                lines.push(("Dikecualikan".to_owned(), plan.excludes.join(", ")));
            }
            lines.push((
                "Tujuan".to_owned(),
                format!(
                    "{}, direktori {}",
                    server_label(work, &mut names, plan.target.server).await?,
                    plan.target.dir
                ),
            ));
            // What the approver agrees the restore does to what the server holds.
            let existing = match plan.overwrite {
                Overwrite::Always => None,
                Overwrite::IfChanged => {
                    Some("diganti bila ukuran atau waktu ubahnya berbeda dari snapshot")
                }
                Overwrite::IfNewer => Some("diganti hanya bila lebih lama dari salinan snapshot"),
                Overwrite::Never => Some("tidak diganti"),
            };
            if let Some(existing) = existing {
                lines.push(("Berkas yang sudah ada".to_owned(), existing.to_owned()));
            }
            if plan.delete {
                lines.push((
                    "Penghapusan".to_owned(),
                    "berkas di tujuan yang tidak ada dalam snapshot dihapus (hanya pada dan di bawah jalur yang di-back up)".to_owned(),
                ));
            }
            lines.push((
                "Pemeriksaan setelah restore".to_owned(),
                match &plan.check {
                    Some(check) => format!(
                        "`{}` (batas waktu {} detik)",
                        check.command.join(" "),
                        check.timeout_secs
                    ),
                    None => "verifikasi seluruh berkas saja".to_owned(),
                },
            ));
            let mut chain = Vec::with_capacity(plan.fallback.len());
            for step in &plan.fallback {
                chain.push(match step {
                    FallbackStep::Replica => attempt_name("replica").to_owned(),
                    FallbackStep::PreviousSnapshot => {
                        "snapshot sebelumnya (dengan konfirmasi Kepala Bidang)".to_owned()
                    }
                    FallbackStep::AlternateTarget { server, dir } => format!(
                        "tujuan alternatif {}, direktori {dir}",
                        server_label(work, &mut names, *server).await?
                    ),
                });
            }
            lines.push((
                "Langkah pemulihan (C6)".to_owned(),
                if chain.is_empty() {
                    "tidak direncanakan".to_owned()
                } else {
                    chain.join(" → ")
                },
            ));
        }
        Err(_) => lines.push(("Rencana".to_owned(), stored.plan_json.clone())),
    }
    lines.push((
        "Disusun oleh".to_owned(),
        format!(
            "{}, {}",
            stored.created_by,
            local_time(work, stored.created_at)
        ),
    ));
    lines.push((
        "Disetujui (langkah 3)".to_owned(),
        match (&stored.approved_by, stored.approved_at) {
            (Some(by), Some(at)) => format!("{by}, {}", local_time(work, at)),
            _ => "-".to_owned(),
        },
    ));
    if let (Some(by), Some(at)) = (&stored.older_confirmed_by, stored.older_confirmed_at) {
        lines.push((
            "Konfirmasi snapshot sebelumnya".to_owned(),
            format!("{by}, {}", local_time(work, at)),
        ));
    }
    Ok(lines)
}

fn local_date(work: &Work<'_>, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&work.app.config().calendar.config().time_zone)
        .date_naive()
}

/// Issues a document for a request: draws its number, renders it, stores it and queues
/// its audit row — all in the use case's transaction.
pub(in crate::app) async fn issue(
    work: &mut Work<'_>,
    kind: DocumentKind,
    context: &RequestContext<'_>,
) -> Result<IssuedDocument, AppError> {
    let date = local_date(work, work.now);
    let year = date.year();
    let seq = work.tx.next_document_seq(year).await?;
    let numbering = work.app.config().numbering.clone();
    let number = numbering.format(kind, seq, date);
    let data = gather(work, kind, context, number.clone(), date).await?;
    let html = render::render(&data);
    let content_hash = blake3::hash(html.as_bytes()).to_hex().to_string();
    let stored = work
        .tx
        .insert_document(&NewDocument {
            kind,
            request_id: Some(context.record.id),
            step: Some(context.step.0),
            year,
            seq,
            number: number.clone(),
            title: title(kind).to_owned(),
            issued_at: work.now,
            issued_by: work.actor_name.clone(),
            html,
            content_hash: content_hash.clone(),
        })
        .await?;
    work.audit("document.issue", "document", stored.id).after = Some(serde_json::json!({
        "kind": kind,
        "number": number,
        "request": context.record.id,
        "step": context.step,
        "content_hash": content_hash,
    }));
    Ok(IssuedDocument {
        id: stored.id,
        kind,
        number,
    })
}

impl App {
    /// Issues a form or letter for a request on demand (e.g. form 1 when the application
    /// arrives, or a copy of form 2). Allowed to the roles of the request's current step,
    /// to KABID_TIK (who signs the forms) and to ADMIN.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`]; [`AppError::InvalidInput`] when the
    /// document does not fit the request's procedure.
    pub async fn issue_document(
        &self,
        username: &str,
        request: RequestId,
        kind: DocumentKind,
        now: DateTime<Utc>,
    ) -> Result<IssuedDocument, AppError> {
        let registry = self.registry();
        let mut work = self.work(username, now).await?;
        let record = work.tx.request_for_update(request).await?;
        let details = super::requests::decode_details(&record)?;
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let step_number = record
            .state
            .current_step()
            .or_else(|| record.state.steps.last().map(|last| last.step))
            .unwrap_or(definition.start_step());
        let step_roles: Vec<Role> = definition
            .step(step_number)
            .map(|step| step.roles.clone())
            .unwrap_or_default();
        let mut allowed = step_roles.clone();
        allowed.extend([Role::KabidTik, Role::Admin]);
        work.require(&allowed, "issue documents for this request")?;
        let context = RequestContext {
            record: &record,
            details: &details,
            state: &record.state,
            step: step_number,
            step_roles: &step_roles,
        };
        let issued = issue(&mut work, kind, &context).await?;
        work.commit().await?;
        Ok(issued)
    }

    /// A stored document.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn document(&self, number: &str) -> Result<DocumentRecord, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.document_by_number(number).await?)
    }

    /// Every document issued for a request.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn documents_of(&self, request: RequestId) -> Result<Vec<DocumentRecord>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.documents_for_request(request).await?)
    }
}

#[cfg(test)]
mod tests;
