#!/usr/bin/env python3
"""Drop the files under each DIR from the page cache (posix_fadvise DONTNEED).

A restore or a check reads a repository written days before, not one still in the page
cache from the backup a minute ago. The benchmarks call this on both tools' repositories
before timing those phases, so neither reads from memory what the other reads from disk
(cadang drops its packs from the cache as it writes them; restic leaves them cached).
Dirty pages are flushed first (`os.sync`), so every page can go.
"""
import os
import sys


def evict(root):
    for path, _dirs, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: evict.py DIR...")
    os.sync()
    for root in sys.argv[1:]:
        evict(root)
