#!/usr/bin/env bash
# What the hardware allows, one core: zstd's own benchmark mode and b3sum,
# to compare with `cargo bench --bench engine`.
set -euo pipefail
n=${1:-64}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp" "$n" <<'PY'
import random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(1)
open(f"{d}/random", "wb").write(r.randbytes(n << 20))
words = [b"INSERT", b"INTO", b"orders", b"VALUES", b"2026-11-29", b"Semarang", b"OK", b"200", b"GET", b"/api/v1/"]
out = bytearray()
while len(out) < n << 20:
    out += r.choice(words) + (b"\n" if r.random() < 0.14 else b" ")
open(f"{d}/text", "wb").write(out[: n << 20])
PY
for f in text random; do
  for l in 1 3; do
    zstd -b$l -T1 -i3 "$tmp/$f" 2>&1 | tr "\r" "\n" | grep -E "MB/s, " | tail -1 | sed -E "s/^.*\(x/zstd -$l $f (x/"
  done
done
if command -v b3sum >/dev/null; then
  s=$(date +%s.%N); b3sum --num-threads 1 "$tmp/random" >/dev/null; e=$(date +%s.%N)
  python3 -c "print(f'b3sum, one thread: {($n*1048576)/($e-$s)/1e6:.0f} MB/s')"
else
  echo "b3sum not installed (apt-get install b3sum)"
fi
