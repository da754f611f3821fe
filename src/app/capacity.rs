//! Capacity: how much rack space, power and bandwidth is free, whether a request's
//! declared needs fit (the A3 check and the A4 proposal, with the numbers), and the
//! reservation taken when A4 is answered "yes" — in the same transaction, against locked
//! capacity rows, so that concurrent approvals can never over-commit a rack, a feed or an
//! uplink.
//!
//! Placement rule: all servers of one request go into one rack as one contiguous block
//! (an agency's machines stay together), in the fitting rack that leaves the least free
//! space (best fit keeps large blocks free for large requests); bandwidth comes from the
//! fitting uplink with the most headroom.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::audit::json;
use super::details::ColocationApplication;
use super::{App, AppError, Work};
use crate::catalog::{
    Allocation, AllocationStatus, NewAllocation, NewRack, PowerFeed, PowerFeedId, Rack, RackId,
    RequestId, Uplink, UplinkId,
};
use crate::workflow::{Answer, Role};

/// Roles that manage the capacity model.
const CAPACITY_ROLES: [Role; 2] = [Role::Admin, Role::KasiInfras];

/// What one declared server needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNeed {
    /// Declared name.
    pub name: String,
    /// Rack units.
    pub u_size: i64,
    /// Watts.
    pub power_w: i64,
    /// Mbps.
    pub bandwidth_mbps: i64,
}

/// A request's declared needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityNeeds {
    /// Per server, in declared order.
    pub servers: Vec<ServerNeed>,
}

impl CapacityNeeds {
    /// The needs declared on a colocation application.
    pub fn of(application: &ColocationApplication) -> Self {
        CapacityNeeds {
            servers: application
                .servers
                .iter()
                .map(|server| ServerNeed {
                    name: server.name.clone(),
                    u_size: server.u_size,
                    power_w: server.power_draw_w,
                    bandwidth_mbps: server.bandwidth_mbps,
                })
                .collect(),
        }
    }

    /// Total rack units.
    pub fn total_u(&self) -> i64 {
        self.servers.iter().map(|server| server.u_size).sum()
    }

    /// Total watts.
    pub fn total_power_w(&self) -> i64 {
        self.servers.iter().map(|server| server.power_w).sum()
    }

    /// Total Mbps.
    pub fn total_bandwidth_mbps(&self) -> i64 {
        self.servers
            .iter()
            .map(|server| server.bandwidth_mbps)
            .sum()
    }
}

/// One rack's free capacity against the needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackCapacity {
    /// Rack.
    pub rack_id: RackId,
    /// Name.
    pub name: String,
    /// NOC.
    pub noc: String,
    /// Room and row.
    pub location: String,
    /// Height.
    pub u_size: i64,
    /// U held by allocations.
    pub used_u: i64,
    /// U free.
    pub free_u: i64,
    /// The largest contiguous free block.
    pub largest_free_block: i64,
    /// Lowest U where the needed block fits.
    pub first_fit_u: Option<i64>,
    /// Budget in W.
    pub power_budget_w: i64,
    /// W held.
    pub power_used_w: i64,
    /// W still available: the rack's headroom, capped by its feed's.
    pub power_headroom_w: i64,
    /// Whether the needs fit here (space and power).
    pub fits: bool,
}

/// One uplink's free bandwidth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkCapacity {
    /// Uplink.
    pub uplink_id: UplinkId,
    /// Name.
    pub name: String,
    /// Capacity in Mbps.
    pub capacity_mbps: i64,
    /// Mbps held.
    pub used_mbps: i64,
    /// Mbps free.
    pub free_mbps: i64,
}

/// The capacity availability data of A3/A4: free space, power headroom and bandwidth,
/// the placement chosen, and the proposed answer to A4 with its reason in both languages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// What was asked.
    pub needs: CapacityNeeds,
    /// Every rack.
    pub racks: Vec<RackCapacity>,
    /// Every uplink.
    pub uplinks: Vec<UplinkCapacity>,
    /// The rack chosen.
    pub rack: Option<RackId>,
    /// The lowest U of the block chosen.
    pub u_start: Option<i64>,
    /// The uplink chosen (none when no bandwidth is needed).
    pub uplink: Option<UplinkId>,
    /// The proposed answer to A4.
    pub proposal: Answer,
    /// Why, in Indonesian (for the documents).
    pub reason_id: String,
    /// Why, in English.
    pub reason_en: String,
}

impl CapacityReport {
    /// The chosen rack's line.
    pub fn chosen_rack(&self) -> Option<&RackCapacity> {
        self.rack
            .and_then(|id| self.racks.iter().find(|rack| rack.rack_id == id))
    }

    /// The chosen uplink's line.
    pub fn chosen_uplink(&self) -> Option<&UplinkCapacity> {
        self.uplink
            .and_then(|id| self.uplinks.iter().find(|uplink| uplink.uplink_id == id))
    }
}

/// Formats an integer the Indonesian way: `12.500`.
pub(crate) fn thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push('.');
        }
        out.push(digit);
    }
    if value < 0 { format!("-{out}") } else { out }
}

/// Computes the capacity report: pure, from the model and the live allocations.
pub(crate) fn plan(
    needs: &CapacityNeeds,
    feeds: &[PowerFeed],
    racks: &[Rack],
    uplinks: &[Uplink],
    allocations: &[Allocation],
) -> CapacityReport {
    let need_u = needs.total_u();
    let need_w = needs.total_power_w();
    let need_mbps = needs.total_bandwidth_mbps();
    let live: Vec<&Allocation> = allocations
        .iter()
        .filter(|allocation| allocation.status != AllocationStatus::Released)
        .collect();

    // Power drawn per feed, over all its racks.
    let rack_feed: HashMap<RackId, Option<PowerFeedId>> = racks
        .iter()
        .map(|rack| (rack.id, rack.power_feed_id))
        .collect();
    let mut feed_used: HashMap<PowerFeedId, i64> = HashMap::new();
    for allocation in &live {
        if let Some(Some(feed)) = allocation.rack_id.and_then(|rack| rack_feed.get(&rack)) {
            *feed_used.entry(*feed).or_default() += allocation.power_w;
        }
    }

    let rack_lines: Vec<RackCapacity> = racks
        .iter()
        .map(|rack| {
            let size = usize::try_from(rack.u_size.max(0)).unwrap_or(0);
            let mut occupied = vec![false; size];
            let mut used_u = 0;
            let mut power_used_w = 0;
            for allocation in live.iter().filter(|a| a.rack_id == Some(rack.id)) {
                used_u += allocation.u_count;
                power_used_w += allocation.power_w;
                if let Some(start) = allocation.u_start {
                    for u in start..start + allocation.u_count {
                        if let Some(slot) = usize::try_from(u - 1)
                            .ok()
                            .and_then(|i| occupied.get_mut(i))
                        {
                            *slot = true;
                        }
                    }
                }
            }
            let (largest_free_block, first_fit_u) = free_blocks(&occupied, need_u);
            let feed_headroom = rack.power_feed_id.and_then(|feed| {
                feeds
                    .iter()
                    .find(|candidate| candidate.id == feed)
                    .map(|feed| feed.capacity_w - feed_used.get(&feed.id).copied().unwrap_or(0))
            });
            let rack_headroom = rack.power_budget_w - power_used_w;
            let power_headroom_w =
                feed_headroom.map_or(rack_headroom, |feed| rack_headroom.min(feed));
            let fits = first_fit_u.is_some() && power_headroom_w >= need_w;
            RackCapacity {
                rack_id: rack.id,
                name: rack.name.clone(),
                noc: rack.noc.clone(),
                location: rack.location.clone(),
                u_size: rack.u_size,
                used_u,
                free_u: rack.u_size - used_u,
                largest_free_block,
                first_fit_u,
                power_budget_w: rack.power_budget_w,
                power_used_w,
                power_headroom_w,
                fits,
            }
        })
        .collect();

    let uplink_lines: Vec<UplinkCapacity> = uplinks
        .iter()
        .map(|uplink| {
            let used_mbps: i64 = live
                .iter()
                .filter(|allocation| allocation.uplink_id == Some(uplink.id))
                .map(|allocation| allocation.bandwidth_mbps)
                .sum();
            UplinkCapacity {
                uplink_id: uplink.id,
                name: uplink.name.clone(),
                capacity_mbps: uplink.capacity_mbps,
                used_mbps,
                free_mbps: uplink.capacity_mbps - used_mbps,
            }
        })
        .collect();

    let rack = rack_lines
        .iter()
        .filter(|rack| rack.fits)
        .min_by_key(|rack| (rack.free_u - need_u, rack.rack_id));
    let uplink = if need_mbps == 0 {
        None
    } else {
        uplink_lines
            .iter()
            .filter(|uplink| uplink.free_mbps >= need_mbps)
            .max_by_key(|uplink| (uplink.free_mbps, std::cmp::Reverse(uplink.uplink_id)))
    };
    let bandwidth_ok = need_mbps == 0 || uplink.is_some();

    let (proposal, reason_id, reason_en) = match rack {
        Some(rack) if bandwidth_ok => {
            let start = rack.first_fit_u.unwrap_or(1);
            let end = start + need_u - 1;
            let (bandwidth_id, bandwidth_en) = match uplink {
                Some(uplink) => (
                    format!(
                        "; bandwidth {} tersisa {} Mbps (dibutuhkan {} Mbps)",
                        uplink.name,
                        thousands(uplink.free_mbps),
                        thousands(need_mbps)
                    ),
                    format!(
                        "; uplink {} has {} Mbps free ({} Mbps needed)",
                        uplink.name,
                        thousands(uplink.free_mbps),
                        thousands(need_mbps)
                    ),
                ),
                None => (String::new(), String::new()),
            };
            (
                Answer::Yes,
                format!(
                    "Kapasitas tersedia: rak {} ({}), U{}–U{} ({} U dari {} U kosong); sisa daya {} W (dibutuhkan {} W){}.",
                    rack.name,
                    rack.location,
                    start,
                    end,
                    need_u,
                    rack.free_u,
                    thousands(rack.power_headroom_w),
                    thousands(need_w),
                    bandwidth_id
                ),
                format!(
                    "Capacity available: rack {} ({}), U{}–U{} ({} U of {} U free); power headroom {} W ({} W needed){}.",
                    rack.name,
                    rack.location,
                    start,
                    end,
                    need_u,
                    rack.free_u,
                    thousands(rack.power_headroom_w),
                    thousands(need_w),
                    bandwidth_en
                ),
            )
        }
        _ => {
            let (mut id, mut en) = (Vec::new(), Vec::new());
            if rack.is_none() {
                let best_block = rack_lines
                    .iter()
                    .map(|r| r.largest_free_block)
                    .max()
                    .unwrap_or(0);
                let best_power = rack_lines
                    .iter()
                    .map(|r| r.power_headroom_w)
                    .max()
                    .unwrap_or(0);
                if rack_lines.is_empty() {
                    id.push("belum ada rak yang terdaftar".to_owned());
                    en.push("no rack is registered".to_owned());
                } else if !rack_lines.iter().any(|r| r.fits) {
                    if best_block < need_u {
                        id.push(format!(
                            "tempat: blok kosong terbesar {best_block} U, dibutuhkan {need_u} U"
                        ));
                        en.push(format!(
                            "space: largest free block {best_block} U, {need_u} U needed"
                        ));
                    }
                    if best_power < need_w {
                        id.push(format!(
                            "listrik: sisa daya terbesar {} W, dibutuhkan {} W",
                            thousands(best_power),
                            thousands(need_w)
                        ));
                        en.push(format!(
                            "power: largest headroom {} W, {} W needed",
                            thousands(best_power),
                            thousands(need_w)
                        ));
                    }
                    if best_block >= need_u && best_power >= need_w {
                        id.push(
                            "tidak ada rak yang sekaligus memiliki tempat dan daya yang cukup"
                                .to_owned(),
                        );
                        en.push("no rack has both enough space and enough power".to_owned());
                    }
                }
            }
            if !bandwidth_ok {
                let best = uplink_lines.iter().map(|u| u.free_mbps).max().unwrap_or(0);
                id.push(format!(
                    "bandwidth: sisa terbesar {} Mbps, dibutuhkan {} Mbps",
                    thousands(best),
                    thousands(need_mbps)
                ));
                en.push(format!(
                    "bandwidth: largest headroom {} Mbps, {} Mbps needed",
                    thousands(best),
                    thousands(need_mbps)
                ));
            }
            (
                Answer::No,
                format!("Kapasitas tidak tersedia: {}.", id.join("; ")),
                format!("Capacity not available: {}.", en.join("; ")),
            )
        }
    };
    let fits = proposal == Answer::Yes;
    CapacityReport {
        needs: needs.clone(),
        racks: rack_lines.clone(),
        uplinks: uplink_lines.clone(),
        rack: rack.filter(|_| fits).map(|rack| rack.rack_id),
        u_start: rack.filter(|_| fits).and_then(|rack| rack.first_fit_u),
        uplink: uplink.filter(|_| fits).map(|uplink| uplink.uplink_id),
        proposal,
        reason_id,
        reason_en,
    }
}

/// The largest free block and the lowest start of a free block of `need` units (U
/// numbers count from 1 at the bottom). A need of 0 fits anywhere, at U1.
fn free_blocks(occupied: &[bool], need: i64) -> (i64, Option<i64>) {
    let mut largest = 0i64;
    let mut first_fit = if need <= 0 { Some(1) } else { None };
    let mut run = 0i64;
    for (index, taken) in occupied.iter().enumerate() {
        if *taken {
            run = 0;
            continue;
        }
        run += 1;
        largest = largest.max(run);
        if first_fit.is_none() && run >= need {
            first_fit = Some(index as i64 + 2 - run);
        }
    }
    (largest, first_fit)
}

/// Runs the A3 capacity check for a request and stores the report.
pub(crate) async fn run_check(
    work: &mut Work<'_>,
    request: RequestId,
    application: &ColocationApplication,
) -> Result<CapacityReport, AppError> {
    let needs = CapacityNeeds::of(application);
    let (feeds, racks, uplinks) = work.tx.capacity_model().await?;
    let allocations = work.tx.live_allocations().await?;
    let report = plan(&needs, &feeds, &racks, &uplinks, &allocations);
    let report_json = serde_json::to_string(&report)
        .map_err(|error| AppError::internal(format!("cannot encode a capacity report: {error}")))?;
    let check = work
        .tx
        .insert_capacity_check(request, work.now, &report_json)
        .await?;
    work.audit("capacity.check", "request", request).after = Some(serde_json::json!({
        "capacity_check": check,
        "proposal": report.proposal,
        "reason": report.reason_en,
    }));
    Ok(report)
}

/// Reserves the capacity a request needs, against locked capacity rows. Does nothing when
/// the request already holds a reservation.
///
/// # Errors
/// [`AppError::Conflict`] when the needs no longer fit (another request took the room
/// since the check): A4 must then be answered "no".
pub(crate) async fn reserve(
    work: &mut Work<'_>,
    request: RequestId,
    application: &ColocationApplication,
) -> Result<CapacityReport, AppError> {
    let needs = CapacityNeeds::of(application);
    // Lock first, then read the allocations: the allocations read are then the last
    // committed ones, and nobody can add one until this transaction ends.
    let (feeds, racks, uplinks) = work.tx.lock_capacity_model().await?;
    let allocations = work.tx.live_allocations().await?;
    let held: Vec<&Allocation> = allocations
        .iter()
        .filter(|allocation| {
            allocation.request_id == Some(request)
                && allocation.status == AllocationStatus::Reserved
        })
        .collect();
    let report = plan(&needs, &feeds, &racks, &uplinks, &allocations);
    if !held.is_empty() {
        return Ok(report);
    }
    let (Some(rack), Some(start), Answer::Yes) = (report.rack, report.u_start, report.proposal)
    else {
        return Err(AppError::Conflict(format!(
            "the capacity is no longer available, answer step 4 \"no\": {} / {}",
            report.reason_en, report.reason_id
        )));
    };
    let mut offset = 0;
    let mut created = Vec::new();
    for server in &needs.servers {
        let allocation = NewAllocation {
            request_id: Some(request),
            server_id: None,
            server_name: server.name.clone(),
            rack_id: Some(rack),
            u_start: Some(start + offset),
            u_count: server.u_size,
            power_w: server.power_w,
            uplink_id: report.uplink.filter(|_| server.bandwidth_mbps > 0),
            bandwidth_mbps: server.bandwidth_mbps,
            status: AllocationStatus::Reserved,
        };
        offset += server.u_size;
        let id = work.tx.insert_allocation(&allocation, work.now).await?;
        created.push(serde_json::json!({ "allocation": id, "detail": json(&allocation) }));
    }
    work.audit("capacity.reserve", "request", request).after = Some(serde_json::json!({
        "allocations": created,
        "reason": report.reason_en,
    }));
    Ok(report)
}

/// Releases what a request reserved (it was rejected or cancelled).
pub(crate) async fn release(work: &mut Work<'_>, request: RequestId) -> Result<(), AppError> {
    let released = work
        .tx
        .release_request_reservations(request, work.now)
        .await?;
    if released > 0 {
        work.audit("capacity.release", "request", request).after =
            Some(serde_json::json!({ "released_allocations": released }));
    }
    Ok(())
}

impl App {
    /// Adds a power feed. ADMIN or KASI_INFRAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for an empty name or a capacity
    /// that is not positive; [`AppError::Conflict`] for a duplicate name.
    pub async fn add_power_feed(
        &self,
        username: &str,
        name: &str,
        capacity_w: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<PowerFeed, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&CAPACITY_ROLES, "manage the capacity model")?;
        let name = super::required("the feed name", name)?;
        if capacity_w <= 0 {
            return Err(AppError::invalid(
                "a power feed's capacity must be more than 0 W",
            ));
        }
        let feed = work.tx.insert_power_feed(&name, capacity_w, now).await?;
        work.audit("capacity.add_feed", "power_feed", feed.id).after = Some(json(&feed));
        work.commit().await?;
        Ok(feed)
    }

    /// Adds a rack. ADMIN or KASI_INFRAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for empty texts or sizes that
    /// are not positive; [`AppError::NotFound`] for an unknown feed;
    /// [`AppError::Conflict`] for a duplicate name.
    pub async fn add_rack(
        &self,
        username: &str,
        rack: NewRack,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Rack, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&CAPACITY_ROLES, "manage the capacity model")?;
        if rack.u_size <= 0 || rack.u_size > 60 {
            return Err(AppError::invalid(format!(
                "a rack's height must be 1–60 U, not {}",
                rack.u_size
            )));
        }
        if rack.power_budget_w <= 0 {
            return Err(AppError::invalid(
                "a rack's power budget must be more than 0 W",
            ));
        }
        let rack = NewRack {
            name: super::required("the rack name", &rack.name)?,
            noc: super::required("the NOC", &rack.noc)?,
            location: super::required("the rack location", &rack.location)?,
            ..rack
        };
        if let Some(feed) = rack.power_feed_id {
            let (feeds, _, _) = work.tx.capacity_model().await?;
            if !feeds.iter().any(|candidate| candidate.id == feed) {
                return Err(AppError::NotFound(format!(
                    "power feed {feed} does not exist"
                )));
            }
        }
        let stored = work.tx.insert_rack(&rack, now).await?;
        work.audit("capacity.add_rack", "rack", stored.id).after = Some(json(&stored));
        work.commit().await?;
        Ok(stored)
    }

    /// Adds an uplink. ADMIN or KASI_INFRAS.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`]; [`AppError::Conflict`].
    pub async fn add_uplink(
        &self,
        username: &str,
        name: &str,
        capacity_mbps: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Uplink, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&CAPACITY_ROLES, "manage the capacity model")?;
        let name = super::required("the uplink name", name)?;
        if capacity_mbps <= 0 {
            return Err(AppError::invalid(
                "an uplink's capacity must be more than 0 Mbps",
            ));
        }
        let uplink = work.tx.insert_uplink(&name, capacity_mbps, now).await?;
        work.audit("capacity.add_uplink", "uplink", uplink.id).after = Some(json(&uplink));
        work.commit().await?;
        Ok(uplink)
    }

    /// The free capacity right now for hypothetical needs (no reservation, no audit).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn capacity_for(&self, needs: &CapacityNeeds) -> Result<CapacityReport, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let (feeds, racks, uplinks) = tx.capacity_model().await?;
        let allocations = tx.live_allocations().await?;
        Ok(plan(needs, &feeds, &racks, &uplinks, &allocations))
    }

    /// The latest stored capacity check of a request.
    ///
    /// # Errors
    /// [`AppError::NotFound`] when none was run.
    pub async fn capacity_report(&self, request: RequestId) -> Result<CapacityReport, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.latest_capacity_check(request).await?.ok_or_else(|| {
            AppError::NotFound(format!("request {request} has no capacity check"))
        })?;
        serde_json::from_str(&record.report_json)
            .map_err(|error| AppError::internal(format!("capacity check {}: {error}", record.id)))
    }

    /// Every live allocation (what the capacity check counts).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn live_allocations(&self) -> Result<Vec<Allocation>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.live_allocations().await?)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::catalog::{AllocationId, ServerId};

    fn rack(id: i64, u: i64, watts: i64, feed: Option<i64>) -> Rack {
        Rack {
            id: RackId(id),
            name: format!("R{id:02}"),
            noc: "NOC-1".into(),
            location: "Ruang Server Lt. 2".into(),
            u_size: u,
            power_budget_w: watts,
            power_feed_id: feed.map(PowerFeedId),
        }
    }

    fn held(
        rack: i64,
        start: i64,
        count: i64,
        watts: i64,
        uplink: Option<i64>,
        mbps: i64,
    ) -> Allocation {
        Allocation {
            id: AllocationId(start),
            request_id: None,
            server_id: Some(ServerId(1)),
            server_name: "x".into(),
            rack_id: Some(RackId(rack)),
            u_start: Some(start),
            u_count: count,
            power_w: watts,
            uplink_id: uplink.map(UplinkId),
            bandwidth_mbps: mbps,
            status: AllocationStatus::Active,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            released_at: None,
        }
    }

    fn needs(list: &[(i64, i64, i64)]) -> CapacityNeeds {
        CapacityNeeds {
            servers: list
                .iter()
                .enumerate()
                .map(|(index, (u, w, mbps))| ServerNeed {
                    name: format!("srv{index}"),
                    u_size: *u,
                    power_w: *w,
                    bandwidth_mbps: *mbps,
                })
                .collect(),
        }
    }

    #[test]
    fn free_blocks_are_found_bottom_up() {
        let occupied = [true, false, false, true, false, false, false, true];
        assert_eq!(free_blocks(&occupied, 2), (3, Some(2)));
        assert_eq!(free_blocks(&occupied, 3), (3, Some(5)));
        assert_eq!(free_blocks(&occupied, 4), (3, None));
        assert_eq!(free_blocks(&occupied, 0), (3, Some(1)));
    }

    #[test]
    fn best_fit_rack_and_roomiest_uplink_are_chosen() {
        let racks = [rack(1, 42, 5000, None), rack(2, 10, 5000, None)];
        let uplinks = [
            Uplink {
                id: UplinkId(1),
                name: "ISP-A".into(),
                capacity_mbps: 1000,
            },
            Uplink {
                id: UplinkId(2),
                name: "ISP-B".into(),
                capacity_mbps: 2000,
            },
        ];
        let allocations = [held(2, 1, 6, 1000, Some(2), 500)];
        let report = plan(
            &needs(&[(2, 400, 100), (1, 300, 50)]),
            &[],
            &racks,
            &uplinks,
            &allocations,
        );
        assert_eq!(report.proposal, Answer::Yes);
        assert_eq!(
            report.rack,
            Some(RackId(2)),
            "rack 2 has 4 U free: the tightest fit"
        );
        assert_eq!(report.u_start, Some(7));
        assert_eq!(
            report.uplink,
            Some(UplinkId(2)),
            "1500 Mbps free beats 1000"
        );
        assert!(report.reason_id.contains("U7–U9"), "{}", report.reason_id);
        assert!(
            report.reason_id.contains("sisa daya 4.000 W"),
            "{}",
            report.reason_id
        );
    }

    #[test]
    fn a_shared_feed_caps_the_rack_budget() {
        let feeds = [PowerFeed {
            id: PowerFeedId(1),
            name: "PLN-A".into(),
            capacity_w: 3000,
        }];
        let racks = [rack(1, 42, 5000, Some(1)), rack(2, 42, 5000, Some(1))];
        let allocations = [held(1, 1, 2, 2500, None, 0)];
        let report = plan(&needs(&[(1, 600, 0)]), &feeds, &racks, &[], &allocations);
        assert_eq!(report.proposal, Answer::No);
        assert!(report.racks.iter().all(|rack| rack.power_headroom_w == 500));
        assert!(
            report
                .reason_en
                .contains("power: largest headroom 500 W, 600 W needed"),
            "{}",
            report.reason_en
        );
    }

    #[test]
    fn shortages_are_named_with_numbers() {
        let racks = [rack(1, 4, 1000, None)];
        let uplinks = [Uplink {
            id: UplinkId(1),
            name: "ISP-A".into(),
            capacity_mbps: 100,
        }];
        let report = plan(&needs(&[(5, 2000, 200)]), &[], &racks, &uplinks, &[]);
        assert_eq!(report.proposal, Answer::No);
        assert_eq!(report.rack, None);
        for expected in [
            "largest free block 4 U, 5 U needed",
            "largest headroom 1.000 W, 2.000 W needed",
            "largest headroom 100 Mbps, 200 Mbps needed",
        ] {
            assert!(report.reason_en.contains(expected), "{}", report.reason_en);
        }
        assert!(report.reason_id.starts_with("Kapasitas tidak tersedia"));
        let none = plan(&needs(&[(1, 1, 0)]), &[], &[], &[], &[]);
        assert!(
            none.reason_id.contains("belum ada rak"),
            "{}",
            none.reason_id
        );
    }

    #[test]
    fn released_allocations_do_not_count() {
        let racks = [rack(1, 2, 1000, None)];
        let mut gone = held(1, 1, 2, 1000, None, 0);
        gone.status = AllocationStatus::Released;
        assert_eq!(
            plan(&needs(&[(2, 1000, 0)]), &[], &racks, &[], &[gone]).proposal,
            Answer::Yes
        );
    }

    #[test]
    fn thousands_use_dots() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1.000");
        assert_eq!(thousands(1234567), "1.234.567");
        assert_eq!(thousands(-4500), "-4.500");
    }
}
