#!/usr/bin/env bash
# cadang vs restic benchmark. See bench/README.md.
#
#   bench/run.sh                                   # full run: scale 1 (~1.7 GB), 3 reps, both tools
#   SCALE=0.005 REPS=1 TOOLS=restic bench/run.sh   # smoke test
#
# Environment (defaults in brackets):
#   BENCH_DIR [/work/bench-tmp]  data, repos, restore targets, results (never inside the source repo)
#   SCALE [1]  REPS [3]  SEED [42]  TOOLS ["cadang restic"]
#   CADANG_BIN [/work/main/target/release/cadang]  RESTIC_BIN [restic]
#   CADANG_BACKUP_ARGS, RESTIC_BACKUP_ARGS   extra words for `backup` (split on spaces)
#   PHASE_SLEEP [3]    seconds of `sync; sleep` before every timed phase
#   SETTLE_SLEEP [15]  seconds to wait after deleting a run dir (disk slows after big deletes)
#   DEFER_DELETE [auto] 1: keep every run dir until the end (no deletes between runs), 0: delete the
#              previous run's dir before each run; auto: 1 when the disk has room for all of them
#   VERIFY [1]         compare restored tree with the source (untimed, diff -r)
#   WARM_MEMORY [1]    touch the machine's free memory once before the runs (bench/warm_memory.py)
#   REF [1]            measure `tar | zstd -3 -T$(nproc)` over the data once, as a hardware reference
#   KEEP [0]           keep the run dirs (repo, restore, logs) instead of deleting them
#   RESULTS [$BENCH_DIR/results-<date>.jsonl]  raw JSON lines; the table goes to ${RESULTS%.jsonl}.md,
#              per-run logs (commands, stderr, GNU time output) to ${RESULTS%.jsonl}.logs/
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/.." && pwd)

BENCH_DIR=${BENCH_DIR:-/work/bench-tmp}
SCALE=${SCALE:-1}
REPS=${REPS:-3}
SEED=${SEED:-42}
TOOLS=${TOOLS:-"cadang restic"}
CADANG_BIN=${CADANG_BIN:-/work/main/target/release/cadang}
RESTIC_BIN=${RESTIC_BIN:-restic}
CADANG_BACKUP_ARGS=${CADANG_BACKUP_ARGS:-}
RESTIC_BACKUP_ARGS=${RESTIC_BACKUP_ARGS:-}
PHASE_SLEEP=${PHASE_SLEEP:-3}
SETTLE_SLEEP=${SETTLE_SLEEP:-15}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}
PY=${PYTHON:-python3}
PASSWORD=cadang-bench-password

die() { echo "run.sh: error: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- checks
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer (got '$REPS')"
[[ $SEED =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer (got '$SEED')"
[[ $SCALE =~ ^[0-9]*\.?[0-9]+$ ]] || die "SCALE must be a positive number (got '$SCALE')"
command -v "$PY" >/dev/null || die "python3 not found"
[[ -x /usr/bin/time ]] && /usr/bin/time -f %M true 2>/dev/null \
    || die "GNU time not found at /usr/bin/time (apt-get install -y time)"
read -r -a TOOL_LIST <<<"$TOOLS"
((${#TOOL_LIST[@]} > 0)) || die "TOOLS is empty"
for t in "${TOOL_LIST[@]}"; do
    case $t in
    cadang)
        [[ -x $CADANG_BIN && -f $CADANG_BIN ]] || die "cadang binary not found or not executable at '$CADANG_BIN'.
  Build it first (cargo build --release), point CADANG_BIN at it, or benchmark restic alone with TOOLS=restic."
        "$CADANG_BIN" --version >/dev/null 2>&1 || die "'$CADANG_BIN --version' failed; is it a working cadang binary?"
        ;;
    restic)
        command -v "$RESTIC_BIN" >/dev/null || die "restic not found ('$RESTIC_BIN'); apt-get install -y restic, or set RESTIC_BIN"
        ;;
    *) die "unknown tool '$t' in TOOLS (known: cadang restic)" ;;
    esac
done

BENCH_DIR=$(realpath -m -- "$BENCH_DIR")
case "$BENCH_DIR/" in
"$(realpath -- "$PROJECT")"/*) die "BENCH_DIR ($BENCH_DIR) must not be inside the project tree ($PROJECT)" ;;
esac
mkdir -p "$BENCH_DIR"
RESULTS=${RESULTS:-$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S).jsonl}
TABLE=${RESULTS%.jsonl}.md
LOGS=${RESULTS%.jsonl}.logs

# tool environment: no inherited repository/password settings
unset RESTIC_REPOSITORY RESTIC_REPOSITORY_FILE RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND \
    CADANG_REPOSITORY CADANG_PASSWORD_FILE 2>/dev/null || true
export RESTIC_PASSWORD=$PASSWORD CADANG_PASSWORD=$PASSWORD

# ---------------------------------------------------------------- run dirs and cleanup
RUN=""
RUNS=()
cleanup() {
    local d
    if [[ $KEEP != 1 ]]; then
        for d in "${RUNS[@]}"; do [[ -d $d ]] && rm -rf -- "$d"; done
    fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh run dir. Run dirs are deleted at the end, not between runs, when the disk has
# room (DEFER_DELETE): on ext4 without a journal (this project's machines) the inode
# allocator skips, one by one, every inode freed in the last minutes (60 s, 360 s while
# its inode-table block is dirty), so creating 20,000 files soon after deleting 40,000
# took twice as long and most of a restore's profile was that scan
# (find_inode_bit/recently_deleted) -- for whichever tool ran after a delete.
# Otherwise delete the previous run's dir and let the disk settle.
new_run_dir() {
    local old
    shopt -s nullglob
    for old in "$BENCH_DIR"/run.*; do
        if [[ -d $old ]] && { [[ $DEFER_DELETE != 1 ]] || ! in_runs "$old"; }; then
            log "removing previous run dir $old"
            rm -rf -- "$old"
            DELETED=1
        fi
    done
    shopt -u nullglob
    if ((DELETED)); then
        sync
        sleep "$SETTLE_SLEEP"
        DELETED=0
    fi
    RUN=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
    RUNS+=("$RUN")
}
in_runs() { local d; for d in "${RUNS[@]}"; do [[ $d == "$1" ]] && return 0; done; return 1; }
DELETED=0

# ---------------------------------------------------------------- data set
DATA=$BENCH_DIR/data-s$SCALE-seed$SEED
STAMP="gen=$(sha256sum "$HERE/gen_data.py" | cut -c1-16) scale=$SCALE seed=$SEED"
if [[ ! -f $DATA.stamp || "$(cat "$DATA.stamp")" != "$STAMP" || ! -d $DATA ]]; then
    log "generating data set (scale $SCALE, seed $SEED) in $DATA"
    rm -rf -- "$DATA" "$DATA.stamp"
    "$PY" "$HERE/gen_data.py" "$DATA" --scale "$SCALE" --seed "$SEED"
    echo "$STAMP" >"$DATA.stamp"
else
    log "reusing data set $DATA"
fi
# A just-booted virtual machine pays about 3x for the first write to each page of its
# memory; touch it all once so that no tool's run pays for it (bench/warm_memory.py).
if [[ ${WARM_MEMORY:-1} == 1 ]]; then
    log "touching free memory once (WARM_MEMORY=0 skips)"
    "$PY" "$HERE/warm_memory.py"
fi
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d\n", s}'; }
tree_files() { find "$1" -type f | wc -l; }
SRC_BYTES=$(tree_bytes "$DATA")
SRC_FILES=$(tree_files "$DATA")

# Room to keep every run dir (source copy, restore, repository: about 3x the data each)?
if [[ ${DEFER_DELETE:-auto} == auto ]]; then
    read -ra _tools <<<"$TOOLS"
    need=$((SRC_BYTES * 3 * REPS * ${#_tools[@]} + 2 * 1024 * 1024 * 1024))
    free=$(($(df -P -B1 "$BENCH_DIR" | awk 'NR == 2 {print $4}')))
    DEFER_DELETE=0
    ((free > need)) && DEFER_DELETE=1
    log "run dirs: $([[ $DEFER_DELETE == 1 ]] && echo "kept until the end" || echo "deleted between runs") ($((need / 1000000000)) GB needed to keep them, $((free / 1000000000)) GB free)"
fi

# ---------------------------------------------------------------- hardware reference
# tar | zstd -3 -T<nproc> over the warm pristine tree: what "read + compress on all cores" costs here.
REF_MBPS=""
if [[ ${REF:-1} == 1 ]] && command -v zstd >/dev/null; then
    tar -C "$DATA" -cf - . | cat >/dev/null
    t0=$(date +%s%N)
    tar -C "$DATA" -cf - . | zstd -3 -T"$(nproc)" -q -c >/dev/null
    t1=$(date +%s%N)
    REF_MBPS=$(awk -v n="$SRC_BYTES" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", n/1e6/((b-a)/1e9)}')
    log "reference: tar | zstd -3 -T$(nproc): $REF_MBPS MB/s"
fi

# ---------------------------------------------------------------- meta
tool_version() {
    case $1 in
    cadang) "$CADANG_BIN" --version 2>&1 | head -1 ;;
    restic) "$RESTIC_BIN" version 2>&1 | head -1 ;;
    esac
}
{
    export M_SCALE=$SCALE M_SEED=$SEED M_REPS=$REPS M_SRC_BYTES=$SRC_BYTES M_SRC_FILES=$SRC_FILES
    export M_NPROC=$(nproc) M_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    export M_KERNEL="$(uname -srm)" M_MEM="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    export M_FS="$(findmnt -no FSTYPE,OPTIONS -T "$BENCH_DIR" 2>/dev/null | head -1 | tr -s ' ' || echo '?')"
    export M_BENCH_DIR=$BENCH_DIR M_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" M_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
    export M_TOOLS=$TOOLS M_REF=$REF_MBPS
    export M_CADANG_VERSION="" M_RESTIC_VERSION=""
    for t in "${TOOL_LIST[@]}"; do
        case $t in
        cadang) M_CADANG_VERSION=$(tool_version cadang) ;;
        restic) M_RESTIC_VERSION=$(tool_version restic) ;;
        esac
    done
    "$PY" -c '
import json, os
e = os.environ
m = {"type": "meta", "scale": float(e["M_SCALE"]), "seed": int(e["M_SEED"]), "reps": int(e["M_REPS"]),
     "src_bytes": int(e["M_SRC_BYTES"]), "src_files": int(e["M_SRC_FILES"]), "nproc": int(e["M_NPROC"]),
     "cpu_model": e["M_CPU"], "kernel": e["M_KERNEL"], "mem": e["M_MEM"], "fs": e["M_FS"],
     "bench_dir": e["M_BENCH_DIR"], "date": e["M_DATE"], "loadavg": e["M_LOAD"], "tools": e["M_TOOLS"].split()}
if e.get("M_REF"):
    m["ref_tar_zstd_mbps"] = float(e["M_REF"])
for t in ("cadang", "restic"):
    if e.get("M_%s_VERSION" % t.upper()):
        m[t + "_version"] = e["M_%s_VERSION" % t.upper()]
print(json.dumps(m))'
} >"$RESULTS"
log "results -> $RESULTS"
log "source: $SRC_FILES files, $SRC_BYTES bytes; tools: $TOOLS; reps: $REPS"

# ---------------------------------------------------------------- tool commands
# build_cmd PHASE TOOL -> fills the array CMD (absolute paths only; REPO/SRC/TARGET set per run)
build_cmd() {
    local phase=$1 tool=$2 extra=()
    case $tool in
    cadang) CMD=("$CADANG_BIN" -r "$REPO") && read -r -a extra <<<"$CADANG_BACKUP_ARGS" ;;
    restic) CMD=("$RESTIC_BIN" -r "$REPO") && read -r -a extra <<<"$RESTIC_BACKUP_ARGS" ;;
    esac
    case $phase in
    init) CMD+=(init) ;;
    initial | nochange | incr) CMD+=(backup --json "${extra[@]}" "$SRC") ;;
    restore) CMD+=(restore latest --target "$TARGET") ;;
    check) CMD+=(check --read-data) ;;
    find) CMD+=(--json find '*.log') ;;
    *) die "internal: unknown phase $phase" ;;
    esac
}

metric() { echo "$1 $2" >>"$RUN/metrics"; }

# timed PHASE TOOL: runs the tool under GNU time; stdout -> $RUN/PHASE.out, stderr -> $RUN/PHASE.err
# records PHASE_s (wall, from date), PHASE_rss_kb, PHASE_cpu_s (user+sys), PHASE_rc; returns the rc.
timed() {
    local phase=$1 tool=$2 rc=0 t0 t1 CMD
    build_cmd "$phase" "$tool"
    echo "${CMD[*]}" >"$RUN/$phase.cmd"
    t0=$(date +%s%N)
    /usr/bin/time -o "$RUN/$phase.time" -f '%e %M %U %S' "${CMD[@]}" >"$RUN/$phase.out" 2>"$RUN/$phase.err" || rc=$?
    t1=$(date +%s%N)
    local e m u s
    read -r e m u s < <(tail -1 "$RUN/$phase.time")
    metric "${phase}_s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')"
    metric "${phase}_rss_kb" "$m"
    metric "${phase}_cpu_s" "$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u+s}')"
    metric "${phase}_rc" "$rc"
    if ((rc != 0)); then
        log "  $tool $phase FAILED (exit $rc); last lines of $RUN/$phase.err:"
        tail -5 "$RUN/$phase.err" | sed 's/^/    /' >&2
        FAILED=1
    else
        log "  $tool $phase: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b-a)/1e9}') s, $((m / 1024)) MiB RSS"
    fi
    return $rc
}

settle() { sync; sleep "$PHASE_SLEEP"; }
# Read the whole source tree (data and metadata) so the timed backup starts with a warm page cache.
# (tar to a pipe, not to /dev/null: GNU tar skips reading file data when the archive is /dev/null.)
warm() { tar -C "$(dirname "$SRC")" -cf - "$(basename "$SRC")" | cat >/dev/null; }
repo_bytes() { du -sb "$REPO" | cut -f1; }

FAILED=0

bench_one() { # tool rep
    local tool=$1 rep=$2 before after
    new_run_dir
    log "== $tool rep $rep/$REPS in $RUN"
    SRC=$RUN/src REPO=$RUN/repo TARGET=$RUN/restore
    export XDG_CACHE_HOME=$RUN/cache # restic (and cadang, if it caches) keep their cache per run
    mkdir -p "$XDG_CACHE_HOME"
    cp -a --reflink=auto "$DATA" "$SRC"
    metric tool "$tool"
    metric rep "$rep"
    metric run_dir "$RUN"
    metric src_bytes "$SRC_BYTES"
    metric src_files "$SRC_FILES"
    metric loadavg "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)"

    settle
    if ! timed init "$tool"; then
        return 0
    fi

    # 1. initial backup
    settle
    warm
    before=$(repo_bytes)
    if ! timed initial "$tool"; then
        return 0
    fi
    metric initial_growth $(($(repo_bytes) - before))
    metric initial_json "$RUN/initial.out"

    # 2. no-change backup
    settle
    warm
    before=$(repo_bytes)
    timed nochange "$tool" || true
    metric nochange_growth $(($(repo_bytes) - before))
    metric nochange_json "$RUN/nochange.out"

    # 3. day of changes, incremental backup
    "$PY" "$HERE/mutate.py" "$SRC" --seed "$SEED" --day 1 2>>"$RUN/mutate.log"
    metric restore_bytes "$(tree_bytes "$SRC")"
    settle
    warm
    before=$(repo_bytes)
    timed incr "$tool" || true
    metric incr_growth $(($(repo_bytes) - before))
    metric incr_json "$RUN/incr.out"

    # 4. restore latest into an empty dir, from a repository no longer in the page cache
    mkdir -p "$TARGET"
    settle
    "$PY" "$HERE/evict.py" "$REPO"
    if timed restore "$tool" && [[ $VERIFY == 1 ]]; then
        local restored=""
        for cand in "$TARGET$SRC" "$TARGET/$(basename "$SRC")" "$TARGET"; do
            [[ -d $cand ]] && { restored=$cand; break; }
        done
        if diff -r --no-dereference -q "$SRC" "$restored" >"$RUN/verify.diff" 2>&1; then
            metric verify ok
        else
            metric verify differs
            log "  $tool restore: restored tree ($restored) differs from source, see $RUN/verify.diff"
            FAILED=1
        fi
    fi

    # 5. check --read-data, from a repository no longer in the page cache
    settle
    "$PY" "$HERE/evict.py" "$REPO"
    timed check "$tool" || true

    # 6. find a name in the three snapshots (the matches are counted: both must agree)
    settle
    timed find "$tool" || true
    metric find_hits "$("$PY" -c 'import json, sys
text = open(sys.argv[1]).read()
try:
    found = json.loads(text)  # restic: one document, a list of snapshots with their hits
    print(sum(s.get("hits", len(s.get("matches") or [])) for s in found))
except ValueError:  # cadang: JSON lines, the last one the summary
    print(json.loads(text.strip().splitlines()[-1])["matches"])' "$RUN/find.out" 2>/dev/null || echo -1)"

    metric repo_bytes "$(repo_bytes)"
    metric cache_bytes "$(du -sb "$XDG_CACHE_HOME" | cut -f1)"
}

# Keep the small per-run logs (commands, stderr, times, tail of stdout) after the run dir is gone.
save_logs() { # tool rep
    local dst=$LOGS/$1-rep$2 f
    mkdir -p "$dst"
    for f in "$RUN"/*.cmd "$RUN"/*.err "$RUN"/*.time "$RUN"/metrics "$RUN"/mutate.log "$RUN"/verify.diff; do
        [[ -f $f ]] && cp -- "$f" "$dst/"
    done
    for f in "$RUN"/*.out; do
        [[ -f $f ]] && tail -n 20 -- "$f" >"$dst/$(basename "$f").tail"
    done
    return 0
}

for ((rep = 1; rep <= REPS; rep++)); do
    order=("${TOOL_LIST[@]}")
    if ((rep % 2 == 0)); then # alternate the order of the tools between repetitions
        order=()
        for ((i = ${#TOOL_LIST[@]} - 1; i >= 0; i--)); do order+=("${TOOL_LIST[i]}"); done
    fi
    for tool in "${order[@]}"; do
        bench_one "$tool" "$rep"
        save_logs "$tool" "$rep"
        echo "logs $LOGS/$tool-rep$rep" >>"$RUN/metrics"
        "$PY" "$HERE/report.py" record "$RUN/metrics" >>"$RESULTS"
    done
done

# remove the run dirs now (unless KEEP=1) so the next benchmark starts clean
cleanup
RUNS=()
RUN=""

"$PY" "$HERE/report.py" table "$RESULTS" | tee "$TABLE"
log "raw results: $RESULTS; table: $TABLE"
if ((FAILED)); then
    log "some phases failed (see 'Failures' under the table and the logs; rerun with KEEP=1 to keep them)"
    exit 1
fi
