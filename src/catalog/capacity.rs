//! The capacity model: power feeds, racks, uplinks, the allocations held against them,
//! and stored capacity checks.

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant, parse_opt_instant};
use super::{
    Allocation, AllocationId, AllocationStatus, BackendKind, CapacityCheckId, CapacityCheckRecord,
    CatalogError, NewAllocation, NewRack, PowerFeed, PowerFeedId, Rack, RackId, RequestId,
    ServerId, Tx, Uplink, UplinkId,
};

#[derive(sqlx::FromRow)]
struct FeedRow {
    id: i64,
    name: String,
    capacity_w: i64,
}

#[derive(sqlx::FromRow)]
struct RackRow {
    id: i64,
    name: String,
    noc: String,
    location: String,
    u_size: i64,
    power_budget_w: i64,
    power_feed_id: Option<i64>,
}

impl From<RackRow> for Rack {
    fn from(row: RackRow) -> Self {
        Rack {
            id: RackId(row.id),
            name: row.name,
            noc: row.noc,
            location: row.location,
            u_size: row.u_size,
            power_budget_w: row.power_budget_w,
            power_feed_id: row.power_feed_id.map(PowerFeedId),
        }
    }
}

#[derive(sqlx::FromRow)]
struct UplinkRow {
    id: i64,
    name: String,
    capacity_mbps: i64,
}

#[derive(sqlx::FromRow)]
struct AllocationRow {
    id: i64,
    request_id: Option<i64>,
    server_id: Option<i64>,
    server_name: String,
    rack_id: Option<i64>,
    u_start: Option<i64>,
    u_count: i64,
    power_w: i64,
    uplink_id: Option<i64>,
    bandwidth_mbps: i64,
    status: String,
    created_at: String,
    released_at: Option<String>,
}

impl AllocationRow {
    fn decode(self) -> Result<Allocation, CatalogError> {
        const TABLE: &str = "allocations";
        Ok(Allocation {
            id: AllocationId(self.id),
            request_id: self.request_id.map(RequestId),
            server_id: self.server_id.map(ServerId),
            server_name: self.server_name,
            rack_id: self.rack_id.map(RackId),
            u_start: self.u_start,
            u_count: self.u_count,
            power_w: self.power_w,
            uplink_id: self.uplink_id.map(UplinkId),
            bandwidth_mbps: self.bandwidth_mbps,
            status: self
                .status
                .parse::<AllocationStatus>()
                .map_err(|message| CatalogError::corrupt(TABLE, message))?,
            created_at: parse_instant(TABLE, &self.created_at)?,
            released_at: parse_opt_instant(TABLE, self.released_at.as_deref())?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CheckRow {
    id: i64,
    request_id: i64,
    computed_at: String,
    report_json: String,
}

const INSERT_FEED: &str =
    "INSERT INTO power_feeds (name, capacity_w, created_at) VALUES ($1, $2, $3) RETURNING id";
const SELECT_FEEDS: &str = "SELECT id, name, capacity_w FROM power_feeds ORDER BY id";
const LOCK_FEEDS: &str = "SELECT id, name, capacity_w FROM power_feeds ORDER BY id FOR UPDATE";
const INSERT_RACK: &str = "INSERT INTO racks \
     (name, noc, location, u_size, power_budget_w, power_feed_id, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
const SELECT_RACKS: &str = "SELECT id, name, noc, location, u_size, power_budget_w, power_feed_id \
     FROM racks ORDER BY id";
const LOCK_RACKS: &str = "SELECT id, name, noc, location, u_size, power_budget_w, power_feed_id \
     FROM racks ORDER BY id FOR UPDATE";
const SELECT_RACK: &str = "SELECT id, name, noc, location, u_size, power_budget_w, power_feed_id \
     FROM racks WHERE id = $1";
const INSERT_UPLINK: &str =
    "INSERT INTO uplinks (name, capacity_mbps, created_at) VALUES ($1, $2, $3) RETURNING id";
const SELECT_UPLINKS: &str = "SELECT id, name, capacity_mbps FROM uplinks ORDER BY id";
const LOCK_UPLINKS: &str = "SELECT id, name, capacity_mbps FROM uplinks ORDER BY id FOR UPDATE";

const ALLOCATION_COLUMNS_LIVE: &str = "SELECT id, request_id, server_id, server_name, rack_id, \
     u_start, u_count, power_w, uplink_id, bandwidth_mbps, status, created_at, released_at \
     FROM allocations WHERE status <> 'released' ORDER BY id";
const ALLOCATIONS_FOR_REQUEST: &str = "SELECT id, request_id, server_id, server_name, rack_id, \
     u_start, u_count, power_w, uplink_id, bandwidth_mbps, status, created_at, released_at \
     FROM allocations WHERE request_id = $1 ORDER BY id";
const ALLOCATIONS_FOR_SERVER: &str = "SELECT id, request_id, server_id, server_name, rack_id, \
     u_start, u_count, power_w, uplink_id, bandwidth_mbps, status, created_at, released_at \
     FROM allocations WHERE server_id = $1 ORDER BY id";
const INSERT_ALLOCATION: &str = "INSERT INTO allocations (request_id, server_id, server_name, \
     rack_id, u_start, u_count, power_w, uplink_id, bandwidth_mbps, status, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";
const ACTIVATE_ALLOCATION: &str = "UPDATE allocations SET status = 'active', server_id = $1 \
     WHERE id = $2 AND status = 'reserved'";
const RELEASE_FOR_REQUEST: &str = "UPDATE allocations SET status = 'released', released_at = $1 \
     WHERE request_id = $2 AND status = 'reserved'";
const RELEASE_FOR_SERVER: &str = "UPDATE allocations SET status = 'released', released_at = $1 \
     WHERE server_id = $2 AND status <> 'released'";

const INSERT_CHECK: &str = "INSERT INTO capacity_checks (request_id, computed_at, report_json) \
     VALUES ($1, $2, $3) RETURNING id";
const LATEST_CHECK: &str = "SELECT id, request_id, computed_at, report_json FROM capacity_checks \
     WHERE request_id = $1 ORDER BY id DESC LIMIT 1";

impl Tx {
    /// Adds a power feed.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] for a duplicate name; [`CatalogError::Constraint`] for a
    /// capacity that is not positive.
    pub async fn insert_power_feed(
        &mut self,
        name: &str,
        capacity_w: i64,
        now: DateTime<Utc>,
    ) -> Result<PowerFeed, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_FEED)
                .bind(name)
                .bind(capacity_w)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(PowerFeed {
            id: PowerFeedId(id),
            name: name.to_owned(),
            capacity_w,
        })
    }

    /// Adds a rack.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] for a duplicate name; [`CatalogError::Constraint`] for a
    /// missing feed or sizes that are not positive.
    pub async fn insert_rack(
        &mut self,
        rack: &NewRack,
        now: DateTime<Utc>,
    ) -> Result<Rack, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_RACK)
                .bind(&rack.name)
                .bind(&rack.noc)
                .bind(&rack.location)
                .bind(rack.u_size)
                .bind(rack.power_budget_w)
                .bind(rack.power_feed_id.map(|id| id.0))
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        self.rack(RackId(id)).await
    }

    /// One rack.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn rack(&mut self, id: RackId) -> Result<Rack, CatalogError> {
        let row: Option<RackRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_RACK)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        Ok(row
            .ok_or_else(|| CatalogError::not_found("rack", id))?
            .into())
    }

    /// Adds an uplink.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] for a duplicate name.
    pub async fn insert_uplink(
        &mut self,
        name: &str,
        capacity_mbps: i64,
        now: DateTime<Utc>,
    ) -> Result<Uplink, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_UPLINK)
                .bind(name)
                .bind(capacity_mbps)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(Uplink {
            id: UplinkId(id),
            name: name.to_owned(),
            capacity_mbps,
        })
    }

    /// Every power feed, rack and uplink, read without locks (for reports and proposals).
    ///
    /// # Errors
    /// From the driver.
    pub async fn capacity_model(
        &mut self,
    ) -> Result<(Vec<PowerFeed>, Vec<Rack>, Vec<Uplink>), CatalogError> {
        self.read_capacity_model(false).await
    }

    /// Every power feed, rack and uplink, **locked** until the transaction ends so that
    /// no concurrent transaction can allocate against them: on PostgreSQL with
    /// `SELECT … FOR UPDATE` (feeds, then racks, then uplinks, each by id — the same order
    /// in every transaction, so they cannot deadlock); on SQLite the write transaction
    /// already holds the database's write lock. Read the allocations after this call.
    ///
    /// # Errors
    /// From the driver ([`CatalogError::Unavailable`] when the wait is aborted).
    pub async fn lock_capacity_model(
        &mut self,
    ) -> Result<(Vec<PowerFeed>, Vec<Rack>, Vec<Uplink>), CatalogError> {
        self.read_capacity_model(true).await
    }

    async fn read_capacity_model(
        &mut self,
        lock: bool,
    ) -> Result<(Vec<PowerFeed>, Vec<Rack>, Vec<Uplink>), CatalogError> {
        // SQLite has no FOR UPDATE, and needs none: the write transaction began with
        // BEGIN IMMEDIATE and so already excludes every other writer.
        let lock_rows = lock && self.backend() == BackendKind::Postgres;
        let (feeds_sql, racks_sql, uplinks_sql) = if lock_rows {
            (LOCK_FEEDS, LOCK_RACKS, LOCK_UPLINKS)
        } else {
            (SELECT_FEEDS, SELECT_RACKS, SELECT_UPLINKS)
        };
        let (feeds, racks, uplinks): (Vec<FeedRow>, Vec<RackRow>, Vec<UplinkRow>) =
            with_conn!(self, |conn| {
                (
                    sqlx::query_as(feeds_sql).fetch_all(&mut *conn).await?,
                    sqlx::query_as(racks_sql).fetch_all(&mut *conn).await?,
                    sqlx::query_as(uplinks_sql).fetch_all(&mut *conn).await?,
                )
            });
        Ok((
            feeds
                .into_iter()
                .map(|row| PowerFeed {
                    id: PowerFeedId(row.id),
                    name: row.name,
                    capacity_w: row.capacity_w,
                })
                .collect(),
            racks.into_iter().map(Rack::from).collect(),
            uplinks
                .into_iter()
                .map(|row| Uplink {
                    id: UplinkId(row.id),
                    name: row.name,
                    capacity_mbps: row.capacity_mbps,
                })
                .collect(),
        ))
    }

    /// Every allocation that is not released.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn live_allocations(&mut self) -> Result<Vec<Allocation>, CatalogError> {
        let rows: Vec<AllocationRow> = with_conn!(self, |conn| {
            sqlx::query_as(ALLOCATION_COLUMNS_LIVE)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(AllocationRow::decode).collect()
    }

    /// Every allocation a request holds or held.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn allocations_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<Allocation>, CatalogError> {
        let rows: Vec<AllocationRow> = with_conn!(self, |conn| {
            sqlx::query_as(ALLOCATIONS_FOR_REQUEST)
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(AllocationRow::decode).collect()
    }

    /// Every allocation a server holds or held.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn allocations_for_server(
        &mut self,
        server: ServerId,
    ) -> Result<Vec<Allocation>, CatalogError> {
        let rows: Vec<AllocationRow> = with_conn!(self, |conn| {
            sqlx::query_as(ALLOCATIONS_FOR_SERVER)
                .bind(server.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(AllocationRow::decode).collect()
    }

    /// Records an allocation.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] for a missing holder, rack or uplink, or a rack
    /// allocation without a position.
    pub async fn insert_allocation(
        &mut self,
        allocation: &NewAllocation,
        now: DateTime<Utc>,
    ) -> Result<AllocationId, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_ALLOCATION)
                .bind(allocation.request_id.map(|id| id.0))
                .bind(allocation.server_id.map(|id| id.0))
                .bind(&allocation.server_name)
                .bind(allocation.rack_id.map(|id| id.0))
                .bind(allocation.u_start)
                .bind(allocation.u_count)
                .bind(allocation.power_w)
                .bind(allocation.uplink_id.map(|id| id.0))
                .bind(allocation.bandwidth_mbps)
                .bind(allocation.status.code())
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(AllocationId(id))
    }

    /// Hands a reserved allocation over to the server that now holds it.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when it is not reserved.
    pub async fn activate_allocation(
        &mut self,
        id: AllocationId,
        server: ServerId,
    ) -> Result<(), CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(ACTIVATE_ALLOCATION)
                .bind(server.0)
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(CatalogError::Conflict(format!(
                "allocation {id} is not reserved"
            )));
        }
        Ok(())
    }

    /// Releases the reservations of a request; returns how many were released.
    ///
    /// # Errors
    /// From the driver.
    pub async fn release_request_reservations(
        &mut self,
        request: RequestId,
        now: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query(RELEASE_FOR_REQUEST)
                .bind(instant(now))
                .bind(request.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// Releases everything a server holds; returns how many allocations were released.
    ///
    /// # Errors
    /// From the driver.
    pub async fn release_server_allocations(
        &mut self,
        server: ServerId,
        now: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query(RELEASE_FOR_SERVER)
                .bind(instant(now))
                .bind(server.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// Stores a capacity check report.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] when the request does not exist.
    pub async fn insert_capacity_check(
        &mut self,
        request: RequestId,
        computed_at: DateTime<Utc>,
        report_json: &str,
    ) -> Result<CapacityCheckId, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_CHECK)
                .bind(request.0)
                .bind(instant(computed_at))
                .bind(report_json)
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(CapacityCheckId(id))
    }

    /// The latest capacity check of a request.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn latest_capacity_check(
        &mut self,
        request: RequestId,
    ) -> Result<Option<CapacityCheckRecord>, CatalogError> {
        let row: Option<CheckRow> = with_conn!(self, |conn| {
            sqlx::query_as(LATEST_CHECK)
                .bind(request.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(|row| {
            Ok(CapacityCheckRecord {
                id: CapacityCheckId(row.id),
                request_id: RequestId(row.request_id),
                computed_at: parse_instant("capacity_checks", &row.computed_at)?,
                report_json: row.report_json,
            })
        })
        .transpose()
    }
}
