//! Retention: which snapshots a policy keeps.
//!
//! Pure logic over snapshot times (no I/O), in restic's semantics: snapshots
//! are grouped by host and paths; within a group, `keep-last N` keeps the N
//! newest, `keep-hourly/daily/weekly/monthly/yearly N` keep the newest
//! snapshot of each of the last N periods that have one, and `keep-within D`
//! keeps everything within D of the newest snapshot, and `keep-tag a,b` keeps every
//! snapshot carrying both tags (a hold). A snapshot is kept if any rule keeps it. An
//! empty policy keeps everything (forget refuses it).
//!
//! The times are those stamped into the snapshot by the repository's trusted
//! writer (the key holder), so a client without the key cannot forge them.

use std::collections::{BTreeMap, HashSet};

use chrono::FixedOffset;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::Serialize;

use super::id::SnapshotId;
use super::snapshot::Snapshot;

/// A retention policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep the newest N.
    pub last: u32,
    /// One per hour, for N hours.
    pub hourly: u32,
    /// One per day, for N days.
    pub daily: u32,
    /// One per ISO week, for N weeks.
    pub weekly: u32,
    /// One per month, for N months.
    pub monthly: u32,
    /// One per year, for N years.
    pub yearly: u32,
    /// Everything within this duration of the newest snapshot.
    pub within: Option<Duration>,
    /// Only consider snapshots with all of these tags (others are kept).
    pub tags: Vec<String>,
    /// Keep every snapshot carrying all the tags of any of these lists (each
    /// comma-separated: `legal-hold` or `hold,bpk-2026`).
    pub keep_tags: Vec<String>,
}

impl KeepPolicy {
    /// Whether the policy has no rule at all.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.keep_tags.is_empty()
    }

    /// Whether a keep-tag list holds a snapshot with `tags`.
    fn held(&self, tags: &[String]) -> bool {
        self.keep_tags.iter().any(|list| {
            let mut wanted = list.split(',').map(str::trim).filter(|t| !t.is_empty());
            wanted.clone().next().is_some() && wanted.all(|t| tags.iter().any(|have| have == t))
        })
    }
}

/// Decision for one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: SnapshotId,
    /// Its time.
    pub time: DateTime<Utc>,
    /// Kept?
    pub keep: bool,
    /// Which rules kept it (empty when removed).
    pub reasons: Vec<String>,
}

/// Parse durations like `2y5m7d3h`, `30d`, `12h` (y=365d, m=30d, w=7d).
///
/// # Errors
/// A message naming the bad input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::zero();
    let mut num = String::new();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num
            .parse()
            .map_err(|_| format!("`{s}`: expected forms like 7d, 12h, 1y6m"))?;
        num.clear();
        total += match c {
            'y' => Duration::days(365 * n),
            'm' => Duration::days(30 * n),
            'w' => Duration::days(7 * n),
            'd' => Duration::days(n),
            'h' => Duration::hours(n),
            _ => return Err(format!("`{s}`: unknown unit `{c}` (use y, m, w, d, h)")),
        };
    }
    if !num.is_empty() {
        return Err(format!("`{s}`: number without a unit (use y, m, w, d, h)"));
    }
    Ok(total)
}

type SnapshotEntry = (SnapshotId, Snapshot);
/// Maps a local time to its period (hour, day, week, month, year).
type Bucket = fn(DateTime<FixedOffset>) -> i64;

/// Apply a policy. Buckets use `tz` (the data center's local time, Asia/Jakarta
/// by default), so "daily" means local days.
pub fn apply(
    policy: &KeepPolicy,
    snaps: &[(SnapshotId, Snapshot)],
    tz: FixedOffset,
) -> Vec<Decision> {
    // Groups by (host, paths), as restic does.
    let mut groups: BTreeMap<(String, Vec<String>), Vec<&SnapshotEntry>> = BTreeMap::new();
    let mut out = Vec::new();
    for s in snaps {
        if !policy.tags.iter().all(|t| s.1.tags.contains(t)) {
            out.push(Decision {
                id: s.0,
                time: s.1.time,
                keep: true,
                reasons: vec!["not selected by --tag".into()],
            });
            continue;
        }
        groups
            .entry((s.1.hostname.clone(), s.1.paths.clone()))
            .or_default()
            .push(s);
    }
    for (_, mut g) in groups {
        g.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0))); // newest first
        let newest = g.first().map(|s| s.1.time);
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); g.len()];
        for (i, r) in reasons.iter_mut().enumerate().take(policy.last as usize) {
            let _ = i;
            r.push("last".into());
        }
        let rules: [(&str, u32, Bucket); 5] = [
            ("hourly", policy.hourly, |t| {
                t.year() as i64 * 1_000_000 + t.ordinal() as i64 * 100 + t.hour() as i64
            }),
            ("daily", policy.daily, |t| {
                t.year() as i64 * 1000 + t.ordinal() as i64
            }),
            ("weekly", policy.weekly, |t| {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            }),
            ("monthly", policy.monthly, |t| {
                t.year() as i64 * 100 + t.month() as i64
            }),
            ("yearly", policy.yearly, |t| t.year() as i64),
        ];
        for (name, n, bucket) in rules {
            if n == 0 {
                continue;
            }
            let mut seen = HashSet::new();
            for (i, s) in g.iter().enumerate() {
                if seen.len() as u32 >= n {
                    break;
                }
                if seen.insert(bucket(s.1.time.with_timezone(&tz))) {
                    reasons[i].push(name.into());
                }
            }
        }
        for (i, s) in g.iter().enumerate() {
            if policy.held(&s.1.tags) {
                reasons[i].push("tag".into());
            }
        }
        if let (Some(d), Some(newest)) = (policy.within, newest) {
            for (i, s) in g.iter().enumerate() {
                if newest - s.1.time <= d {
                    reasons[i].push("within".into());
                }
            }
        }
        for (s, r) in g.iter().zip(reasons) {
            out.push(Decision {
                id: s.0,
                time: s.1.time,
                keep: !r.is_empty(),
                reasons: r,
            });
        }
    }
    out.sort_by_key(|d| d.time);
    out
}

/// Asia/Jakarta (WIB, UTC+7, no daylight saving).
pub fn jakarta() -> FixedOffset {
    const WIB: FixedOffset = match FixedOffset::east_opt(7 * 3600) {
        Some(offset) => offset,
        None => panic!("UTC+7 is a valid offset"),
    };
    WIB
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::id::{BlobId, random_bytes};
    use crate::engine::snapshot::SnapshotSummary;

    fn snap(t: &str) -> (SnapshotId, Snapshot) {
        (
            SnapshotId(random_bytes()),
            Snapshot {
                version: 1,
                time: DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc),
                hostname: "h".into(),
                username: "u".into(),
                paths: vec!["/srv".into()],
                tags: vec![],
                parent: None,
                tree: BlobId(random_bytes()),
                summary: SnapshotSummary::default(),
                original: None,
                rewritten_from: None,
                indexes: Vec::new(),
            },
        )
    }

    #[test]
    fn daily_keeps_newest_per_local_day() {
        // 23:30 UTC on the 1st is already the 2nd in Jakarta.
        let s = vec![
            snap("2026-01-01T10:00:00Z"),
            snap("2026-01-01T12:00:00Z"),
            snap("2026-01-01T23:30:00Z"),
            snap("2026-01-03T01:00:00Z"),
        ];
        let d = apply(
            &KeepPolicy {
                daily: 10,
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        let kept: Vec<bool> = d.iter().map(|x| x.keep).collect();
        assert_eq!(kept, vec![false, true, true, true]);
        let d = apply(
            &KeepPolicy {
                daily: 2,
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        assert_eq!(d.iter().filter(|x| x.keep).count(), 2);
    }

    #[test]
    fn last_within_and_tags() {
        let mut s = vec![
            snap("2026-01-01T00:00:00Z"),
            snap("2026-01-05T00:00:00Z"),
            snap("2026-01-10T00:00:00Z"),
        ];
        s[0].1.tags = vec!["keep".into()];
        let d = apply(
            &KeepPolicy {
                last: 1,
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        assert_eq!(d.iter().filter(|x| x.keep).count(), 1);
        let d = apply(
            &KeepPolicy {
                within: Some(parse_duration("6d").unwrap()),
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        assert_eq!(
            d.iter().map(|x| x.keep).collect::<Vec<_>>(),
            vec![false, true, true]
        );
        let d = apply(
            &KeepPolicy {
                last: 1,
                tags: vec!["nope".into()],
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        assert!(
            d.iter().all(|x| x.keep),
            "snapshots outside the tag filter are never removed"
        );
        // A hold: kept by its tags whatever the other rules say; a list needs all of its
        // tags, and an empty list holds nothing.
        s[1].1.tags = vec!["hold".into(), "bpk-2026".into()];
        let kept = |keep_tags: &[&str]| {
            apply(
                &KeepPolicy {
                    last: 1,
                    keep_tags: keep_tags.iter().map(|t| (*t).to_owned()).collect(),
                    ..Default::default()
                },
                &s,
                jakarta(),
            )
            .iter()
            .map(|x| (x.keep, x.reasons.join(",")))
            .collect::<Vec<_>>()
        };
        let yes = |why: &str| (true, why.to_owned());
        let no = (false, String::new());
        assert_eq!(kept(&["hold"]), vec![no.clone(), yes("tag"), yes("last")]);
        assert_eq!(
            kept(&["hold,bpk-2026"]),
            vec![no.clone(), yes("tag"), yes("last")]
        );
        assert_eq!(
            kept(&["hold,bpk-2027"]),
            vec![no.clone(), no.clone(), yes("last")]
        );
        assert_eq!(
            kept(&["keep", "hold"]),
            vec![yes("tag"), yes("tag"), yes("last")]
        );
        assert_eq!(kept(&[" , "]), vec![no.clone(), no, yes("last")]);
        let holds_only = KeepPolicy {
            keep_tags: vec!["hold".into()],
            ..Default::default()
        };
        assert!(!holds_only.is_empty());
    }

    #[test]
    fn durations_parse_or_explain() {
        assert_eq!(
            parse_duration("1y2m3w4d5h").unwrap(),
            Duration::days(365 + 60 + 21 + 4) + Duration::hours(5)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn monthly_and_yearly_buckets() {
        let s: Vec<_> = [
            "2024-03-01T00:00:00Z",
            "2025-01-15T00:00:00Z",
            "2025-02-15T00:00:00Z",
            "2025-02-20T00:00:00Z",
        ]
        .iter()
        .map(|t| snap(t))
        .collect();
        let d = apply(
            &KeepPolicy {
                monthly: 2,
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        assert_eq!(
            d.iter().map(|x| x.keep).collect::<Vec<_>>(),
            vec![false, true, false, true]
        );
        let d = apply(
            &KeepPolicy {
                yearly: 5,
                ..Default::default()
            },
            &s,
            jakarta(),
        );
        assert_eq!(
            d.iter().map(|x| x.keep).collect::<Vec<_>>(),
            vec![true, false, false, true]
        );
    }
}
