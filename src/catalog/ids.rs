//! Row ids as distinct types, so an agency id can never be passed where a server id is
//! expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! row_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {
        $(
            #[$doc]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
            #[serde(transparent)]
            pub struct $name(pub i64);

            impl fmt::Display for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{}", self.0)
                }
            }
        )*
    };
}

row_id! {
    /// A government agency (SKPD, regency or city).
    AgencyId,
    /// A person (with a NIP).
    PersonId,
    /// A user account.
    AccountId,
    /// A bearer token of an account.
    TokenId,
    /// A backup plan.
    PlanId,
    /// A run of a plan.
    RunId,
    /// A request running through a procedure.
    RequestId,
    /// An official document (form or letter).
    DocumentId,
    /// A server in the asset register.
    ServerId,
    /// A rack.
    RackId,
    /// A power feed.
    PowerFeedId,
    /// An uplink.
    UplinkId,
    /// A capacity allocation.
    AllocationId,
    /// A stored capacity check.
    CapacityCheckId,
    /// A sealed secret.
    SecretId,
    /// A maintenance request record.
    MaintenanceId,
    /// A system action waiting in the outbox.
    PendingActionId,
    /// A recorded specification mismatch.
    MismatchId,
    /// A recorded server observation.
    ObservationId,
    /// An agent on a colocated server.
    AgentId,
    /// A restore to an agent.
    RestoreId,
}
