#!/usr/bin/env python3
"""Helpers for bench/run.sh: JSON summaries in, JSON lines and a markdown table out.

  report.py summary FILE          last {"message_type":"summary",...} line of a
                                  `backup --json` output, printed as one JSON line
  report.py record METRICS        turn a run's "key value" metrics file into one
                                  JSON line (keys ending in _json name files whose
                                  summary is embedded under the key without _json)
  report.py table RESULTS.jsonl   markdown table: medians per tool and the ratio
                                  cadang/restic, from the meta + run lines
"""

import json
import statistics
import sys

MB = 1e6
MIB = 1 << 20


def last_summary(path):
    found = None
    with open(path, "rb") as f:
        for raw in f:
            raw = raw.strip()
            if not raw.startswith(b"{"):
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("message_type") == "summary":
                found = obj
    return found


def parse_value(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"null": None, "true": True, "false": False}.get(v, v)


def record(path):
    rec = {"type": "run"}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            k, _, v = line.partition(" ")
            if k.endswith("_json"):
                try:
                    rec[k[:-5]] = last_summary(v)
                except OSError:
                    rec[k[:-5]] = None
            else:
                rec[k] = parse_value(v)

    def div(a, b):
        a, b = rec.get(a), rec.get(b)
        return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None

    src, rst = rec.get("src_bytes"), rec.get("restore_bytes")
    if rec.get("initial_rc") == 0 and rec.get("initial_s"):
        rec["initial_mbps"] = src / MB / rec["initial_s"]
        rec["initial_cores"] = div("initial_cpu_s", "initial_s")
    if rec.get("restore_rc") == 0 and rec.get("restore_s"):
        rec["restore_mbps"] = rst / MB / rec["restore_s"]
    for ph in ("initial", "nochange", "incr"):
        s = rec.get(ph)
        if isinstance(s, dict) and "data_added" in s:
            rec[ph + "_data_added"] = s["data_added"]
    # init is left out: it is a one-off (key derivation) and not part of the workload
    rss = [rec[k] for k in rec if k.endswith("_rss_kb") and not k.startswith("init_")
           and isinstance(rec[k], int)]
    rec["max_rss_kb"] = max(rss) if rss else None
    return rec


def load(path):
    meta, runs = {}, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            if obj.get("type") == "meta":
                meta = obj
            elif obj.get("type") == "run":
                runs.append(obj)
    return meta, runs


def ok_phase(r, key):
    """A metric is usable if its phase exited 0 (exit 3 = partial success is not ok) and,
    for restore, the restored tree matched the source."""
    phase = key.split("_")[0]
    if phase == "restore" and r.get("verify") == "differs":
        return False
    if phase in ("initial", "nochange", "incr", "restore", "check", "init", "find"):
        return r.get(phase + "_rc") == 0
    return True


def median(runs, tool, key):
    vals = [r[key] for r in runs if r.get("tool") == tool and isinstance(r.get(key), (int, float))
            and ok_phase(r, key)]
    return statistics.median(vals) if vals else None


# (label, key, scale divisor, decimals, better, target ratio or None)
ROWS = [
    ("Initial backup throughput (MB/s)", "initial_mbps", 1, 1, "higher", 3.0),
    ("Initial backup time (s)", "initial_s", 1, 2, "lower", None),
    ("Initial backup CPU used (cores)", "initial_cores", 1, 2, "lower", None),
    ("Initial backup repo growth (MB)", "initial_growth", MB, 1, "lower", None),
    ("No-change backup time (s)", "nochange_s", 1, 2, "lower", 0.5),
    ("Incremental backup time (s)", "incr_s", 1, 2, "lower", 0.5),
    ("Incremental repo growth (MB)", "incr_growth", MB, 2, "lower", None),
    ("Incremental data_added, as reported (MB)", "incr_data_added", MB, 2, "lower", None),
    ("Restore throughput (MB/s)", "restore_mbps", 1, 1, "higher", 2.0),
    ("check --read-data time (s)", "check_s", 1, 2, "lower", None),
    ("find '*.log' in the 3 snapshots (s)", "find_s", 1, 2, "lower", None),
    ("find matches (both must agree)", "find_hits", 1, 0, "lower", None),
    ("Repository size (MB)", "repo_bytes", MB, 1, "lower", 1.0),
    ("Peak RSS, initial backup (MiB)", "initial_rss_kb", 1024, 0, "lower", None),
    ("Peak RSS, max of backups/restore/check (MiB)", "max_rss_kb", 1024, 0, "lower", 1.0),
]


def fmt(v, div, dec):
    return "n/a" if v is None else "%.*f" % (dec, v / div)


def table(path):
    meta, runs = load(path)
    tools = [t for t in ("cadang", "restic") if any(r.get("tool") == t for r in runs)]
    tools += sorted({r.get("tool") for r in runs} - set(tools))
    both = "cadang" in tools and "restic" in tools
    out = []
    nrep = {t: sum(1 for r in runs if r.get("tool") == t) for t in tools}
    out.append("### cadang vs restic: scale %s (%.2f GB in %s files), medians of %s runs" % (
        meta.get("scale"), (meta.get("src_bytes") or 0) / 1e9, meta.get("src_files"),
        "/".join("%d %s" % (nrep[t], t) for t in tools)))
    out.append("")
    out.append("- Machine: %s CPUs (`nproc`), %s, %s, %s RAM; data and repos on %s (%s)" % (
        meta.get("nproc"), meta.get("cpu_model"), meta.get("kernel"), meta.get("mem"),
        meta.get("fs"), meta.get("bench_dir")))
    for t in tools:
        out.append("- %s: `%s`" % (t, meta.get(t + "_version", "?")))
    if meta.get("ref_tar_zstd_mbps"):
        out.append("- Hardware reference: `tar | zstd -3 -T%s` over the same warm tree: %.1f MB/s" % (
            meta.get("nproc"), meta["ref_tar_zstd_mbps"]))
    out.append("- Date: %s; seed %s; load average at start: %s" % (
        meta.get("date"), meta.get("seed"), meta.get("loadavg")))
    out.append("")
    hdr = "| Metric | " + " | ".join(tools)
    sep = "|---|" + "---:|" * len(tools)
    if both:
        hdr += " | cadang/restic | better | target | met"
        sep += "---:|---|---|---|"
    out.append(hdr + " |")
    out.append(sep)
    for label, key, div, dec, better, target in ROWS:
        meds = {t: median(runs, t, key) for t in tools}
        row = "| %s | " % label + " | ".join(fmt(meds[t], div, dec) for t in tools)
        if both:
            c, r = meds["cadang"], meds["restic"]
            ratio = c / r if c is not None and r not in (None, 0) else None
            tgt = met = ""
            if target is not None:
                tgt = ("≥ %g×" if better == "higher" else "≤ %g×") % target
                if ratio is not None:
                    met = "yes" if (ratio >= target if better == "higher" else ratio <= target) else "**no**"
            row += " | %s | %s | %s | %s" % ("n/a" if ratio is None else "%.2f×" % ratio, better, tgt, met)
        out.append(row + " |")
    ver = " | ".join("%d/%d" % (sum(1 for r in runs if r.get("tool") == t and r.get("verify") == "ok"),
                                nrep[t]) for t in tools)
    out.append("| Restored tree identical to source (runs) | " + ver + (" | | | | |" if both else " |"))
    fails = [r for r in runs if any(k.endswith("_rc") and r[k] not in (0, None) for k in r)
             or r.get("verify") == "differs"]
    out.append("")
    out.append("Ratios are cadang/restic of the medians: for throughput higher is better for "
               "cadang, for times, sizes and RSS lower is better. MB = 10^6 bytes, MiB = 2^20 bytes. "
               "Repo growth = change of `du -sb` of the repository across the backup; "
               "restic 0.14 reports `data_added` before compression, so compare growth, not data_added.")
    if fails:
        out.append("")
        out.append("**Failures** (failed phases, and restores that differ, are excluded from the medians):")
        for r in fails:
            bad = ["%s exit %s" % (k[:-3], r[k]) for k in sorted(r) if k.endswith("_rc") and r[k] not in (0, None)]
            if r.get("verify") == "differs":
                bad.append("restored tree differs from source")
            out.append("- %s rep %s: %s (logs in %s)" % (r.get("tool"), r.get("rep"), ", ".join(bad),
                                                                    r.get("logs", r.get("run_dir"))))
    out.append("")
    out.append("Per run: initial MB/s, no-change s, incremental s, restore MB/s, check s, repo MB, max RSS MiB")
    out.append("")
    out.append("| tool | rep | initial MB/s | no-change s | incr s | restore MB/s | check s | repo MB | RSS MiB | load |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        g = lambda k, d=1, n=2: fmt(r.get(k) if ok_phase(r, k) else None, d, n)  # noqa: E731
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r.get("tool"), r.get("rep"), g("initial_mbps", 1, 1), g("nochange_s"), g("incr_s"),
            g("restore_mbps", 1, 1), g("check_s"), g("repo_bytes", MB, 1), g("max_rss_kb", 1024, 0),
            r.get("loadavg", "")))
    return "\n".join(out)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("summary", "record", "table"):
        sys.exit(__doc__)
    cmd, arg = sys.argv[1], sys.argv[2]
    if cmd == "summary":
        s = last_summary(arg)
        if s is None:
            sys.exit("no summary line in %s" % arg)
        print(json.dumps(s))
    elif cmd == "record":
        print(json.dumps(record(arg), sort_keys=True))
    else:
        print(table(arg))


if __name__ == "__main__":
    main()
