#!/usr/bin/env bash
# Backup through an agent vs the local engine, on the same data and machine.
#
#   bench/agent.sh                       # scale 1 (~1.7 GB), 3 repetitions
#   SCALE=0.05 REPS=1 bench/agent.sh     # smoke test
#   COMPRESS_ON=daemon bench/agent.sh    # the plan compresses on the daemon, not the agent
#   SPLIT_CORES=1 bench/agent.sh         # one core each, as on separate hosts: the agent and
#                                        # both local commands on CPU 0, the daemon on CPU 1
#                                        # (taskset); otherwise all share every core
#   WARM_MEMORY=0 bench/agent.sh         # skip touching free memory first (bench/warm_memory.py)
#   KEEP_RUN_DIRS=1 bench/agent.sh       # leave the run dirs (another run follows: deleting
#                                        # 40,000 files slows the next minutes' restores)
#   PROFILE=1 bench/agent.sh             # record the first backups and the restores with
#                                        # `perf record -a` (the run dir's perf-*.data; with
#                                        # KEEP_RUN_DIRS=1; `perf report --sort comm,sym`:
#                                        # the daemon's threads are cadang-daemon, the agent's
#                                        # cadang-walk-N and tokio-rt-worker; PERF_ARGS=-g adds
#                                        # call graphs)
#
# Each repetition, on a fresh run directory holding its own copy of the data (the day of
# changes edits it), and with the source read once before each timed backup (a warm page
# cache for both):
#   local   `cadang backup SRC` into a new local repository (the engine alone);
#   agent   a daemon (SQLite, local repository) and `cadang agent run` on this host: the
#           plan's first backup (everything sent) and a second one of unchanged data;
#   changes bench/mutate.py's "day of changes" applied to SRC, then an incremental backup
#           of each: `cadang backup SRC` again, and the plan's third run through the agent;
#   restore the local repository's latest snapshot restored with `cadang restore`
#           followed by `sync`, and the agent's restored through the agent (`restore-job
#           start --wait`: every file verified, the file system flushed before the end is
#           reported);
#   again   the same two restores once more, over the trees they wrote (evicted from the
#           page cache first): every file is read, found with the snapshot's content and
#           kept, and nothing is sent to the agent;
#   damaged the 20 largest files of the agent's restored tree damaged in place (one byte
#           flipped in the middle, size and time kept), and the restore through the agent
#           once more: each is read, found different but holding most of its chunks, and
#           only the damaged chunks are sent (bytes_reused counts what was copied).
# The agent figures come from the run's own statistics (duration_seconds, bytes_read,
# wire_bytes, bytes_added). Medians and the agent/local throughput ratio go to stdout and to
# $BENCH_DIR/agent-results-<date>.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/work/bench-tmp}
SCALE=${SCALE:-1}
SEED=${SEED:-42}
REPS=${REPS:-3}
COMPRESS_ON=${COMPRESS_ON:-agent}
SPLIT_CORES=${SPLIT_CORES:-0}
CADANG_BIN=${CADANG_BIN:-$HERE/../target/release/cadang}
PY=${PYTHON:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "agent.sh: error: $*" >&2; exit 2; }

[[ -x $CADANG_BIN ]] || die "no cadang binary at $CADANG_BIN (cargo build --release)"
# Commands that pin a process to its core in SPLIT_CORES mode, and nothing otherwise.
ON_AGENT_CORE=()
ON_DAEMON_CORE=()
if [[ $SPLIT_CORES == 1 ]]; then
    command -v taskset >/dev/null || die "SPLIT_CORES=1 needs taskset (util-linux)"
    (($(nproc) >= 2)) || die "SPLIT_CORES=1 needs two cores"
    ON_AGENT_CORE=(taskset -c 0)
    ON_DAEMON_CORE=(taskset -c 1)
fi
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(realpath -- "$BENCH_DIR")
DATA=$BENCH_DIR/data-s$SCALE-seed$SEED
STAMP="gen=$(sha256sum "$HERE/gen_data.py" | cut -c1-16) scale=$SCALE seed=$SEED"
if [[ ! -f $DATA.stamp || "$(cat "$DATA.stamp")" != "$STAMP" || ! -d $DATA ]]; then
    log "generating data set (scale $SCALE, seed $SEED) in $DATA"
    rm -rf -- "$DATA" "$DATA.stamp"
    "$PY" "$HERE/gen_data.py" "$DATA" --scale "$SCALE" --seed "$SEED"
    echo "$STAMP" >"$DATA.stamp"
fi
if [[ ${WARM_MEMORY:-1} == 1 ]]; then
    log "touching free memory once (a just-booted machine pays ~3x for first writes)"
    "$PY" "$HERE/warm_memory.py"
fi
SRC_BYTES=$(find "$DATA" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d\n", s}')
RESULTS=$BENCH_DIR/agent-results-$(date +%Y%m%d-%H%M%S).jsonl
RUN=""
RUNS=()
PERF_PID=""
DAEMON_PID=""
AGENT_PID=""
cleanup() {
    [[ -n $PERF_PID ]] && kill -INT "$PERF_PID" 2>/dev/null || true
    [[ -n $AGENT_PID ]] && kill "$AGENT_PID" 2>/dev/null || true
    [[ -n $DAEMON_PID ]] && kill "$DAEMON_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    local dir
    [[ ${KEEP_RUN_DIRS:-0} == 1 ]] && return 0
    for dir in "${RUNS[@]}"; do
        if [[ -d $dir ]]; then rm -rf -- "$dir"; fi
    done
}
trap cleanup EXIT

# Nothing is deleted between repetitions when the disk has room (the copy of the data, two
# repositories and two restored trees a repetition, about 4.2x the data): on ext4 without a journal the inode
# allocator skips, one by one, every inode freed in the last minutes, and a restore
# started soon after a restored tree was deleted spent most of its time in that scan
# (find_inode_bit, recently_deleted; see bench/README.md). Otherwise each repetition's
# dir is deleted at its end and the restore figures are not comparable.
NEED=$((SRC_BYTES * 42 / 10 * REPS + 2 * 1024 * 1024 * 1024))
FREE=$(($(df -P -B1 "$BENCH_DIR" | awk 'NR == 2 {print $4}')))
KEEP_RUNS=0
((FREE > NEED)) && KEEP_RUNS=1
log "run dirs: $([[ $KEEP_RUNS == 1 ]] && echo "kept until the end" || echo "deleted after each repetition: restore figures not comparable") ($((NEED / 1000000000)) GB needed to keep them, $((FREE / 1000000000)) GB free)"

# Read the whole source tree so each timed backup starts with a warm page cache (this
# machine's cache forgets idle pages within a minute): both sides read the same way.
warm() { tar -C "$(dirname "$SRC")" -cf - "$(basename "$SRC")" | cat >/dev/null; }

# PROFILE=1: `perf record -a` of what runs between profile_start NAME and profile_stop.
profile_start() {
    [[ ${PROFILE:-0} == 1 ]] || return 0
    # shellcheck disable=SC2086 # PERF_ARGS is a list of options (-g for call graphs)
    perf record -q -F 999 -a ${PERF_ARGS:-} -o "$RUN/perf-$1.data" 2>>"$RUN/perf.log" &
    PERF_PID=$!
    sleep 1
}
profile_stop() {
    [[ -n $PERF_PID ]] || return 0
    kill -INT "$PERF_PID"
    wait "$PERF_PID" || true
    PERF_PID=""
}

json() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$1"; }

for rep in $(seq 1 "$REPS"); do
    RUN=$(mktemp -d "$BENCH_DIR/agent-run.XXXXXX")
    RUNS+=("$RUN")
    SRC=$RUN/src
    cp -a --reflink=auto "$DATA" "$SRC"
    # ------------------------------------------------------------ local engine
    export CADANG_REPOSITORY=$RUN/local CADANG_PASSWORD=cadang-bench-password
    "$CADANG_BIN" init >/dev/null
    sync; sleep 2; warm
    profile_start local-backup
    t0=$(date +%s%N)
    /usr/bin/time -f "%U %S" -o "$RUN/local.time" "${ON_AGENT_CORE[@]}" "$CADANG_BIN" backup "$SRC" >/dev/null
    t1=$(date +%s%N)
    profile_stop
    log "rep $rep: CPU seconds of the local backup: $(awk '{print $1 + $2}' "$RUN/local.time")"
    LOCAL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: local backup ${LOCAL_S}s"
    unset CADANG_REPOSITORY CADANG_PASSWORD

    # ------------------------------------------------------------ daemon + agent
    printf '[daemon]\nlisten = "127.0.0.1:0"\n[scheduler]\ntick_secs = 1\nlease_secs = 30\n' >"$RUN/d.toml"
    "${ON_DAEMON_CORE[@]}" "$CADANG_BIN" daemon --data-dir "$RUN/var" --config "$RUN/d.toml" >"$RUN/daemon.out" 2>"$RUN/daemon.log" &
    DAEMON_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$RUN/daemon.out" 2>/dev/null && break; sleep 0.1; done
    ADDR=$(sed -n 's/^cadang daemon listening on //p' "$RUN/daemon.out")
    [[ -n $ADDR ]] || die "the daemon did not start (see $RUN/daemon.log)"
    export CADANG_SERVER=http://$ADDR CADANG_CLI_CONFIG=/nonexistent
    ADMIN=$("$CADANG_BIN" admin bootstrap --data-dir "$RUN/var")
    c() { CADANG_TOKEN=$1 "$CADANG_BIN" --json "${@:2}"; }
    AG=$(c "$ADMIN" agency add --code BENCH --name "Bench agency" --address "Semarang" | json "d[0]['id']")
    c "$ADMIN" user add kadin --role KADIN >/dev/null
    c "$ADMIN" user add kasi --role KASI_INFRAS >/dev/null
    KADIN=$(c "$ADMIN" token create --user kadin --label bench | json "d['token']")
    KASI=$(c "$ADMIN" token create --user kasi --label bench | json "d['token']")
    printf '{"name": "bench-01", "serial_number": "SN-BENCH", "server_type": "R740", "brand": "Dell", "processor": "Xeon", "ram": "64 GB", "motherboard": "Dell", "storage": "2 x 1 TB", "psu": "2 x 750 W", "u_size": 2, "power_draw_w": 400, "bandwidth_mbps": 100}\n' >"$RUN/server.json"
    SERVER=$(c "$KASI" asset register --agency "$AG" --file "$RUN/server.json" | json "d['id']")
    ENROLL=$(c "$KASI" agent enroll-token "$SERVER" | json "d['token']")
    CADANG_ENROLL_TOKEN=$ENROLL "$CADANG_BIN" agent enroll --server "$CADANG_SERVER" --state-dir "$RUN/agent" >/dev/null
    "${ON_AGENT_CORE[@]}" "$CADANG_BIN" agent run --state-dir "$RUN/agent" 2>"$RUN/agent.log" &
    AGENT_PID=$!
    printf 'scope = "/data"\nschedule = "harian 01:00"\nretention = "7 hari"\n' >"$RUN/b.toml"
    B=$(c "$KADIN" request backup submit --agency "$AG" --subject bench --form "$RUN/b.toml" | json "d['request']['id']")
    c "$KADIN" step complete "$B" 1 >/dev/null
    PLAN=$(c "$KASI" plan create --request "$B" --name bench --path "$SRC" --on-server "$SERVER" --compress-on "$COMPRESS_ON" --schedule "0 1 * * *" | json "d[0]['id']")
    sync; sleep 2; warm
    profile_start agent-backup
    c "$KASI" step complete "$B" 2 >/dev/null
    # Wait for the plan's n-th run to finish and print it. One Python process polls the
    # daemon through the CLI (a few milliseconds of CPU a poll): starting Python for every
    # poll cost ~0.1 CPU-second each, taken from the two cores the timed backup runs on.
    wait_run() {
        CADANG_TOKEN=$KASI "$PY" - "$1" "$CADANG_BIN" "$PLAN" <<'PYEOF'
import json, subprocess, sys, time
n, binary, plan = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while True:
    out = subprocess.run([binary, "--json", "run", "list", "--plan", plan],
                         check=True, capture_output=True).stdout
    runs = json.loads(out)
    if len(runs) >= n and runs[0]["status"] not in ("running", "queued"):
        print(json.dumps(runs[0]))
        break
    time.sleep(0.5)
PYEOF
    }
    cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
    D0=$(cpu "$DAEMON_PID"); A0=$(cpu "$AGENT_PID")
    FIRST=$(wait_run 1)
    D1=$(cpu "$DAEMON_PID"); A1=$(cpu "$AGENT_PID")
    profile_stop
    log "rep $rep: CPU seconds of the first agent backup: daemon $(awk -v a="$D0" -v b="$D1" 'BEGIN {print b-a}'), agent $(awk -v a="$A0" -v b="$A1" 'BEGIN {print b-a}')"
    c "$KASI" plan run-now "$PLAN" >/dev/null
    SECOND=$(wait_run 2)

    # ------------------------------------------------------------ a day of changes
    "$PY" "$HERE/mutate.py" "$SRC" --seed "$SEED" --day 1 2>>"$RUN/mutate.log"
    CHANGED_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d\n", s}')
    export CADANG_REPOSITORY=$RUN/local CADANG_PASSWORD=cadang-bench-password
    sync; sleep 2; warm
    t0=$(date +%s%N)
    "${ON_AGENT_CORE[@]}" "$CADANG_BIN" backup --json "$SRC" | tail -1 >"$RUN/local-incr.json"
    t1=$(date +%s%N)
    LOCAL_INCR_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: local incremental backup ${LOCAL_INCR_S}s"
    sync; sleep 2; warm
    c "$KASI" plan run-now "$PLAN" >/dev/null
    THIRD=$(wait_run 3)
    log "rep $rep: incremental backup through the agent: $(echo "$THIRD" | head -c 300)"

    # ------------------------------------------------------------ restores of the latest
    # Both read repositories no longer in the page cache (bench/evict.py), as a restore
    # of an older backup does.
    sync; sleep 2
    "$PY" "$HERE/evict.py" "$RUN/local" "$RUN/var"
    profile_start local-restore
    t0=$(date +%s%N)
    "${ON_AGENT_CORE[@]}" "$CADANG_BIN" restore latest --target "$RUN/local-restored" >/dev/null
    sync
    t1=$(date +%s%N)
    profile_stop
    unset CADANG_REPOSITORY CADANG_PASSWORD
    LOCAL_RESTORE_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: local restore and sync ${LOCAL_RESTORE_S}s"
    sync; sleep 2
    "$PY" "$HERE/evict.py" "$RUN/local" "$RUN/local-restored"
    t0=$(date +%s%N)
    CADANG_REPOSITORY="$RUN/local" CADANG_PASSWORD=cadang-bench-password \
        "${ON_AGENT_CORE[@]}" "$CADANG_BIN" restore latest --json --target "$RUN/local-restored" | tail -1 >"$RUN/local-again.json"
    sync
    t1=$(date +%s%N)
    LOCAL_AGAIN_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: local restore again over its tree ${LOCAL_AGAIN_S}s: $(head -c 300 "$RUN/local-again.json")"
    sync; sleep 2
    "$PY" "$HERE/evict.py" "$RUN/local" "$RUN/var"
    profile_start agent-restore
    D0=$(cpu "$DAEMON_PID"); A0=$(cpu "$AGENT_PID")
    t0=$(date +%s%N)
    c "$KASI" restore-job start --source "$SERVER" --target "$RUN/agent-restored" --wait >"$RUN/restore.json"
    t1=$(date +%s%N)
    D1=$(cpu "$DAEMON_PID"); A1=$(cpu "$AGENT_PID")
    profile_stop
    log "rep $rep: CPU seconds of the restore through the agent: daemon $(awk -v a="$D0" -v b="$D1" 'BEGIN {print b-a}'), agent $(awk -v a="$A0" -v b="$A1" 'BEGIN {print b-a}')"
    AGENT_RESTORE_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: restore through the agent ${AGENT_RESTORE_S}s: $(head -c 400 "$RUN/restore.json")"
    sync; sleep 2
    "$PY" "$HERE/evict.py" "$RUN/var" "$RUN/agent-restored"
    t0=$(date +%s%N)
    c "$KASI" restore-job start --source "$SERVER" --target "$RUN/agent-restored" --wait >"$RUN/restore-again.json"
    t1=$(date +%s%N)
    AGENT_AGAIN_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: restore through the agent again over its tree ${AGENT_AGAIN_S}s"
    DAMAGED_BYTES=$("$PY" - "$RUN/agent-restored" <<'PYEOF'
import os, sys
files = []
for root, _, names in os.walk(sys.argv[1]):
    for name in names:
        path = os.path.join(root, name)
        if os.path.isfile(path) and not os.path.islink(path):
            files.append((os.path.getsize(path), path))
total = 0
for size, path in sorted(files, reverse=True)[:20]:
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    total += size
print(total)
PYEOF
)
    sync; sleep 2
    "$PY" "$HERE/evict.py" "$RUN/var" "$RUN/agent-restored"
    t0=$(date +%s%N)
    c "$KASI" restore-job start --source "$SERVER" --target "$RUN/agent-restored" --wait >"$RUN/restore-damaged.json"
    t1=$(date +%s%N)
    AGENT_DAMAGED_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e9}')
    log "rep $rep: restore through the agent over 20 damaged files (${DAMAGED_BYTES} bytes) ${AGENT_DAMAGED_S}s"
    kill "$AGENT_PID" "$DAEMON_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    AGENT_PID="" DAEMON_PID=""
    "$PY" - "$FIRST" "$SECOND" "$LOCAL_S" "$SRC_BYTES" "$rep" "$LOCAL_RESTORE_S" "$AGENT_RESTORE_S" "$RUN/restore.json" "$THIRD" "$LOCAL_INCR_S" "$RUN/local-incr.json" "$CHANGED_BYTES" "$LOCAL_AGAIN_S" "$RUN/local-again.json" "$AGENT_AGAIN_S" "$RUN/restore-again.json" "$DAMAGED_BYTES" "$AGENT_DAMAGED_S" "$RUN/restore-damaged.json" >>"$RESULTS" <<'PYEOF'
import json, sys
first, second, third = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[9])
local, size, rep = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
local_restore, agent_restore = float(sys.argv[6]), float(sys.argv[7])
restored = json.load(open(sys.argv[8]))
local_incr = json.load(open(sys.argv[11]))
restored_size = int(sys.argv[12])
local_again, agent_again = float(sys.argv[13]), float(sys.argv[15])
local_again_json, agent_again_json = json.load(open(sys.argv[14])), json.load(open(sys.argv[16]))
assert local_again_json["files_restored"] == 0, local_again_json
assert agent_again_json["status"] == "ok", agent_again_json
damaged_bytes, agent_damaged = int(sys.argv[17]), float(sys.argv[18])
damaged_json = json.load(open(sys.argv[19]))
assert damaged_json["status"] == "ok", damaged_json
assert all(r["status"] == "ok" for r in (first, second, third)), (first, second, third)
assert restored["status"] == "ok", restored
assert local_incr["message_type"] == "summary", local_incr
s1, s2, s3 = first["stats"], second["stats"], third["stats"]
print(json.dumps({
    "rep": rep, "bytes": size, "local_s": local, "local_mbps": size / 1e6 / local,
    "agent_s": s1["duration_seconds"], "agent_mbps": size / 1e6 / s1["duration_seconds"],
    "agent_wire_bytes": s1["wire_bytes"], "second_s": s2["duration_seconds"],
    "second_wire_bytes": s2["wire_bytes"],
    "local_incr_s": float(sys.argv[10]), "local_incr_added": local_incr["data_added"],
    "incr_s": s3["duration_seconds"], "incr_wire_bytes": s3["wire_bytes"],
    "incr_added": s3["bytes_added"],
    "local_restore_s": local_restore, "local_restore_mbps": restored_size / 1e6 / local_restore,
    "agent_restore_s": agent_restore, "agent_restore_mbps": restored_size / 1e6 / agent_restore,
    "local_again_s": local_again, "agent_again_s": agent_again,
    "agent_again_sent": agent_again_json["stats"]["bytes_sent"],
    "agent_again_unchanged": agent_again_json["stats"]["files_unchanged"],
    "damaged_bytes": damaged_bytes, "agent_damaged_s": agent_damaged,
    "agent_damaged_sent": damaged_json["stats"]["bytes_sent"],
    "agent_damaged_reused": damaged_json["stats"]["bytes_reused"],
}))
PYEOF
    log "rep $rep: $(tail -1 "$RESULTS")"
    if [[ $KEEP_RUNS != 1 ]]; then rm -rf -- "$RUN"; fi
    RUN=""
done

COMPRESS_ON=$COMPRESS_ON SPLIT_CORES=$SPLIT_CORES "$PY" - "$RESULTS" <<'PYEOF' | tee "${RESULTS%.jsonl}.md"
import json, os, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = lambda key: statistics.median(r[key] for r in rows)
cores = ("one core each: the agent and the local commands on CPU 0, the daemon on CPU 1"
         if os.environ.get("SPLIT_CORES") == "1" else "every process on every core")
print(f"| backup of {rows[0]['bytes']/1e6:.0f} MB, median of {len(rows)}; {cores} | value |")
print("|---|---|")
print(f"| local `cadang backup` | {med('local_mbps'):.1f} MB/s ({med('local_s'):.2f} s) |")
side = os.environ.get("COMPRESS_ON", "agent")
print(f"| through an agent (compressing on the {side}), first backup | {med('agent_mbps'):.1f} MB/s ({med('agent_s'):.2f} s) |")
print(f"| agent / local throughput (medians) | {med('agent_mbps')/med('local_mbps'):.2f} |")
# Each repetition runs its two backups back to back, so its own ratio is the least
# disturbed by a machine whose speed drifts between repetitions.
ratios = sorted(r["agent_mbps"] / r["local_mbps"] for r in rows)
print(f"| agent / local, median of the repetitions' ratios | {statistics.median(ratios):.2f} (each: {', '.join(f'{x:.2f}' for x in ratios)}) |")
print(f"| bytes on the wire, first backup | {med('agent_wire_bytes')/1e6:.1f} MB |")
print(f"| second backup, unchanged data | {med('second_s'):.2f} s, {med('second_wire_bytes')/1e3:.1f} kB on the wire |")
print(f"| after a day of changes: local `cadang backup` | {med('local_incr_s'):.2f} s, {med('local_incr_added')/1e6:.1f} MB added |")
print(f"| after a day of changes: through the agent | {med('incr_s'):.2f} s, {med('incr_wire_bytes')/1e6:.1f} MB on the wire, {med('incr_added')/1e6:.1f} MB added |")
print(f"| local `cadang restore` and `sync` | {med('local_restore_mbps'):.1f} MB/s ({med('local_restore_s'):.2f} s) |")
print(f"| restore through the agent, verified and flushed | {med('agent_restore_mbps'):.1f} MB/s ({med('agent_restore_s'):.2f} s) |")
print(f"| the same restores again over their trees (every file read and kept): local | {med('local_again_s'):.2f} s |")
print(f"| … through the agent | {med('agent_again_s'):.2f} s, {med('agent_again_unchanged'):.0f} files unchanged, {med('agent_again_sent')/1e3:.1f} kB on the wire |")
print(f"| … through the agent over 20 files damaged in place ({med('damaged_bytes')/1e6:.1f} MB) | {med('agent_damaged_s'):.2f} s, {med('agent_damaged_sent')/1e6:.1f} MB on the wire, {med('agent_damaged_reused')/1e6:.1f} MB copied on the server |")
PYEOF
