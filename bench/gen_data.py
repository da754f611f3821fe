#!/usr/bin/env python3
"""Generate the deterministic mixed benchmark data set for bench/run.sh.

Usage: gen_data.py OUTDIR [--scale S] [--seed N] [--force]

At --scale 1 (the default) the tree is about 1.7 GB (1 MB = 10^6 bytes):

  src/   ~150 MB  source-code-like text, ~18k files (log-normal sizes, median
                  ~5 KB) in nested package dirs, incl. ~5% vendored byte-identical
                  copies of another project (cross-file dedup)
  etc/     ~5 MB  ini-like config files, ~2k files
  var/log ~80 MB  log files: per service one active log + 4 rotated ones
  db/    ~560 MB  8 database-like files (30-110 MB each), 8 KiB pages of
                  fixed 128-byte records: sequential ids, timestamps, small
                  enums, names/notes from pools, random uuids/amounts
                  (compresses ~3x with zstd -3)
  blobs/ ~400 MB  one incompressible file (random bytes)
  vm/    ~500 MB  one VM-image-like file: long zero runs, "binary" and text
                  extents, random extents and repeated extents

Everything is derived from --seed through per-component random.Random
instances (string seeds are hashed with SHA-512 by Python, so the output is
identical across runs and Python versions >= 3.9). File and directory mtimes
are set to fixed values, so the tree is identical in content and mtimes.
Only the standard library is used; bulk data comes from Random.randbytes,
bytes.translate, strided bytearray assignment and block repetition, not from
per-byte Python loops.
"""

import argparse
import itertools
import math
import os
import random
import shutil
import sys
import time
from array import array

MB = 1_000_000
MIB = 1 << 20
BASE_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z

# Component budgets at scale 1 (bytes).
SRC_BYTES = 150 * MB
ETC_BYTES = 5 * MB
LOG_BYTES = 80 * MB
DB_BYTES = 560 * MB
RANDOM_BYTES = 400 * MB
VM_BYTES = 500 * MB

DB_PAGE = 8192
DB_REC = 128


def rng_for(seed, component):
    return random.Random(f"cadang-bench:{seed}:{component}")


# --------------------------------------------------------------------------
# text

CONS = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl gr".split()
VOWS = "a e i o u ai ou io ea".split()

LANGS = {
    "py": (".py", [
        "{i}def {a}({b}, {c}):", "{i}return {a}.{b}({c})",
        "{i}{a} = {b}.{c}({n})", "{i}if {a} is not None and {b} > {n}:",
        "{i}for {a} in {b}.{c}():", "{i}self.{a} = {b}",
        "{i}raise {A}Error(\"{a} {b} {c}\")", "{i}# {a} {b} {c} {d}",
        "import {a}", "from {a}.{b} import {C}", "",
        "{i}{a}[{n}] = {b}({c}, {d}={n})", "class {A}{C}({B}):",
        "{i}logger.debug(\"{a}: %s\", {b})",
    ]),
    "rs": (".rs", [
        "{i}fn {a}(&self, {b}: {B}) -> Result<{C}> {{",
        "{i}let {a} = {b}.{c}({n})?;", "{i}}}", "{i}match {a} {{",
        "{i}{A}::{C} => {b}({n}),", "use crate::{a}::{{{B}, {C}}};",
        "{i}// {a} {b} {c} {d}", "", "pub struct {A}{B} {{",
        "{i}pub {a}: Vec<{B}>,", "{i}if {a}.len() > {n} {{",
        "{i}return Err(Error::{A}(\"{b} {c}\".into()));",
        "#[derive(Debug, Clone, PartialEq)]",
    ]),
    "c": (".c", [
        "{i}int {a} = {b}({c}, {n});", "{i}if ({a} < 0) {{", "{i}}}",
        "{i}return {a};", "static int {a}_{b}(struct {c} *{d})",
        "{i}/* {a} {b} {c} {d} */", "#include <{a}/{b}.h>", "",
        "{i}{a}->{b} = {c}[{n}];", "{i}memcpy({a}, {b}, sizeof(*{c}));",
        "{i}for (i = 0; i < {n}; i++) {{", "#define {A}_{B} {n}",
    ]),
    "js": (".js", [
        "{i}const {a} = await {b}.{c}({n});", "{i}}});",
        "export function {a}({b}, {c}) {{", "{i}return {a}.{b}({c});",
        "{i}// {a} {b} {c} {d}", "", "import {{ {a}, {b} }} from './{c}';",
        "{i}if (!{a} || {b}.length > {n}) {{", "{i}{a}.{b} = {c} ?? {n};",
        "{i}throw new Error(`{a} {b} ${{{c}}}`);", "{i}}}",
    ]),
    "go": (".go", [
        "func ({a} *{A}) {B}({c} {C}) error {{", "{i}if err != nil {{",
        "{i}return fmt.Errorf(\"{a} {b}: %w\", err)", "{i}}}",
        "{i}{a}, err := {b}.{C}({n})", "{i}// {a} {b} {c} {d}", "",
        "import \"{a}/{b}\"", "{i}{a}.{B} = {c}[{n}]", "type {A}{B} struct {{",
        "{i}{A} []{B} `json:\"{a}\"`", "{i}for _, {a} := range {b} {{",
    ]),
}

LICENSE = (
    "Copyright (c) 2019-2024 The {P} Authors. All rights reserved.\n"
    "Licensed under the Apache License, Version 2.0 (the \"License\");\n"
    "you may not use this file except in compliance with the License.\n"
    "Unless required by applicable law or agreed to in writing, software\n"
    "distributed under the License is distributed on an \"AS IS\" BASIS.\n"
)


class TextGen:
    """Cheap, compressible, source-code-like and log-like text."""

    def __init__(self, rng):
        self.rng = rng
        sylls = [c + v for c in CONS for v in VOWS]
        words = set()
        while len(words) < 4000:
            words.add("".join(rng.choice(sylls) for _ in range(rng.randint(1, 3))))
        self.words = sorted(words)

    def ident_pool(self, rng, n):
        return rng.sample(self.words, n)

    def fmt_line(self, rng, templates, idents):
        a, b, c, d = rng.choices(idents, k=4)
        return rng.choice(templates).format(
            i="    " * rng.randint(0, 3), a=a, b=b, c=c, d=d,
            A=a.capitalize(), B=b.capitalize(), C=c.capitalize(),
            n=rng.randint(0, 4096))

    def project(self, rng, name):
        """A project: language, identifier subset, pool of common lines."""
        lang = rng.choice(sorted(LANGS))
        ext, templates = LANGS[lang]
        idents = self.ident_pool(rng, 400)
        pool = [self.fmt_line(rng, templates, idents) for _ in range(1500)]
        header = "".join(
            {"py": "# ", "go": "// ", "rs": "// ", "js": "// ", "c": "// "}[lang] + ln + "\n"
            for ln in LICENSE.format(P=name.capitalize()).splitlines())
        return dict(lang=lang, ext=ext, templates=templates, idents=idents,
                    pool=pool, header=header)

    def source_file(self, rng, proj, size):
        """Roughly `size` bytes of code: 75% pooled lines, 25% fresh ones."""
        nlines = max(1, size // 36)
        npool = nlines * 3 // 4
        lines = rng.choices(proj["pool"], k=npool)
        fresh = [self.fmt_line(rng, proj["templates"], proj["idents"])
                 for _ in range(nlines - npool)]
        # interleave fresh lines at random positions (C-level sort by key)
        allk = lines + fresh
        keys = rng.choices(range(1 << 30), k=len(allk))
        order = sorted(range(len(allk)), key=keys.__getitem__)
        body = "\n".join(allk[i] for i in order)
        return (proj["header"] + "\n" + body + "\n").encode()

    def config_file(self, rng, size):
        idents = self.words
        out = []
        n = 0
        while n < size:
            s = "[%s.%s]\n" % tuple(rng.choices(idents, k=2))
            out.append(s)
            n += len(s)
            for _ in range(rng.randint(2, 12)):
                k, v = rng.choices(idents, k=2)
                s = rng.choice(("%s = %s\n", "%s_%s = %d\n", "# %s %s\n", "%s = \"/var/lib/%s\"\n"))
                s = s % ((k, v, rng.randint(0, 65535)) if s.count("%") == 3 else (k, v))
                out.append(s)
                n += len(s)
            out.append("\n")
            n += 1
        return "".join(out).encode()

    LEVELS = ["INFO"] * 14 + ["DEBUG"] * 4 + ["WARN"] * 2 + ["ERROR"]
    METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE"]
    STATUS = [200] * 12 + [201, 204, 301, 304, 400, 401, 403, 404, 404, 500, 502, 503]

    def log_lines(self, rng, service, host, t_ms, size):
        """Log text of ~size bytes starting at epoch-ms t_ms. Returns (bytes, t_ms)."""
        words = self.words
        paths = ["/api/v%d/%s/%s" % (rng.randint(1, 3), rng.choice(words), rng.choice(words))
                 for _ in range(60)]
        msgs = [
            "request id=%08x method=%s path=%s status=%d dur_ms=%d bytes=%d",
            "cache %s key=%s hit=%d miss=%d evicted=%d",
            "worker %d finished job %s in %d ms (queue=%d)",
            "connection from 10.%d.%d.%d:%d accepted",
            "slow query on table %s took %d ms rows=%d",
        ]
        pid = rng.randint(300, 60000)
        out = []
        n = 0
        while n < size:
            t_ms += rng.randint(1, 900)
            s_, ms = divmod(t_ms, 1000)
            tm = time.gmtime(s_)
            k = rng.randrange(len(msgs))
            if k == 0:
                m = msgs[0] % (rng.getrandbits(32), rng.choice(self.METHODS), rng.choice(paths),
                               rng.choice(self.STATUS), rng.randint(1, 3000), rng.randint(0, 90000))
            elif k == 1:
                m = msgs[1] % (rng.choice(words), rng.choice(words), rng.randint(0, 9999),
                               rng.randint(0, 999), rng.randint(0, 99))
            elif k == 2:
                m = msgs[2] % (rng.randint(0, 31), rng.choice(words), rng.randint(1, 60000), rng.randint(0, 500))
            elif k == 3:
                m = msgs[3] % (rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254), rng.randint(1024, 65535))
            else:
                m = msgs[4] % (rng.choice(words), rng.randint(100, 30000), rng.randint(0, 10 ** 6))
            line = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s[%d]: %s %s\n" % (
                tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms,
                host, service, pid, rng.choice(self.LEVELS), m)
            out.append(line)
            n += len(line)
        return "".join(out).encode(), t_ms

    def text_block(self, rng, proj, size):
        b = self.source_file(rng, proj, size)
        while len(b) < size:
            b += b
        return b[:size]


# --------------------------------------------------------------------------
# database-like records

DB_STATUS = [1, 2, 3, 4, 5, 9]
DB_STATUS_CUM = list(itertools.accumulate([60, 20, 10, 5, 4, 1]))


def db_pools(seed):
    rng = rng_for(seed, "db-pools")
    tg = TextGen(rng)
    names = []
    for _ in range(3000):
        first, last, dom = (w.capitalize() for w in rng.choices(tg.words, k=3))
        s = f"{first} {last} <{first.lower()}.{last.lower()}@{dom.lower()}.example>".encode()[:40]
        names.append(s.ljust(40, b"\0"))
    notes = []
    for _ in range(300):
        s = " ".join(rng.choices(tg.words, k=rng.randint(1, 5))).encode()[:32]
        notes.append(s.ljust(32, b"\0"))
    accounts = [rng.randint(1, 10 ** 7) for _ in range(5000)]
    return dict(names=names, notes=notes, accounts=accounts)


def _le(a):
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def db_records(rng, pools, first_id, n, ts0):
    """n fixed-size 128-byte records. Returns (bytes, last_ts)."""
    buf = bytearray(n * DB_REC)

    def put(off, width, col):
        for j in range(width):
            buf[off + j::DB_REC] = col[j::width]

    put(0, 8, _le(array("Q", range(first_id, first_id + n))))
    ts = array("Q", itertools.accumulate(rng.randbytes(n), initial=ts0))
    last = ts[-1]
    put(8, 8, _le(ts[1:]))
    put(16, 4, _le(array("I", rng.choices(pools["accounts"], k=n))))
    put(20, 2, _le(array("H", rng.choices(DB_STATUS, cum_weights=DB_STATUS_CUM, k=n))))
    put(24, 3, rng.randbytes(3 * n))           # amount in cents, < 2^24
    put(32, 16, rng.randbytes(16 * n))         # uuid
    put(48, 4, rng.randbytes(4 * n))           # row checksum
    put(56, 40, b"".join(rng.choices(pools["names"], k=n)))
    put(96, 32, b"".join(rng.choices(pools["notes"], k=n)))
    return bytes(buf), last


# --------------------------------------------------------------------------
# binary-ish data

def binary_table(rng):
    # ~half of all byte values map to 0, the rest to a 24-symbol alphabet:
    # ~3.3 bits/byte, compresses about 2x, like executables/libraries.
    alphabet = rng.sample(range(1, 256), 24)
    tbl = bytes([0] * 128 + [alphabet[i % 24] for i in range(128)])
    return bytes(rng.sample(list(tbl), 256))


def binary_block(rng, table, size):
    return rng.randbytes(size).translate(table)


# --------------------------------------------------------------------------
# writers

class Writer:
    def __init__(self, root):
        self.root = root
        self.files = 0
        self.bytes = 0

    def write(self, rel, data, mtime):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (mtime, mtime))
        self.files += 1
        self.bytes += len(data)

    def write_stream(self, rel, blocks, mtime):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for b in blocks:
                f.write(b)
                self.bytes += len(b)
        os.utime(path, (mtime, mtime))
        self.files += 1


def lognormal_sizes(rng, budget, median, sigma, lo, hi):
    sizes = []
    total = 0
    mu = math.log(median)
    while total < budget:
        s = int(min(hi, max(lo, rng.lognormvariate(mu, sigma))))
        sizes.append(s)
        total += s
    return sizes


def gen_src(w, seed, budget):
    rng = rng_for(seed, "src")
    tg = TextGen(rng)
    nproj = max(1, round(budget / (5 * MB)))
    vendor_budget = budget * 0.05
    own_budget = budget - vendor_budget
    projects = []
    for p in range(nproj):
        name = "%s-%s" % (rng.choice(tg.words), rng.choice(tg.words))
        proj = tg.project(rng, name)
        sizes = lognormal_sizes(rng, own_budget / nproj, 5000, 1.0, 120, 300_000)
        # directory tree: ~15 files per dir, depth <= 5
        dirs = [("", 0)]
        for _ in range(max(0, len(sizes) // 15)):
            parent, depth = rng.choice(dirs)
            if depth >= 5:
                parent, depth = dirs[0]
            dirs.append((os.path.join(parent, rng.choice(proj["idents"])), depth + 1))
        written = []
        for i, size in enumerate(sizes):
            d = rng.choice(dirs)[0]
            rel = os.path.join("src", name, d, "%s_%d%s" % (rng.choice(proj["idents"]), i, proj["ext"]))
            data = tg.source_file(rng, proj, size)
            w.write(rel, data, BASE_MTIME + rng.randint(0, 300 * 86400))
            written.append((rel, len(data)))
        projects.append((name, written))
    # vendored, byte-identical copy of (part of) project 0 inside the last project
    src_name, files = projects[0]
    dst_name = projects[-1][0]
    copied = 0
    for rel, size in files:
        if copied >= vendor_budget:
            break
        dst = os.path.join("src", dst_name, "vendor", src_name,
                           os.path.relpath(rel, os.path.join("src", src_name)))
        dpath = os.path.join(w.root, dst)
        os.makedirs(os.path.dirname(dpath), exist_ok=True)
        shutil.copyfile(os.path.join(w.root, rel), dpath)
        st = os.stat(os.path.join(w.root, rel))
        os.utime(dpath, (st.st_mtime, st.st_mtime))
        w.files += 1
        w.bytes += size
        copied += size


def gen_etc(w, seed, budget):
    rng = rng_for(seed, "etc")
    tg = TextGen(rng)
    sizes = lognormal_sizes(rng, budget, 1500, 0.9, 40, 60_000)
    dirs = ["etc"] + ["etc/%s.d" % wd for wd in rng.sample(tg.words, max(1, len(sizes) // 20))]
    for i, size in enumerate(sizes):
        rel = os.path.join(rng.choice(dirs), "%s-%d.conf" % (rng.choice(tg.words), i))
        w.write(rel, tg.config_file(rng, size), BASE_MTIME + rng.randint(0, 300 * 86400))


def log_services(seed, n):
    rng = rng_for(seed, "log-services")
    tg = TextGen(rng)
    names = []
    while len(names) < n:
        nm = "%s-%s" % (rng.choice(tg.words), rng.choice(("api", "worker", "db", "proxy", "cron")))
        if nm not in names:
            names.append(nm)
    return names


def gen_logs(w, seed, budget):
    rng = rng_for(seed, "logs")
    tg = TextGen(rng)
    nsvc = max(1, min(12, round(budget / (1.2 * MB))))
    per_file = budget / (nsvc * 5)
    for svc in log_services(seed, nsvc):
        host = "srv%02d" % rng.randint(1, 40)
        t_ms = (BASE_MTIME + 295 * 86400) * 1000
        # oldest rotated first so timestamps increase towards the active log
        for k in (4, 3, 2, 1, 0):
            data, t_ms = tg.log_lines(rng, svc, host, t_ms, int(per_file * rng.uniform(0.6, 1.4)))
            rel = "var/log/%s/%s.log%s" % (svc, svc, "" if k == 0 else ".%d" % k)
            w.write(rel, data, t_ms // 1000)


def db_layout(seed, budget):
    rng = rng_for(seed, "db-layout")
    tg = TextGen(rng)
    n = max(2, min(8, round(8 * math.sqrt(budget / DB_BYTES))))
    weights = [rng.uniform(0.5, 1.5) for _ in range(n)]
    names = ["%s_%s.db" % (rng.choice(tg.words), rng.choice(("orders", "events", "users", "ledger")))
             for _ in range(n)]
    tot = sum(weights)
    return [(nm, max(DB_PAGE, int(budget * wt / tot) // DB_PAGE * DB_PAGE)) for nm, wt in zip(names, weights)]


def gen_db(w, seed, budget):
    pools = db_pools(seed)
    for idx, (name, size) in enumerate(db_layout(seed, budget)):
        rng = rng_for(seed, "db-%d" % idx)
        nrec = size // DB_REC

        def blocks():
            ts = (BASE_MTIME + 100 * 86400) * 1000
            done = 0
            while done < nrec:
                n = min(65536, nrec - done)
                data, ts = db_records(rng, pools, done + 1, n, ts)
                done += n
                yield data

        w.write_stream(os.path.join("db", name), blocks(), BASE_MTIME + 299 * 86400 + idx)


def gen_random(w, seed, size):
    rng = rng_for(seed, "random")

    def blocks():
        left = size
        while left > 0:
            n = min(4 * MIB, left)
            left -= n
            yield rng.randbytes(n)

    w.write_stream("blobs/archive-2024.tar.zst", blocks(), BASE_MTIME + 42 * 86400)


VM_EXTENT = MIB


def gen_vm(w, seed, size):
    rng = rng_for(seed, "vm")
    tg = TextGen(rng)
    table = binary_table(rng)
    proj = tg.project(rng, "guest")
    # 1 MiB extents; 64 KiB ones for small (smoke-test) images so the mix survives
    ext = VM_EXTENT if size >= 64 * VM_EXTENT else 64 * 1024
    nblk = size // ext
    tail = size - nblk * ext
    # Exact composition by extents, laid out as shuffled runs: zero runs of 4-48
    # extents, the others 1-8; a "repeat" run copies earlier non-zero extents.
    fractions = [("zero", 0.40), ("binary", 0.25), ("text", 0.10), ("random", 0.10), ("repeat", 0.15)]
    runs = []
    for kind, frac in fractions:
        left = round(nblk * frac)
        while left > 0:
            n = min(left, rng.randint(4, 48) if kind == "zero" else rng.randint(1, 8))
            runs.append((kind, n))
            left -= n
    rng.shuffle(runs)
    if runs and runs[0][0] == "repeat":  # a repeat needs something before it
        i = next((k for k, r in enumerate(runs) if r[0] != "repeat"), 0)
        runs[0], runs[i] = runs[i], runs[0]
    saved = []  # extents that may be repeated later (bounded)

    def blocks():
        done = 0
        for kind, run in runs:
            run = min(run, nblk - done)
            if kind == "repeat" and not saved:
                kind = "binary"
            if kind == "repeat":
                start = rng.randrange(len(saved))
                for k in range(run):
                    yield saved[(start + k) % len(saved)]
            else:
                for _ in range(run):
                    if kind == "zero":
                        b = bytes(ext)
                    elif kind == "binary":
                        b = binary_block(rng, table, ext)
                    elif kind == "text":
                        b = tg.text_block(rng, proj, ext)
                    else:
                        b = rng.randbytes(ext)
                    if kind != "zero" and rng.random() < 0.25:
                        if len(saved) < 32:
                            saved.append(b)
                        else:
                            saved[rng.randrange(32)] = b
                    yield b
            done += run
        while done < nblk:  # rounding of the fractions
            yield bytes(ext)
            done += 1
        if tail:
            yield bytes(tail)

    w.write_stream("vm/guest01.img", blocks(), BASE_MTIME + 299 * 86400)


def fix_dir_mtimes(root):
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        os.utime(dirpath, (BASE_MTIME + 300 * 86400, BASE_MTIME + 300 * 86400))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--scale", type=float, default=1.0, help="size factor; 1.0 = ~1.7 GB (default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--force", action="store_true", help="remove OUTDIR first if it exists")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()
    if a.scale <= 0:
        ap.error("--scale must be > 0")
    if os.path.exists(a.outdir):
        if a.force:
            shutil.rmtree(a.outdir)
        elif os.listdir(a.outdir):
            sys.exit(f"gen_data: {a.outdir} exists and is not empty (use --force)")
    os.makedirs(a.outdir, exist_ok=True)
    w = Writer(a.outdir)
    s = a.scale
    steps = [
        ("src", lambda: gen_src(w, a.seed, SRC_BYTES * s)),
        ("etc", lambda: gen_etc(w, a.seed, ETC_BYTES * s)),
        ("logs", lambda: gen_logs(w, a.seed, LOG_BYTES * s)),
        ("db", lambda: gen_db(w, a.seed, DB_BYTES * s)),
        ("random", lambda: gen_random(w, a.seed, int(RANDOM_BYTES * s))),
        ("vm", lambda: gen_vm(w, a.seed, int(VM_BYTES * s))),
    ]
    t_all = time.time()
    for name, fn in steps:
        t0, f0, b0 = time.time(), w.files, w.bytes
        fn()
        if not a.quiet:
            print("gen_data: %-6s %7d files %10.1f MB  %5.1fs" % (
                name, w.files - f0, (w.bytes - b0) / MB, time.time() - t0), file=sys.stderr)
    fix_dir_mtimes(a.outdir)
    if not a.quiet:
        print("gen_data: total  %7d files %10.1f MB  %5.1fs -> %s" % (
            w.files, w.bytes / MB, time.time() - t_all, a.outdir), file=sys.stderr)


if __name__ == "__main__":
    main()
