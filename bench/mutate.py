#!/usr/bin/env python3
"""Apply a deterministic "day of changes" to a tree made by gen_data.py.

Usage: mutate.py TREE [--seed N] [--day D]

Given the same input tree, --seed and --day, the resulting content is always
the same (files are visited in sorted order and all choices come from one
seeded random.Random). Modified files get the current time as mtime, like
real changes. What changes (fractions refer to the file counts/sizes):

  src/, etc/  3% of the text files edited (lines replaced, inserted, deleted;
              .conf files get a new section), 0.5% deleted, 1% new files in
              existing dirs plus one new directory with a handful of files
  var/log/    each service: one in three rotates (.4 dropped, .N -> .N+1,
              .log -> .1, new .log), the others get ~5% appended
  db/*.db     2% of the 8 KiB pages rewritten in place (half at random, half
              in a hot range near the end), ~1% records appended
  vm/*.img    0.5% of the 64 KiB blocks overwritten with new binary data and
              one contiguous ~0.5% region rewritten (guest wrote a file);
              size unchanged
  blobs/      untouched
"""

import argparse
import math
import os
import random
import sys

sys.dont_write_bytecode = True  # no __pycache__ inside the project tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_data as g  # noqa: E402

VM_BLOCK = 64 * 1024


def walk_sorted(root):
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return out


class Stats:
    def __init__(self):
        self.modified = self.deleted = self.added = 0
        self.bytes_written = 0

    def __str__(self):
        return "modified %d, deleted %d, added %d files; %.1f MB written" % (
            self.modified, self.deleted, self.added, self.bytes_written / g.MB)


def ext_project(tg, rng, ext, name):
    """A throw-away project description for files with extension ext."""
    for lang, (e, templates) in sorted(g.LANGS.items()):
        if e == ext:
            idents = tg.ident_pool(rng, 400)
            pool = [tg.fmt_line(rng, templates, idents) for _ in range(300)]
            return dict(lang=lang, ext=ext, templates=templates, idents=idents, pool=pool,
                        header="")
    return None


def mutate_text(root, files, rng, tg, day, st):
    files = [f for f in files if f.startswith(("src" + os.sep, "etc" + os.sep))]
    if not files:
        return
    n = len(files)
    edit = rng.sample(files, max(1, round(0.03 * n)))
    rest = sorted(set(files) - set(edit))
    delete = rng.sample(rest, min(len(rest), max(1, round(0.005 * n)))) if rest else []
    projects = {}

    def proj_for(ext):
        if ext not in projects:
            projects[ext] = ext_project(tg, rng, ext, "p")
        return projects[ext]

    for rel in sorted(edit):
        path = os.path.join(root, rel)
        ext = os.path.splitext(rel)[1]
        with open(path, "rb") as f:
            data = f.read()
        proj = proj_for(ext)
        if proj is None:  # config file: append a section, tweak a value
            lines = data.split(b"\n")
            for _ in range(max(1, len(lines) // 50)):
                i = rng.randrange(len(lines))
                lines[i] = ("%s = %d" % (rng.choice(tg.words), rng.randint(0, 99999))).encode()
            data = b"\n".join(lines) + tg.config_file(rng, rng.randint(50, 400))
        else:
            lines = data.split(b"\n")
            k = max(1, len(lines) // 20)
            for _ in range(k):  # replace
                lines[rng.randrange(len(lines))] = tg.fmt_line(rng, proj["templates"], proj["idents"]).encode()
            for _ in range(k):  # insert
                lines.insert(rng.randrange(len(lines) + 1),
                             tg.fmt_line(rng, proj["templates"], proj["idents"]).encode())
            for _ in range(k // 2):  # delete
                if len(lines) > 1:
                    del lines[rng.randrange(len(lines))]
            data = b"\n".join(lines)
        with open(path, "wb") as f:
            f.write(data)
        st.modified += 1
        st.bytes_written += len(data)

    for rel in sorted(delete):
        os.unlink(os.path.join(root, rel))
        st.deleted += 1

    # new files next to existing ones
    survivors = sorted(set(files) - set(delete))
    src_files = [f for f in survivors if proj_for(os.path.splitext(f)[1]) is not None]
    for i in range(max(1, round(0.01 * n))):
        if not src_files:
            break
        near = rng.choice(src_files)
        ext = os.path.splitext(near)[1]
        rel = os.path.join(os.path.dirname(near), "new_d%d_%d%s" % (day, i, ext))
        data = tg.source_file(rng, proj_for(ext), int(min(300_000, max(120, rng.lognormvariate(math.log(5000), 1.0)))))
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        st.added += 1
        st.bytes_written += len(data)
    # one new directory with a handful of files
    if src_files:
        near = rng.choice(src_files)
        ext = os.path.splitext(near)[1]
        d = os.path.join(os.path.dirname(near), "feature_d%d" % day)
        os.makedirs(os.path.join(root, d), exist_ok=True)
        for i in range(rng.randint(3, 8)):
            data = tg.source_file(rng, proj_for(ext), rng.randint(500, 20000))
            with open(os.path.join(root, d, "%s_%d%s" % (rng.choice(tg.words), i, ext)), "wb") as f:
                f.write(data)
            st.added += 1
            st.bytes_written += len(data)


def mutate_logs(root, files, rng, tg, day, st):
    logs = [f for f in files if f.startswith("var" + os.sep + "log" + os.sep) and f.endswith(".log")]
    t_ms = (g.BASE_MTIME + (300 + day) * 86400) * 1000
    for rel in sorted(logs):
        path = os.path.join(root, rel)
        svc = os.path.basename(rel)[:-4]
        size = os.path.getsize(path)
        data, t_ms = tg.log_lines(rng, svc, "srv01", t_ms, max(1000, size // 20))
        if rng.random() < 1 / 3:
            for k in (4, 3, 2, 1):
                src = path if k == 1 else "%s.%d" % (path, k - 1)
                dst = "%s.%d" % (path, k)
                if k == 4 and os.path.exists(dst):
                    os.unlink(dst)
                    st.deleted += 1
                if os.path.exists(src):
                    os.rename(src, dst)
            with open(path, "wb") as f:
                f.write(data)
            st.added += 1
        else:
            with open(path, "ab") as f:
                f.write(data)
            st.modified += 1
        st.bytes_written += len(data)


def mutate_db(root, files, rng, day, seed, st):
    pools = g.db_pools(seed)
    ts = (g.BASE_MTIME + (300 + day) * 86400) * 1000
    for rel in sorted(f for f in files if f.startswith("db" + os.sep) and f.endswith(".db")):
        path = os.path.join(root, rel)
        size = os.path.getsize(path)
        pages = size // g.DB_PAGE
        if pages == 0:
            continue
        per_page = g.DB_PAGE // g.DB_REC
        k = max(1, round(0.02 * pages))
        hot_lo = max(0, pages - max(k * 4, 1))
        chosen = set(rng.sample(range(pages), k - k // 2))
        chosen.update(rng.randrange(hot_lo, pages) for _ in range(k // 2))
        with open(path, "r+b") as f:
            for p in sorted(chosen):
                data, ts = g.db_records(rng, pools, p * per_page + 1, per_page, ts)
                f.seek(p * g.DB_PAGE)
                f.write(data)
                st.bytes_written += len(data)
            nrec = max(per_page, round(0.01 * pages) * per_page)
            data, ts = g.db_records(rng, pools, pages * per_page + 1, nrec, ts)
            f.seek(pages * g.DB_PAGE)
            f.write(data)
            st.bytes_written += len(data)
        st.modified += 1


def mutate_vm(root, files, rng, tg, st):
    table = g.binary_table(rng)
    for rel in sorted(f for f in files if f.startswith("vm" + os.sep) and f.endswith(".img")):
        path = os.path.join(root, rel)
        size = os.path.getsize(path)
        nblk = size // VM_BLOCK
        if nblk == 0:
            continue
        with open(path, "r+b") as f:
            for b in sorted(rng.sample(range(nblk), max(1, round(0.005 * nblk)))):
                f.seek(b * VM_BLOCK)
                f.write(g.binary_block(rng, table, VM_BLOCK))
                st.bytes_written += VM_BLOCK
            region = min(size, max(VM_BLOCK, round(0.005 * size) // 4096 * 4096))
            off = rng.randrange(0, size - region + 1) // 4096 * 4096
            proj = tg.project(rng, "guest")
            f.seek(off)
            f.write(tg.text_block(rng, proj, region))
            st.bytes_written += region
        st.modified += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--day", type=int, default=1, help="which day of changes (default 1)")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()
    if not os.path.isdir(a.tree):
        sys.exit(f"mutate: {a.tree} is not a directory")
    rng = random.Random(f"cadang-bench-mutate:{a.seed}:{a.day}")
    tg = g.TextGen(random.Random(f"cadang-bench-mutate-words:{a.seed}"))
    files = walk_sorted(a.tree)
    st = Stats()
    mutate_text(a.tree, files, rng, tg, a.day, st)
    mutate_logs(a.tree, files, rng, tg, a.day, st)
    mutate_db(a.tree, files, rng, a.day, a.seed, st)
    mutate_vm(a.tree, files, rng, tg, st)
    if not a.quiet:
        print("mutate: day %d: %s" % (a.day, st), file=sys.stderr)


if __name__ == "__main__":
    main()
