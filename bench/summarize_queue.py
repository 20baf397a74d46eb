#!/usr/bin/env python3
"""Summarize queue.sh's outputs SERVER-MODE-rN.json: medians, ratios, fsync rates."""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAMES = {
    "securely": "securely-queued",
    "bs-fsync": "beanstalkd -b -f 0 (fsync every write)",
    "bs-nofsync": "beanstalkd -b -F (no fsync)",
}


def main() -> None:
    out = Path(sys.argv[1])
    runs = defaultdict(list)
    failed = defaultdict(list)
    for f in sorted(out.glob("*-r[0-9]*.json")):
        if f.name.startswith("fsync-"):
            continue
        d = json.loads(f.read_text())
        (failed if "failed" in d else runs)[d["label"]].append(d)
    fs = [json.loads(f.read_text()) for f in sorted(out.glob("fsync-r*.json"))]
    rates = [j["fsyncs_per_s"] for j in fs]
    orates = [j["overwrite_fdatasyncs_per_s"] for j in fs if "overwrite_fdatasyncs_per_s" in j]

    modes = sorted({k.rsplit("-", 1)[1] for k in list(runs) + list(failed)}, key=lambda m: (m != "seq", m))
    med = {}
    print("| mode | server | runs | push jobs/s (median) | push all runs | push p99 ms | reserve+ack jobs/s (median) | r+a all runs | r+a p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for s in ("securely", "bs-fsync", "bs-nofsync"):
            k = f"{s}-{mode}"
            rs = runs.get(k, [])
            if failed.get(k):
                print(f"| {mode} | {NAMES[s]} | {len(failed[k])} FAILED (exit {', '.join(str(d['failed']) for d in failed[k])}) | | | | | | |")
            if not rs:
                continue

            def m(key):
                return statistics.median(r[key] for r in rs)

            med[k] = (m("push_jobs_per_s"), m("reserve_ack_jobs_per_s"))
            pa = ", ".join(f"{r['push_jobs_per_s']:.0f}" for r in rs)
            ra = ", ".join(f"{r['reserve_ack_jobs_per_s']:.0f}" for r in rs)
            conc = f"C={rs[0]['concurrency']}" if mode != "seq" else "1 conn, sequential"
            print(
                f"| {conc} | {NAMES[s]} | {len(rs)} | {med[k][0]:.0f} | {pa} | {m('push_p99_ms'):.2f} "
                f"| {med[k][1]:.0f} | {ra} | {m('reserve_ack_p99_ms'):.2f} |"
            )
    print()
    print(f"disk sync rate before each repeat: 4 KiB append+fsync {', '.join(str(r) for r in rates)} /s"
          + (f" (median {statistics.median(rates):.0f})" if rates else "")
          + f"; 4 KiB overwrite+fdatasync {', '.join(str(r) for r in orates)} /s"
          + (f" (median {statistics.median(orates):.0f})" if orates else ""))
    print()
    print("| ratio (medians) | push | reserve+ack |")
    print("|---|---|---|")
    for mode in modes:
        a = med.get(f"securely-{mode}")
        for peer in ("bs-fsync", "bs-nofsync"):
            b = med.get(f"{peer}-{mode}")
            if a and b:
                print(f"| {mode}: securely / {NAMES[peer]} | {a[0] / b[0]:.2f} | {a[1] / b[1]:.2f} |")


if __name__ == "__main__":
    main()
