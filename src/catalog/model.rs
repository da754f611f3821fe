//! The records the catalog stores and returns: plain data, already decoded from their
//! columns. Values are stored as given; validating them (NIP, IP, domain, who may do what)
//! is the application layer's job.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::ids::*;
use crate::workflow::{DocumentKind, ProcedureCode, RequestState, Revision, Role};

/// Defines a text-coded enum with `code()`, `FromStr` and `Display`.
macro_rules! coded_enum {
    (
        $(#[$doc:meta])* $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $code:literal ),* $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $( $(#[$vdoc])* $variant ),* }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code stored in the database.
            pub fn code(self) -> &'static str {
                match self { $( $name::$variant => $code ),* }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $( $code => Ok($name::$variant), )*
                    other => Err(format!("unknown {} `{}`", stringify!($name), other)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.code())
            }
        }
    };
}

coded_enum! {
    /// What kind of government body an agency is.
    AgencyKind {
        /// Satuan Kerja Perangkat Daerah of the province.
        Skpd = "skpd",
        /// A regency (Kabupaten).
        Kabupaten = "kabupaten",
        /// A city (Kota).
        Kota = "kota",
    }
}

impl AgencyKind {
    /// How the SOP names it.
    pub fn indonesian(self) -> &'static str {
        match self {
            AgencyKind::Skpd => "SKPD",
            AgencyKind::Kabupaten => "Kabupaten",
            AgencyKind::Kota => "Kota",
        }
    }
}

/// An agency to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAgency {
    /// A short unique code (used in document numbers and lists).
    pub code: String,
    /// The full name (*Nama Unit*).
    pub name: String,
    /// SKPD, regency or city.
    pub kind: AgencyKind,
    /// Address (*Alamat Unit*).
    pub address: String,
    /// Telephone (*Kontak Number*).
    pub phone: Option<String>,
}

/// A registered agency (record #1 of the SOP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agency {
    /// Its id.
    pub id: AgencyId,
    /// Short unique code.
    pub code: String,
    /// Full name.
    pub name: String,
    /// SKPD, regency or city.
    pub kind: AgencyKind,
    /// Address.
    pub address: String,
    /// Telephone.
    pub phone: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// A person to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPerson {
    /// Full name with titles.
    pub name: String,
    /// The NIP, as 18 digits without spaces.
    pub nip: String,
    /// Position (*jabatan*).
    pub position: Option<String>,
    /// The agency they work for; `None` for the data center's own staff.
    pub agency_id: Option<AgencyId>,
    /// Telephone.
    pub phone: Option<String>,
}

/// A registered person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Its id.
    pub id: PersonId,
    /// Full name.
    pub name: String,
    /// The NIP (18 digits).
    pub nip: String,
    /// Position.
    pub position: Option<String>,
    /// Agency.
    pub agency_id: Option<AgencyId>,
    /// Telephone.
    pub phone: Option<String>,
    /// When registered.
    pub created_at: DateTime<Utc>,
}

/// A user account to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    /// Login name; also the user id recorded in requests and audit rows.
    pub username: String,
    /// The person behind the account.
    pub person_id: Option<PersonId>,
    /// The agency an `SKPD` account acts for.
    pub agency_id: Option<AgencyId>,
    /// Roles held.
    pub roles: Vec<Role>,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: AccountId,
    /// Login name.
    pub username: String,
    /// Person.
    pub person_id: Option<PersonId>,
    /// Agency (for SKPD accounts).
    pub agency_id: Option<AgencyId>,
    /// Roles held, in the order of [`Role::ALL`].
    pub roles: Vec<Role>,
    /// Whether it may act.
    pub active: bool,
    /// When created.
    pub created_at: DateTime<Utc>,
}

/// A procedure revision as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDefinition {
    /// Procedure code.
    pub code: ProcedureCode,
    /// Revision.
    pub revision: Revision,
    /// File it was first loaded from.
    pub source: String,
    /// The serialized definition.
    pub definition_json: String,
    /// BLAKE3 of `definition_json`, hex.
    pub content_hash: String,
    /// When it was first stored.
    pub loaded_at: DateTime<Utc>,
}

/// A request to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    /// The requesting agency.
    pub agency_id: AgencyId,
    /// The server it concerns, if any (withdrawal, maintenance, backup, restore).
    pub server_id: Option<ServerId>,
    /// A one-line subject.
    pub subject: String,
    /// Application data as JSON (the application layer's type).
    pub details_json: String,
    /// SOP number of the definition.
    pub sop_number: String,
    /// SOP revision date of the definition.
    pub sop_revision_date: NaiveDate,
    /// The initial state.
    pub state: RequestState,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Its id.
    pub id: RequestId,
    /// The requesting agency.
    pub agency_id: AgencyId,
    /// The server it concerns.
    pub server_id: Option<ServerId>,
    /// Subject.
    pub subject: String,
    /// Application data as JSON.
    pub details_json: String,
    /// SOP number.
    pub sop_number: String,
    /// SOP revision date.
    pub sop_revision_date: NaiveDate,
    /// The workflow state (procedure, revision, steps).
    pub state: RequestState,
    /// Optimistic-concurrency version, bumped on every state change.
    pub version: i64,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
}

/// One row of the request list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// Id.
    pub id: RequestId,
    /// Procedure.
    pub procedure: String,
    /// Revision.
    pub revision: u32,
    /// Agency.
    pub agency_id: AgencyId,
    /// Subject.
    pub subject: String,
    /// `active` or `finished`.
    pub status: String,
    /// Current step while active.
    pub current_step: Option<u32>,
    /// Outcome once finished.
    pub outcome: Option<String>,
    /// When opened.
    pub opened_at: DateTime<Utc>,
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    /// Only this procedure.
    pub procedure: Option<String>,
    /// Only active (`Some(true)`) or finished (`Some(false)`) requests.
    pub active: Option<bool>,
    /// Only this agency.
    pub agency_id: Option<AgencyId>,
}

/// A document to store, with its number already allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDocument {
    /// Which form or letter.
    pub kind: DocumentKind,
    /// The request it belongs to.
    pub request_id: Option<RequestId>,
    /// The step that produced it.
    pub step: Option<u32>,
    /// Numbering year.
    pub year: i32,
    /// Sequence within the year.
    pub seq: i64,
    /// The official number.
    pub number: String,
    /// Title.
    pub title: String,
    /// When issued.
    pub issued_at: DateTime<Utc>,
    /// Who issued it (user name).
    pub issued_by: String,
    /// The rendered HTML.
    pub html: String,
    /// BLAKE3 of `html`, hex.
    pub content_hash: String,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRecord {
    /// Id.
    pub id: DocumentId,
    /// Kind.
    pub kind: DocumentKind,
    /// Request.
    pub request_id: Option<RequestId>,
    /// Step.
    pub step: Option<u32>,
    /// Year.
    pub year: i32,
    /// Sequence.
    pub seq: i64,
    /// Official number.
    pub number: String,
    /// Title.
    pub title: String,
    /// When issued.
    pub issued_at: DateTime<Utc>,
    /// Who issued it.
    pub issued_by: String,
    /// HTML.
    pub html: String,
    /// BLAKE3 of `html`, hex.
    pub content_hash: String,
}

coded_enum! {
    /// Whether a server is in the room.
    ServerStatus {
        /// Colocated and running.
        Active = "active",
        /// Withdrawn (penarikan); the entry stays for the record.
        Withdrawn = "withdrawn",
    }
}

/// The hardware columns of form 3 plus identity, as declared or observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareSpec {
    /// Serial number (*S/N Server*).
    pub serial_number: String,
    /// Type (*Type*).
    pub server_type: String,
    /// Brand (*Merk*).
    pub brand: String,
    /// Processor (*Prosesor*).
    pub processor: String,
    /// Memory (*RAM*).
    pub ram: String,
    /// Motherboard.
    pub motherboard: String,
    /// Storage.
    pub storage: String,
    /// Power supply (*PSU*).
    pub psu: String,
}

/// A server to enter in the asset register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewServer {
    /// Owning agency.
    pub agency_id: AgencyId,
    /// The handover request that brought it in.
    pub request_id: Option<RequestId>,
    /// Name (*Nama Server*).
    pub name: String,
    /// Hardware.
    pub hardware: HardwareSpec,
    /// IP addresses, validated by the caller.
    pub ip_addresses: Vec<String>,
    /// Domain or sub-domain.
    pub domain: Option<String>,
    /// When the domain was activated.
    pub domain_activated_on: Option<NaiveDate>,
    /// NOC.
    pub noc: Option<String>,
    /// Rack.
    pub rack_id: Option<RackId>,
    /// Lowest rack unit occupied (1 = bottom).
    pub u_position: Option<i64>,
    /// Height in rack units.
    pub u_size: i64,
    /// Power draw in W.
    pub power_draw_w: i64,
    /// Bandwidth in Mbps.
    pub bandwidth_mbps: i64,
    /// Permanent colocation, or temporary until `temporary_until`.
    pub permanent: bool,
    /// End of a temporary colocation.
    pub temporary_until: Option<NaiveDate>,
    /// Host admin user name.
    pub host_admin_user: Option<String>,
    /// The sealed host admin password.
    pub host_admin_secret_id: Option<SecretId>,
    /// Contact person.
    pub contact: Option<String>,
    /// When registered.
    pub registered_at: DateTime<Utc>,
}

/// A server in the asset register (record #3 of the SOP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Id.
    pub id: ServerId,
    /// Owning agency.
    pub agency_id: AgencyId,
    /// Handover request.
    pub request_id: Option<RequestId>,
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
    /// NOC.
    pub noc: Option<String>,
    /// Rack.
    pub rack_id: Option<RackId>,
    /// Lowest rack unit.
    pub u_position: Option<i64>,
    /// Height in U.
    pub u_size: i64,
    /// Power draw in W.
    pub power_draw_w: i64,
    /// Bandwidth in Mbps.
    pub bandwidth_mbps: i64,
    /// Permanent or temporary.
    pub permanent: bool,
    /// End of a temporary colocation.
    pub temporary_until: Option<NaiveDate>,
    /// Active or withdrawn.
    pub status: ServerStatus,
    /// Host admin user.
    pub host_admin_user: Option<String>,
    /// Sealed host admin password.
    pub host_admin_secret_id: Option<SecretId>,
    /// Contact person.
    pub contact: Option<String>,
    /// When registered.
    pub registered_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// When withdrawn.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
impl Server {
    /// An active server of agency 1, for tests.
    pub(crate) fn example(id: ServerId) -> Self {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        Server {
            id,
            agency_id: AgencyId(1),
            request_id: None,
            name: "simkes".into(),
            hardware: HardwareSpec::default(),
            ip_addresses: vec![],
            domain: None,
            domain_activated_on: None,
            noc: None,
            rack_id: None,
            u_position: None,
            u_size: 1,
            power_draw_w: 300,
            bandwidth_mbps: 100,
            permanent: true,
            temporary_until: None,
            status: ServerStatus::Active,
            host_admin_user: None,
            host_admin_secret_id: None,
            contact: None,
            registered_at: now,
            updated_at: now,
            withdrawn_at: None,
        }
    }
}

/// A sealed secret as stored. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// Id.
    pub id: SecretId,
    /// Random reference bound into the ciphertext, so a sealed value cannot be moved to
    /// another row.
    pub reference: String,
    /// What it is (`host_admin_password`).
    pub purpose: String,
    /// `nonce ‖ ciphertext ‖ tag`.
    pub sealed: Vec<u8>,
    /// Fingerprint of the key that sealed it.
    pub key_fingerprint: String,
    /// When stored.
    pub created_at: DateTime<Utc>,
}

impl fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRecord")
            .field("id", &self.id)
            .field("purpose", &self.purpose)
            .field(
                "sealed",
                &format_args!("<{} sealed bytes>", self.sealed.len()),
            )
            .finish()
    }
}

/// A power feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerFeed {
    /// Id.
    pub id: PowerFeedId,
    /// Name.
    pub name: String,
    /// Capacity in W, shared by the racks it feeds.
    pub capacity_w: i64,
}

/// A rack to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRack {
    /// Name (e.g. `R01`).
    pub name: String,
    /// NOC the rack stands in.
    pub noc: String,
    /// Room and row (*Letak Server*).
    pub location: String,
    /// Height in U.
    pub u_size: i64,
    /// Power budget in W.
    pub power_budget_w: i64,
    /// The feed it draws from.
    pub power_feed_id: Option<PowerFeedId>,
}

/// A rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rack {
    /// Id.
    pub id: RackId,
    /// Name.
    pub name: String,
    /// NOC.
    pub noc: String,
    /// Room and row.
    pub location: String,
    /// Height in U.
    pub u_size: i64,
    /// Power budget in W.
    pub power_budget_w: i64,
    /// Feed.
    pub power_feed_id: Option<PowerFeedId>,
}

/// An uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// Id.
    pub id: UplinkId,
    /// Name.
    pub name: String,
    /// Capacity in Mbps.
    pub capacity_mbps: i64,
}

coded_enum! {
    /// The life of an allocation.
    AllocationStatus {
        /// Held by a request between the capacity decision and the handover.
        Reserved = "reserved",
        /// Held by a server in the room.
        Active = "active",
        /// Given back.
        Released = "released",
    }
}

/// An allocation to insert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAllocation {
    /// Holding request.
    pub request_id: Option<RequestId>,
    /// Holding server.
    pub server_id: Option<ServerId>,
    /// The server's name (declared, for reservations).
    pub server_name: String,
    /// Rack.
    pub rack_id: Option<RackId>,
    /// Lowest U (1 = bottom).
    pub u_start: Option<i64>,
    /// U held.
    pub u_count: i64,
    /// W held.
    pub power_w: i64,
    /// Uplink.
    pub uplink_id: Option<UplinkId>,
    /// Mbps held.
    pub bandwidth_mbps: i64,
    /// Reserved or active.
    pub status: AllocationStatus,
}

/// An allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Id.
    pub id: AllocationId,
    /// Holding request.
    pub request_id: Option<RequestId>,
    /// Holding server.
    pub server_id: Option<ServerId>,
    /// Server name.
    pub server_name: String,
    /// Rack.
    pub rack_id: Option<RackId>,
    /// Lowest U.
    pub u_start: Option<i64>,
    /// U held.
    pub u_count: i64,
    /// W held.
    pub power_w: i64,
    /// Uplink.
    pub uplink_id: Option<UplinkId>,
    /// Mbps held.
    pub bandwidth_mbps: i64,
    /// Status.
    pub status: AllocationStatus,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// When released.
    pub released_at: Option<DateTime<Utc>>,
}

/// A stored capacity check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityCheckRecord {
    /// Id.
    pub id: CapacityCheckId,
    /// Request.
    pub request_id: RequestId,
    /// When computed.
    pub computed_at: DateTime<Utc>,
    /// The report (the application layer's type) as JSON.
    pub report_json: String,
}

coded_enum! {
    /// Who observed a server's specification.
    ObservationSource {
        /// An officer, by hand, at the handover.
        Officer = "officer",
        /// The agent on the server, later.
        Agent = "agent",
    }
}

/// An observation to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObservation {
    /// Request (at a handover).
    pub request_id: Option<RequestId>,
    /// Server (for agent reports).
    pub server_id: Option<ServerId>,
    /// Officer or agent.
    pub source: ObservationSource,
    /// Who.
    pub observed_by: String,
    /// When.
    pub observed_at: DateTime<Utc>,
    /// The observed specification (the application layer's type) as JSON.
    pub spec_json: String,
}

/// A stored observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Id.
    pub id: ObservationId,
    /// Request.
    pub request_id: Option<RequestId>,
    /// Server.
    pub server_id: Option<ServerId>,
    /// Officer or agent.
    pub source: ObservationSource,
    /// Who.
    pub observed_by: String,
    /// When.
    pub observed_at: DateTime<Utc>,
    /// JSON.
    pub spec_json: String,
}

/// A specification mismatch to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMismatch {
    /// Request.
    pub request_id: Option<RequestId>,
    /// Server.
    pub server_id: Option<ServerId>,
    /// Server name.
    pub server_name: String,
    /// Which field (`ram`, `serial_number`, `presence`, …).
    pub field: String,
    /// Declared value.
    pub declared: Option<String>,
    /// Observed value.
    pub observed: Option<String>,
    /// Officer or agent.
    pub source: ObservationSource,
    /// When detected.
    pub detected_at: DateTime<Utc>,
}

/// A stored mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// Id.
    pub id: MismatchId,
    /// The rest.
    #[serde(flatten)]
    pub mismatch: NewMismatch,
}

/// A maintenance request record (record #2 of the SOP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    /// Id.
    pub id: MaintenanceId,
    /// The workflow request.
    pub request_id: RequestId,
    /// Agency.
    pub agency_id: AgencyId,
    /// Server.
    pub server_id: Option<ServerId>,
    /// What the agency reported.
    pub description: String,
    /// When reported.
    pub reported_at: DateTime<Utc>,
    /// `open` or `closed`.
    pub status: String,
    /// When closed.
    pub closed_at: Option<DateTime<Utc>>,
}

coded_enum! {
    /// The life of an outbox entry.
    PendingStatus {
        /// Waiting for a worker.
        Pending = "pending",
        /// Taken by a worker.
        Claimed = "claimed",
        /// Done.
        Done = "done",
        /// Failed; the worker's report says why.
        Failed = "failed",
    }
}

/// An outbox entry: a system action for another component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingActionRecord {
    /// Id.
    pub id: PendingActionId,
    /// Request.
    pub request_id: RequestId,
    /// Step.
    pub step: u32,
    /// `enter` or `complete`.
    pub trigger: String,
    /// The action code (`start_backup_plan`, …).
    pub action: String,
    /// The full [`crate::workflow::SystemAction`] as JSON.
    pub action_json: String,
    /// Status.
    pub status: PendingStatus,
    /// When queued.
    pub created_at: DateTime<Utc>,
    /// Worker that claimed it.
    pub claimed_by: Option<String>,
    /// When claimed.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker's report as JSON.
    pub result_json: Option<String>,
}

/// An audit row as stored (the hash chain is computed by the application layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When, as stored text (hashed verbatim).
    pub at: String,
    /// Who (user name, or `system`).
    pub actor: String,
    /// In which role.
    pub role: Option<String>,
    /// What (`request.decide`, `secret.reveal`, …).
    pub action: String,
    /// Kind of thing changed (`request`, `server`, …).
    pub entity: String,
    /// Its id.
    pub entity_id: String,
    /// JSON before the change.
    pub before_json: Option<String>,
    /// JSON after the change.
    pub after_json: Option<String>,
    /// Hash of the previous row (hex).
    pub prev_hash: String,
    /// This row's hash (hex).
    pub hash: String,
}
