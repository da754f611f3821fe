//! The asset register (servers), sealed secrets, observed specifications and recorded
//! mismatches.

use chrono::{DateTime, Utc};

use super::codec::{
    date, from_json, instant, parse_instant, parse_opt_date, parse_opt_instant, to_json,
};
use super::{
    AgencyId, CatalogError, HardwareSpec, Mismatch, MismatchId, NewMismatch, NewObservation,
    NewServer, Observation, ObservationId, ObservationSource, RackId, RequestId, SecretId,
    SecretRecord, Server, ServerId, ServerStatus, Tx,
};

#[derive(sqlx::FromRow)]
struct SecretRow {
    id: i64,
    reference: String,
    purpose: String,
    sealed: Vec<u8>,
    key_fingerprint: String,
    created_at: String,
}

#[derive(sqlx::FromRow)]
struct ServerRow {
    id: i64,
    agency_id: i64,
    request_id: Option<i64>,
    name: String,
    serial_number: String,
    server_type: String,
    brand: String,
    processor: String,
    ram: String,
    motherboard: String,
    storage: String,
    psu: String,
    ip_addresses_json: String,
    domain: Option<String>,
    domain_activated_on: Option<String>,
    noc: Option<String>,
    rack_id: Option<i64>,
    u_position: Option<i64>,
    u_size: i64,
    power_draw_w: i64,
    bandwidth_mbps: i64,
    permanent: bool,
    temporary_until: Option<String>,
    status: String,
    host_admin_user: Option<String>,
    host_admin_secret_id: Option<i64>,
    contact: Option<String>,
    registered_at: String,
    updated_at: String,
    withdrawn_at: Option<String>,
}

impl ServerRow {
    fn decode(self) -> Result<Server, CatalogError> {
        const TABLE: &str = "servers";
        Ok(Server {
            id: ServerId(self.id),
            agency_id: AgencyId(self.agency_id),
            request_id: self.request_id.map(RequestId),
            name: self.name,
            hardware: HardwareSpec {
                serial_number: self.serial_number,
                server_type: self.server_type,
                brand: self.brand,
                processor: self.processor,
                ram: self.ram,
                motherboard: self.motherboard,
                storage: self.storage,
                psu: self.psu,
            },
            ip_addresses: from_json(TABLE, &self.ip_addresses_json)?,
            domain: self.domain,
            domain_activated_on: parse_opt_date(TABLE, self.domain_activated_on.as_deref())?,
            noc: self.noc,
            rack_id: self.rack_id.map(RackId),
            u_position: self.u_position,
            u_size: self.u_size,
            power_draw_w: self.power_draw_w,
            bandwidth_mbps: self.bandwidth_mbps,
            permanent: self.permanent,
            temporary_until: parse_opt_date(TABLE, self.temporary_until.as_deref())?,
            status: self
                .status
                .parse::<ServerStatus>()
                .map_err(|message| CatalogError::corrupt(TABLE, message))?,
            host_admin_user: self.host_admin_user,
            host_admin_secret_id: self.host_admin_secret_id.map(SecretId),
            contact: self.contact,
            registered_at: parse_instant(TABLE, &self.registered_at)?,
            updated_at: parse_instant(TABLE, &self.updated_at)?,
            withdrawn_at: parse_opt_instant(TABLE, self.withdrawn_at.as_deref())?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ObservationRow {
    id: i64,
    request_id: Option<i64>,
    server_id: Option<i64>,
    source: String,
    observed_by: String,
    observed_at: String,
    spec_json: String,
}

impl ObservationRow {
    fn decode(self) -> Result<Observation, CatalogError> {
        const TABLE: &str = "server_observations";
        Ok(Observation {
            id: ObservationId(self.id),
            request_id: self.request_id.map(RequestId),
            server_id: self.server_id.map(ServerId),
            source: self
                .source
                .parse::<ObservationSource>()
                .map_err(|message| CatalogError::corrupt(TABLE, message))?,
            observed_by: self.observed_by,
            observed_at: parse_instant(TABLE, &self.observed_at)?,
            spec_json: self.spec_json,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MismatchRow {
    id: i64,
    request_id: Option<i64>,
    server_id: Option<i64>,
    server_name: String,
    field: String,
    declared: Option<String>,
    observed: Option<String>,
    source: String,
    detected_at: String,
}

impl MismatchRow {
    fn decode(self) -> Result<Mismatch, CatalogError> {
        const TABLE: &str = "spec_mismatches";
        Ok(Mismatch {
            id: MismatchId(self.id),
            mismatch: NewMismatch {
                request_id: self.request_id.map(RequestId),
                server_id: self.server_id.map(ServerId),
                server_name: self.server_name,
                field: self.field,
                declared: self.declared,
                observed: self.observed,
                source: self
                    .source
                    .parse::<ObservationSource>()
                    .map_err(|message| CatalogError::corrupt(TABLE, message))?,
                detected_at: parse_instant(TABLE, &self.detected_at)?,
            },
        })
    }
}

const INSERT_SECRET: &str = "INSERT INTO secrets (reference, purpose, sealed, key_fingerprint, created_at) \
     VALUES ($1, $2, $3, $4, $5) RETURNING id";
const SELECT_SECRET: &str = "SELECT id, reference, purpose, sealed, key_fingerprint, created_at \
     FROM secrets WHERE id = $1";

const SERVER_COLUMNS_SELECT: &str = "SELECT id, agency_id, request_id, name, serial_number, \
     server_type, brand, processor, ram, motherboard, storage, psu, ip_addresses_json, domain, \
     domain_activated_on, noc, rack_id, u_position, u_size, power_draw_w, bandwidth_mbps, \
     permanent, temporary_until, status, host_admin_user, host_admin_secret_id, contact, \
     registered_at, updated_at, withdrawn_at FROM servers WHERE id = $1";
const SELECT_SERVERS_FOR_REQUEST: &str = "SELECT id, agency_id, request_id, name, serial_number, \
     server_type, brand, processor, ram, motherboard, storage, psu, ip_addresses_json, domain, \
     domain_activated_on, noc, rack_id, u_position, u_size, power_draw_w, bandwidth_mbps, \
     permanent, temporary_until, status, host_admin_user, host_admin_secret_id, contact, \
     registered_at, updated_at, withdrawn_at FROM servers WHERE request_id = $1 ORDER BY id";
const SELECT_SERVERS_FOR_AGENCY: &str = "SELECT id, agency_id, request_id, name, serial_number, \
     server_type, brand, processor, ram, motherboard, storage, psu, ip_addresses_json, domain, \
     domain_activated_on, noc, rack_id, u_position, u_size, power_draw_w, bandwidth_mbps, \
     permanent, temporary_until, status, host_admin_user, host_admin_secret_id, contact, \
     registered_at, updated_at, withdrawn_at FROM servers WHERE agency_id = $1 ORDER BY id";
const INSERT_SERVER: &str = "INSERT INTO servers (agency_id, request_id, name, serial_number, \
     server_type, brand, processor, ram, motherboard, storage, psu, ip_addresses_json, domain, \
     domain_activated_on, noc, rack_id, u_position, u_size, power_draw_w, bandwidth_mbps, \
     permanent, temporary_until, status, host_admin_user, host_admin_secret_id, contact, \
     registered_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
             $19, $20, $21, $22, 'active', $23, $24, $25, $26, $27) RETURNING id";
const WITHDRAW_SERVER: &str = "UPDATE servers SET status = 'withdrawn', withdrawn_at = $1, \
     updated_at = $2 WHERE id = $3 AND status = 'active'";
const SET_SERVER_SECRET: &str =
    "UPDATE servers SET host_admin_secret_id = $1, updated_at = $2 WHERE id = $3";

const INSERT_OBSERVATION: &str = "INSERT INTO server_observations \
     (request_id, server_id, source, observed_by, observed_at, spec_json) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const LATEST_OBSERVATION_FOR_REQUEST: &str = "SELECT id, request_id, server_id, source, \
     observed_by, observed_at, spec_json FROM server_observations WHERE request_id = $1 \
     AND source = 'officer' ORDER BY id DESC LIMIT 1";
const AGENT_OBSERVATIONS_FOR_REQUEST: &str = "SELECT id, request_id, server_id, source, \
     observed_by, observed_at, spec_json FROM server_observations WHERE request_id = $1 \
     AND source = 'agent' ORDER BY id";

const INSERT_MISMATCH: &str = "INSERT INTO spec_mismatches \
     (request_id, server_id, server_name, field, declared, observed, source, detected_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
const MISMATCHES_FOR_REQUEST: &str = "SELECT id, request_id, server_id, server_name, field, \
     declared, observed, source, detected_at FROM spec_mismatches WHERE request_id = $1 \
     ORDER BY id";
const MISMATCHES_FOR_SERVER: &str = "SELECT id, request_id, server_id, server_name, field, \
     declared, observed, source, detected_at FROM spec_mismatches WHERE server_id = $1 \
     ORDER BY id";

impl Tx {
    /// Stores a sealed secret.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the reference is taken.
    pub async fn insert_secret(
        &mut self,
        reference: &str,
        purpose: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        now: DateTime<Utc>,
    ) -> Result<SecretId, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_SECRET)
                .bind(reference)
                .bind(purpose)
                .bind(sealed)
                .bind(key_fingerprint)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(SecretId(id))
    }

    /// A sealed secret.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn secret(&mut self, id: SecretId) -> Result<SecretRecord, CatalogError> {
        let row: Option<SecretRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_SECRET)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        let row = row.ok_or_else(|| CatalogError::not_found("secret", id))?;
        Ok(SecretRecord {
            id: SecretId(row.id),
            reference: row.reference,
            purpose: row.purpose,
            sealed: row.sealed,
            key_fingerprint: row.key_fingerprint,
            created_at: parse_instant("secrets", &row.created_at)?,
        })
    }

    /// Enters a server in the asset register (status active).
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when an active server has the same serial number;
    /// [`CatalogError::Constraint`] for a missing agency, rack or secret.
    pub async fn insert_server(&mut self, server: &NewServer) -> Result<Server, CatalogError> {
        let ips = to_json("servers", &server.ip_addresses)?;
        let now = instant(server.registered_at);
        let hardware = &server.hardware;
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_SERVER)
                .bind(server.agency_id.0)
                .bind(server.request_id.map(|id| id.0))
                .bind(&server.name)
                .bind(&hardware.serial_number)
                .bind(&hardware.server_type)
                .bind(&hardware.brand)
                .bind(&hardware.processor)
                .bind(&hardware.ram)
                .bind(&hardware.motherboard)
                .bind(&hardware.storage)
                .bind(&hardware.psu)
                .bind(&ips)
                .bind(server.domain.as_deref())
                .bind(server.domain_activated_on.map(date))
                .bind(server.noc.as_deref())
                .bind(server.rack_id.map(|id| id.0))
                .bind(server.u_position)
                .bind(server.u_size)
                .bind(server.power_draw_w)
                .bind(server.bandwidth_mbps)
                .bind(server.permanent)
                .bind(server.temporary_until.map(date))
                .bind(server.host_admin_user.as_deref())
                .bind(server.host_admin_secret_id.map(|id| id.0))
                .bind(server.contact.as_deref())
                .bind(&now)
                .bind(&now)
                .fetch_one(&mut *conn)
                .await?
        });
        self.server(ServerId(id)).await
    }

    /// A server of the register.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn server(&mut self, id: ServerId) -> Result<Server, CatalogError> {
        let row: Option<ServerRow> = with_conn!(self, |conn| {
            sqlx::query_as(SERVER_COLUMNS_SELECT)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("server", id))?
            .decode()
    }

    /// The servers a handover request brought in.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn servers_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<Server>, CatalogError> {
        let rows: Vec<ServerRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_SERVERS_FOR_REQUEST)
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(ServerRow::decode).collect()
    }

    /// The servers an agency owns (active and withdrawn).
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn servers_for_agency(
        &mut self,
        agency: AgencyId,
    ) -> Result<Vec<Server>, CatalogError> {
        let rows: Vec<ServerRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_SERVERS_FOR_AGENCY)
                .bind(agency.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(ServerRow::decode).collect()
    }

    /// Marks an active server withdrawn.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when it is not active; [`CatalogError::NotFound`].
    pub async fn withdraw_server(
        &mut self,
        id: ServerId,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let at = instant(now);
        let affected = with_conn!(self, |conn| {
            sqlx::query(WITHDRAW_SERVER)
                .bind(&at)
                .bind(&at)
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            self.server(id).await?;
            return Err(CatalogError::Conflict(format!(
                "server {id} is already withdrawn"
            )));
        }
        Ok(())
    }

    /// Points a server at a (new) sealed host admin password.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn set_server_secret(
        &mut self,
        id: ServerId,
        secret: SecretId,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(SET_SERVER_SECRET)
                .bind(secret.0)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(CatalogError::not_found("server", id));
        }
        Ok(())
    }

    /// Stores an observed specification.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] for a missing request or server.
    pub async fn insert_observation(
        &mut self,
        observation: &NewObservation,
    ) -> Result<ObservationId, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_OBSERVATION)
                .bind(observation.request_id.map(|id| id.0))
                .bind(observation.server_id.map(|id| id.0))
                .bind(observation.source.code())
                .bind(&observation.observed_by)
                .bind(instant(observation.observed_at))
                .bind(&observation.spec_json)
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(ObservationId(id))
    }

    /// The latest observation an officer entered for a request.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn latest_observation_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Option<Observation>, CatalogError> {
        let row: Option<ObservationRow> = with_conn!(self, |conn| {
            sqlx::query_as(LATEST_OBSERVATION_FOR_REQUEST)
                .bind(request.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(ObservationRow::decode).transpose()
    }

    /// The observations agents reported for a request at its handover, oldest first.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn agent_observations_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<Observation>, CatalogError> {
        let rows: Vec<ObservationRow> = with_conn!(self, |conn| {
            sqlx::query_as(AGENT_OBSERVATIONS_FOR_REQUEST)
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(ObservationRow::decode).collect()
    }

    /// Records a specification mismatch.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] for a missing request or server.
    pub async fn insert_mismatch(
        &mut self,
        mismatch: &NewMismatch,
    ) -> Result<MismatchId, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_MISMATCH)
                .bind(mismatch.request_id.map(|id| id.0))
                .bind(mismatch.server_id.map(|id| id.0))
                .bind(&mismatch.server_name)
                .bind(&mismatch.field)
                .bind(mismatch.declared.as_deref())
                .bind(mismatch.observed.as_deref())
                .bind(mismatch.source.code())
                .bind(instant(mismatch.detected_at))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(MismatchId(id))
    }

    /// The mismatches recorded for a request.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn mismatches_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<Mismatch>, CatalogError> {
        let rows: Vec<MismatchRow> = with_conn!(self, |conn| {
            sqlx::query_as(MISMATCHES_FOR_REQUEST)
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(MismatchRow::decode).collect()
    }

    /// The mismatches recorded for a server.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn mismatches_for_server(
        &mut self,
        server: ServerId,
    ) -> Result<Vec<Mismatch>, CatalogError> {
        let rows: Vec<MismatchRow> = with_conn!(self, |conn| {
            sqlx::query_as(MISMATCHES_FOR_SERVER)
                .bind(server.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(MismatchRow::decode).collect()
    }
}
