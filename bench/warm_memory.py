#!/usr/bin/env python3
"""Touch the machine's free memory once, so that the timed runs do not pay for it.

A virtual machine's memory that the guest has never used is backed by the host only on
first touch: on this project's machines the first write to such a page costs about three
times a later one (`dd if=/dev/zero of=/dev/shm/x bs=1M count=3072` ran at 279 MB/s on a
just-booted machine and at 772-994 MB/s from the second time on). The benchmarks write
gigabytes into the page cache (source copies, packs, restored trees), so on a fresh
machine whichever tool ran first paid for most of it, and every tool paid for the kernel's
copies at a rate a long-running server never sees. This writes to all memory the kernel
reports available minus a reserve, in an anonymous mapping freed on exit, and reports the
rate; a second call on a warm machine is fast.

    bench/warm_memory.py [--reserve-mib 2048]
"""
import argparse
import mmap
import sys
import time


def available_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("warm_memory: /proc/meminfo has no MemAvailable line")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reserve-mib", type=int, default=2048,
                        help="memory left untouched for everything else (MiB)")
    args = parser.parse_args()
    step = 1 << 20
    size = (available_bytes() - args.reserve_mib * step) // step * step
    if size <= 0:
        print("warm_memory: nothing to touch (available memory below the reserve)",
              file=sys.stderr)
        return 0
    block = b"\x01" * step
    start = time.monotonic()
    area = mmap.mmap(-1, size)
    for _ in range(size // step):
        area.write(block)
    area.close()
    seconds = time.monotonic() - start
    print(f"warm_memory: touched {size / 1e9:.1f} GB in {seconds:.1f} s "
          f"({size / 1e6 / max(seconds, 1e-9):.0f} MB/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
