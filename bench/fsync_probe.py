#!/usr/bin/env python3
"""The disk's sync rate in DIR, one JSON line. Print it beside any durable-write figure
(securely-queued, beanstalkd -f 0): on a shared virtual disk it drifts by an order of
magnitude within minutes. Bounded: N writes in each of two patterns:

  append   : append 4 KiB + fsync (the file grows: every sync also commits metadata)
             -> fsyncs_per_s, p50_ms, p99_ms, max_ms (as the peers' fsync_probe.py)
  overwrite: rewrite 4 KiB blocks in a preallocated file + fdatasync (no metadata to commit,
             as a preallocated log such as beanstalkd's binlog or sled's segments)
             -> overwrite_fdatasyncs_per_s, overwrite_p50_ms, overwrite_p99_ms
"""
import json
import os
import statistics
import sys
import time

d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("TMPDIR", "/tmp"), "securely-bench", "run")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
os.makedirs(d, exist_ok=True)
path = os.path.join(d, "fsync-probe.dat")
buf = os.urandom(4096)


def probe(overwrite: bool) -> tuple[float, list[float]]:
    lat = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if overwrite:
            os.posix_fallocate(fd, 0, 4096 * n)
            os.fsync(fd)
        t0 = time.perf_counter()
        for i in range(n):
            a = time.perf_counter()
            if overwrite:
                os.pwrite(fd, buf, 4096 * i)
                os.fdatasync(fd)
            else:
                os.write(fd, buf)
                os.fsync(fd)
            lat.append(time.perf_counter() - a)
        total = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return total, lat


def pct(lat: list[float], p: float) -> float:
    return round(lat[int(p * (len(lat) - 1))] * 1e3, 3)


total, lat = probe(False)
total_o, lat_o = probe(True)
print(json.dumps({
    "dir": d, "n": n,
    "fsyncs_per_s": round(n / total), "p50_ms": round(statistics.median(lat) * 1e3, 3),
    "p99_ms": pct(lat, 0.99), "max_ms": round(lat[-1] * 1e3, 3),
    "overwrite_fdatasyncs_per_s": round(n / total_o),
    "overwrite_p50_ms": round(statistics.median(lat_o) * 1e3, 3), "overwrite_p99_ms": pct(lat_o, 0.99),
}))
