//! The reports as self-contained HTML pages a section head can open and print: inline
//! CSS and SVG charts, no script, no network. The output is deterministic for a given
//! report (tested against golden files).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::operations::{ReplicaLag, RunsReport, ScheduleReport, SlaReport, StorageReport};

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "—".to_owned(),
        |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// Bytes in binary units.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut size = value as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// A duration in seconds, as people read it.
pub fn duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Arial,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em;margin-bottom:0}h2{font-size:1.1em;margin-top:1.6em}\
.meta{color:#555;margin-top:.2em}table{border-collapse:collapse;width:100%;font-size:.85em;margin:.6em 0}\
th,td{border:1px solid #bbb;padding:.25em .45em;text-align:left;vertical-align:top}\
th{background:#eee}td.n{text-align:right}.bad{color:#a00;font-weight:bold}.good{color:#070}\
svg{display:block;margin:.6em 0}@media print{body{margin:0}h2{break-after:avoid}}";

fn page(title: &str, subtitle: &str, generated_at: DateTime<Utc>, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<p class=\"meta\">{subtitle} · generated {generated}</p>\n\
         {body}</body>\n</html>\n",
        title = esc(title),
        subtitle = esc(subtitle),
        generated = esc(&when(Some(generated_at))),
    )
}

/// Colour of a run status.
fn colour(status: &str) -> &'static str {
    match status {
        "ok" => "#3a7d44",
        "partial" => "#d9a400",
        "cancelled" => "#888888",
        "verify_differences" => "#8e44ad",
        "failed" => "#c0392b",
        _ => "#5d8aa8",
    }
}

/// One segment of a bar: value, colour, tooltip.
type Segment = (f64, &'static str, String);
/// A labelled bar.
type Bar = (String, Vec<Segment>);
/// A labelled series of (instant, value) points.
type Series = (String, Vec<(DateTime<Utc>, u64)>);

/// A horizontal bar chart: one row per label, segments of (value, colour, title).
fn bar_chart(rows: &[Bar], unit: &str) -> String {
    if rows.is_empty() {
        return "<p>Nothing to chart.</p>\n".to_owned();
    }
    let max = rows
        .iter()
        .map(|(_, segments)| segments.iter().map(|(value, _, _)| value).sum::<f64>())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (label_w, bar_w, row_h) = (180.0, 420.0, 22.0);
    let height = row_h * rows.len() as f64 + 10.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" role=\"img\">\n",
        w = label_w + bar_w + 90.0
    );
    for (i, (label, segments)) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let _ = writeln!(
            svg,
            "<text x=\"0\" y=\"{ty:.1}\" font-size=\"12\">{label}</text>",
            ty = y + 14.0,
            label = esc(label)
        );
        let mut x = label_w;
        let mut total = 0.0;
        for (value, fill, title) in segments {
            let w = value / max * bar_w;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{fill}\"><title>{title}</title></rect>",
                h = row_h - 6.0,
                title = esc(title)
            );
            x += w;
            total += value;
        }
        let _ = writeln!(
            svg,
            "<text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"11\">{total}{unit}</text>",
            tx = x + 4.0,
            ty = y + 14.0,
            total = if total.fract() == 0.0 {
                format!("{total:.0}")
            } else {
                format!("{total:.1}")
            },
            unit = esc(unit)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A line chart of (instant, value) points, one series per label.
fn line_chart(series: &[Series]) -> String {
    let points: Vec<&(DateTime<Utc>, u64)> = series.iter().flat_map(|(_, p)| p).collect();
    let (Some(first), Some(last)) = (
        points.iter().map(|(at, _)| *at).min(),
        points.iter().map(|(at, _)| *at).max(),
    ) else {
        return "<p>No measurements in this period.</p>\n".to_owned();
    };
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1) as f64;
    let span = ((last - first).num_seconds().max(1)) as f64;
    let (left, width, top, height) = (70.0, 520.0, 10.0, 200.0);
    const PALETTE: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
    ];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\">\n\
         <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#444\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"#444\"/>\n\
         <text x=\"0\" y=\"{top_label}\" font-size=\"11\">{max_label}</text>\n\
         <text x=\"0\" y=\"{bottom}\" font-size=\"11\">0</text>\n\
         <text x=\"{left}\" y=\"{date_y}\" font-size=\"11\">{from}</text>\n\
         <text x=\"{right}\" y=\"{date_y}\" font-size=\"11\" text-anchor=\"end\">{to}</text>\n",
        w = left + width + 150.0,
        h = top + height + 40.0,
        bottom = top + height,
        right = left + width,
        top_label = top + 10.0,
        max_label = esc(&bytes(max as u64)),
        date_y = top + height + 16.0,
        from = first.format("%Y-%m-%d"),
        to = last.format("%Y-%m-%d"),
    );
    for (i, (label, points)) in series.iter().enumerate() {
        let stroke = PALETTE[i % PALETTE.len()];
        let coordinates: Vec<String> = points
            .iter()
            .map(|(at, value)| {
                let x = left + (*at - first).num_seconds() as f64 / span * width;
                let y = top + height - *value as f64 / max * height;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{stroke}\" stroke-width=\"2\" points=\"{}\"/>",
            coordinates.join(" ")
        );
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{y:.1}\" font-size=\"12\" fill=\"{stroke}\">{label}</text>",
            x = left + width + 10.0,
            y = top + 14.0 + i as f64 * 16.0,
            label = esc(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// `cadang report runs --html`.
pub fn runs_html(report: &RunsReport) -> String {
    let mut body = String::from("<h2>Runs by plan</h2>\n");
    let rows: Vec<_> = report
        .plans
        .iter()
        .map(|plan| {
            (
                format!("{} / {}", plan.agency_code, plan.plan_name),
                plan.counts
                    .iter()
                    .map(|(status, count)| {
                        (*count as f64, colour(status), format!("{count} {status}"))
                    })
                    .collect(),
            )
        })
        .collect();
    body.push_str(&bar_chart(&rows, " runs"));
    for plan in &report.plans {
        let _ = writeln!(
            body,
            "<h2>{} — plan {} “{}”</h2>\n<p>{} · {} added</p>",
            esc(&plan.agency_code),
            plan.plan_id,
            esc(&plan.plan_name),
            esc(&plan
                .counts
                .iter()
                .map(|(status, count)| format!("{count} {status}"))
                .collect::<Vec<_>>()
                .join(", ")),
            bytes(plan.bytes_added)
        );
        if let Some(lag) = &plan.replica_lag {
            let _ = writeln!(
                body,
                "<p>Replica: <span class=\"{}\">{}</span></p>",
                if lag.up_to_date() { "good" } else { "bad" },
                esc(&replica_lag_text(lag))
            );
        }
        body.push_str("<table>\n<tr><th>Run</th><th>Kind</th><th>Trigger</th><th>Status</th><th>Due</th><th>Duration</th><th>Read</th><th>Added</th><th>Dedup</th><th>Throughput</th><th>Error</th></tr>\n");
        for run in &plan.runs {
            let class = if run.status == "ok" { "good" } else { "bad" };
            let _ = writeln!(
                body,
                "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                run.id,
                esc(&run.kind),
                esc(&run.trigger),
                esc(&run.status),
                esc(&when(Some(run.due_at))),
                run.duration_seconds
                    .map_or_else(|| "—".into(), |s| duration(s.round() as i64)),
                run.bytes_read.map_or_else(|| "—".into(), bytes),
                run.bytes_added.map_or_else(|| "—".into(), bytes),
                run.dedup_ratio
                    .map_or_else(|| "—".into(), |r| format!("{r:.1}×")),
                run.throughput_bytes_per_second
                    .map_or_else(|| "—".into(), |t| format!("{}/s", bytes(t as u64))),
                esc(run.error.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</table>\n");
    }
    page(
        "Backup runs",
        &format!(
            "{} to {}",
            when(Some(report.since)),
            when(Some(report.until))
        ),
        report.generated_at,
        &body,
    )
}

/// A replica's lag in words: "up to date", or how many backups wait and for how long.
pub fn replica_lag_text(lag: &ReplicaLag) -> String {
    if lag.up_to_date() {
        return format!(
            "up to date (last replicated {})",
            when(lag.last_replicated_at)
        );
    }
    format!(
        "lag {} — {} backup(s) not yet replicated, oldest finished {} (last replicated {})",
        duration(lag.lag_seconds),
        lag.backups_pending,
        when(lag.oldest_pending_at),
        when(lag.last_replicated_at)
    )
}

/// `cadang report sla --html`.
pub fn sla_html(report: &SlaReport) -> String {
    let mut body = String::from("<h2>Steps past their time standard, by procedure and role</h2>\n");
    let rows: Vec<_> = report
        .groups
        .iter()
        .map(|group| {
            (
                format!("{} · {}", group.procedure, group.role),
                vec![
                    (
                        (group.overruns - group.open) as f64,
                        "#c0392b",
                        format!("{} closed late", group.overruns - group.open),
                    ),
                    (
                        group.open as f64,
                        "#e67e22",
                        format!("{} still open", group.open),
                    ),
                ],
            )
        })
        .collect();
    body.push_str(&bar_chart(&rows, ""));
    body.push_str("<table>\n<tr><th>Procedure</th><th>Role</th><th>Overruns</th><th>Still open</th><th>Worst lateness</th></tr>\n");
    for group in &report.groups {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&group.procedure),
            esc(&group.role),
            group.overruns,
            group.open,
            duration(group.max_late_seconds)
        );
    }
    body.push_str("</table>\n<h2>Every overrun</h2>\n<table>\n<tr><th>Request</th><th>Procedure</th><th>Step</th><th>Deadline</th><th>Finished</th><th>Late by</th></tr>\n");
    for overrun in &report.overruns {
        let _ = writeln!(
            body,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"n bad\">{}</td></tr>",
            overrun.request_id,
            esc(&overrun.procedure),
            overrun.step,
            esc(&when(overrun.deadline)),
            if overrun.finished_at.is_some() {
                esc(&when(overrun.finished_at))
            } else {
                "still open".to_owned()
            },
            duration(overrun.late_by_seconds)
        );
    }
    body.push_str("</table>\n");
    page(
        "SOP time standards",
        "steps past their time standard",
        report.generated_at,
        &body,
    )
}

/// `cadang report storage --html`.
pub fn storage_html(report: &StorageReport) -> String {
    let mut body = String::from("<h2>Repository size over time</h2>\n");
    let series: Vec<_> = report
        .agencies
        .iter()
        .map(|agency| {
            (
                agency.agency_code.clone(),
                agency
                    .history
                    .iter()
                    .map(|point| (point.at, point.stored_bytes))
                    .collect(),
            )
        })
        .collect();
    body.push_str(&line_chart(&series));
    body.push_str("<h2>Stored now</h2>\n");
    let rows: Vec<_> = report
        .agencies
        .iter()
        .map(|agency| {
            (
                agency.agency_code.clone(),
                vec![(
                    agency.stored_bytes as f64 / 1_048_576.0,
                    "#1f77b4",
                    bytes(agency.stored_bytes),
                )],
            )
        })
        .collect();
    body.push_str(&bar_chart(&rows, " MiB"));
    body.push_str("<table>\n<tr><th>Agency</th><th>Stored</th><th>Unique data</th><th>Latest snapshots</th><th>Dedup saves</th><th>Compression saves</th><th>Growth</th></tr>\n");
    for agency in &report.agencies {
        let growth = if agency.growth_bytes < 0 {
            format!("−{}", bytes(agency.growth_bytes.unsigned_abs()))
        } else {
            format!("+{}", bytes(agency.growth_bytes.unsigned_abs()))
        };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.0}%</td><td class=\"n\">{:.0}%</td><td class=\"n\">{}</td></tr>",
            esc(&agency.agency_code),
            bytes(agency.stored_bytes),
            bytes(agency.unique_bytes),
            bytes(agency.logical_bytes),
            agency.dedup_savings * 100.0,
            agency.compression_savings * 100.0,
            growth
        );
    }
    body.push_str("</table>\n");
    page(
        "Repository storage",
        &format!("since {}", when(Some(report.since))),
        report.generated_at,
        &body,
    )
}

/// `cadang report schedule --html`.
pub fn schedule_html(report: &ScheduleReport) -> String {
    let overdue: Vec<_> = report.plans.iter().filter(|plan| plan.overdue).collect();
    let mut body = format!(
        "<h2>{} of {} plans overdue</h2>\n",
        overdue.len(),
        report.plans.len()
    );
    let rows: Vec<_> = overdue
        .iter()
        .map(|plan| {
            (
                format!("{} / {}", plan.agency_code, plan.plan_name),
                vec![(
                    plan.late_by_seconds as f64 / 3600.0,
                    "#c0392b",
                    duration(plan.late_by_seconds),
                )],
            )
        })
        .collect();
    if !rows.is_empty() {
        body.push_str(&bar_chart(&rows, " h late"));
    }
    body.push_str("<table>\n<tr><th>Agency</th><th>Plan</th><th>Status</th><th>Schedule</th><th>Last good backup</th><th>Promised by</th><th>Late by</th><th>Last run</th></tr>\n");
    for plan in &report.plans {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{} “{}”</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n{}\">{}</td><td>{}</td></tr>",
            esc(&plan.agency_code),
            plan.plan_id,
            esc(&plan.plan_name),
            esc(&plan.status),
            esc(&plan.schedule),
            esc(&when(plan.last_good_at)),
            esc(&when(plan.expected_by)),
            if plan.overdue { " bad" } else { "" },
            if plan.overdue {
                duration(plan.late_by_seconds)
            } else {
                "on time".to_owned()
            },
            esc(plan.last_status.as_deref().unwrap_or("—")),
        );
    }
    body.push_str("</table>\n");
    page(
        "Backup schedule",
        &format!(
            "plans whose last good backup is older than promised (grace {} min)",
            report.grace_minutes
        ),
        report.generated_at,
        &body,
    )
}

#[cfg(test)]
mod tests {
    //! Golden files: each report rendered from fixed data is compared byte for byte with
    //! `src/app/golden/report_<name>.html`; set `CADANG_UPDATE_GOLDEN=1` to rewrite them
    //! after an intended change, and review the diff.

    use std::collections::BTreeMap;
    use std::path::Path;

    use chrono::TimeZone;

    use super::*;
    use crate::app::operations::{
        AgencyStorage, PlanRuns, RunLine, ScheduleLine, SizePoint, SlaGroup,
    };
    use crate::catalog::{AgencyId, PlanId, RunId};

    fn golden(name: &str, html: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/app/golden")
            .join(format!("report_{name}.html"));
        if std::env::var_os("CADANG_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, html).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error} (CADANG_UPDATE_GOLDEN=1 writes it)",
                path.display()
            )
        });
        assert!(
            html == expected,
            "report {name} differs from {} (set CADANG_UPDATE_GOLDEN=1 to accept an intended change)",
            path.display()
        );
    }

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    fn run(id: i64, status: &str, day: u32, error: Option<&str>) -> RunLine {
        RunLine {
            id: RunId(id),
            kind: "backup".into(),
            trigger: "schedule".into(),
            status: status.into(),
            due_at: at(day, 19),
            started_at: Some(at(day, 19)),
            finished_at: Some(at(day, 20)),
            duration_seconds: Some(1830.0),
            bytes_read: Some(52_428_800_000),
            bytes_added: Some(1_310_720_000),
            dedup_ratio: Some(40.0),
            throughput_bytes_per_second: Some(28_650_000.0),
            snapshot_id: Some("ab".repeat(32)),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn the_runs_report_matches_its_golden_file() {
        let mut counts = BTreeMap::new();
        counts.insert("failed".to_owned(), 1);
        counts.insert("ok".to_owned(), 2);
        let report = RunsReport {
            generated_at: at(10, 1),
            since: at(1, 0),
            until: at(10, 0),
            plans: vec![PlanRuns {
                plan_id: PlanId(3),
                plan_name: "simkes <harian>".into(),
                agency_id: AgencyId(1),
                agency_code: "DINKES".into(),
                counts,
                bytes_added: 2_621_440_000,
                replica_lag: None,
                runs: vec![
                    run(
                        12,
                        "failed",
                        4,
                        Some("cannot read /srv/simkes: permission denied"),
                    ),
                    run(13, "ok", 5, None),
                    run(11, "ok", 3, None),
                ],
            }],
        };
        golden("runs", &runs_html(&report));
    }

    #[test]
    fn a_replica_lag_reads_as_up_to_date_or_as_its_age() {
        let mut lag = ReplicaLag {
            last_replicated_at: Some(at(9, 2)),
            backups_pending: 0,
            oldest_pending_at: None,
            newest_pending_at: None,
            lag_seconds: 0,
        };
        assert_eq!(
            replica_lag_text(&lag),
            "up to date (last replicated 2026-03-09 02:00 UTC)"
        );
        lag.backups_pending = 2;
        lag.oldest_pending_at = Some(at(8, 20));
        lag.newest_pending_at = Some(at(9, 20));
        lag.lag_seconds = 29 * 3600;
        let text = replica_lag_text(&lag);
        assert!(text.starts_with("lag 1d 05h — 2 backup(s)"), "{text}");
        let mut counts = BTreeMap::new();
        counts.insert("ok".to_owned(), 1);
        let report = RunsReport {
            generated_at: at(10, 1),
            since: at(1, 0),
            until: at(10, 0),
            plans: vec![PlanRuns {
                plan_id: PlanId(3),
                plan_name: "simkes".into(),
                agency_id: AgencyId(1),
                agency_code: "DINKES".into(),
                counts,
                bytes_added: 0,
                replica_lag: Some(lag),
                runs: vec![run(13, "ok", 5, None)],
            }],
        };
        assert!(runs_html(&report).contains("Replica: <span class=\"bad\">lag 1d 05h"));
    }

    #[test]
    fn the_sla_report_matches_its_golden_file() {
        let report = SlaReport {
            generated_at: at(10, 1),
            groups: vec![
                SlaGroup {
                    procedure: "colocation_handover".into(),
                    role: "KASI_INFRAS".into(),
                    overruns: 3,
                    open: 1,
                    max_late_seconds: 200_000,
                },
                SlaGroup {
                    procedure: "restore_request".into(),
                    role: "PETUGAS".into(),
                    overruns: 1,
                    open: 0,
                    max_late_seconds: 5400,
                },
            ],
            overruns: vec![],
        };
        golden("sla", &sla_html(&report));
    }

    #[test]
    fn the_storage_report_matches_its_golden_file() {
        let history = |base: u64| {
            (1..=5)
                .map(|day| SizePoint {
                    at: at(day, 20),
                    stored_bytes: base + u64::from(day) * 1_073_741_824,
                })
                .collect::<Vec<_>>()
        };
        let report = StorageReport {
            generated_at: at(10, 1),
            since: at(1, 0),
            agencies: vec![
                AgencyStorage {
                    agency_id: AgencyId(1),
                    agency_code: "DINKES".into(),
                    stored_bytes: 6 * 1_073_741_824,
                    unique_bytes: 10 * 1_073_741_824,
                    logical_bytes: 50 * 1_073_741_824,
                    dedup_savings: 0.8,
                    compression_savings: 0.4,
                    growth_bytes: 4 * 1_073_741_824,
                    history: history(1_073_741_824),
                },
                AgencyStorage {
                    agency_id: AgencyId(2),
                    agency_code: "KAB-KENDAL".into(),
                    stored_bytes: 3 * 1_073_741_824,
                    unique_bytes: 4 * 1_073_741_824,
                    logical_bytes: 9 * 1_073_741_824,
                    dedup_savings: 0.55,
                    compression_savings: 0.25,
                    growth_bytes: 4 * 1_073_741_824,
                    history: history(0),
                },
            ],
        };
        golden("storage", &storage_html(&report));
    }

    #[test]
    fn the_schedule_report_matches_its_golden_file() {
        let line = |id: i64, overdue: bool, late: i64| ScheduleLine {
            plan_id: PlanId(id),
            plan_name: format!("plan-{id}"),
            agency_id: AgencyId(1),
            agency_code: "DINKES".into(),
            status: "active".into(),
            schedule: "0 2 * * * (Asia/Jakarta)".into(),
            last_good_at: Some(at(6, 19)),
            expected_by: Some(at(7, 19)),
            overdue,
            late_by_seconds: late,
            last_status: Some(if overdue { "failed" } else { "ok" }.into()),
        };
        let report = ScheduleReport {
            generated_at: at(10, 1),
            grace_minutes: 60,
            plans: vec![line(4, true, 190_800), line(5, false, 0)],
        };
        golden("schedule", &schedule_html(&report));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(3725), "1h 02m");
    }
}
