//! The tags the daemon writes on its snapshots and finds them by: `server:ID` (whose
//! files), `plan:ID` (which backup plan), `run:ID` (which run made it). Retention,
//! replication, restores and erasure select snapshots by them, so they are spelled here
//! only, and the engine CLI's `tag` never removes them.

use crate::catalog::{PlanId, RunId, ServerId};

/// Prefixes of the daemon's tags.
pub const PREFIXES: [&str; 3] = [SERVER, PLAN, RUN];

const SERVER: &str = "server:";
const PLAN: &str = "plan:";
const RUN: &str = "run:";

/// The tag of the snapshots of a server's files.
pub fn server(id: ServerId) -> String {
    format!("{SERVER}{id}")
}

/// The tag of a plan's snapshots.
pub fn plan(id: PlanId) -> String {
    format!("{PLAN}{id}")
}

/// The tag of the snapshot a run made.
pub fn run(id: RunId) -> String {
    format!("{RUN}{id}")
}

/// The run that made a snapshot with these tags, if one is named.
pub fn run_of(tags: &[String]) -> Option<RunId> {
    tags.iter()
        .find_map(|tag| tag.strip_prefix(RUN)?.parse().ok())
        .map(RunId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_read_back_as_written() {
        assert_eq!(server(ServerId(5)), "server:5");
        assert_eq!(plan(PlanId(7)), "plan:7");
        let tags = vec![plan(PlanId(7)), run(RunId(42))];
        assert_eq!(run_of(&tags), Some(RunId(42)));
        assert_eq!(run_of(&["run:x".to_owned(), "nightly".to_owned()]), None);
        assert!(PREFIXES.iter().all(|p| p.ends_with(':')));
    }
}
