#!/usr/bin/env python3
"""Summarize dns.sh's dnsperf outputs NAME-rN.txt: medians over repeats, and securely/dnsmasq."""
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def num(t: str, pat: str) -> float:
    m = re.search(pat, t)
    return float(m.group(1)) if m else float("nan")


def parse(p: Path) -> dict:
    t = p.read_text()
    return {
        "qps": num(t, r"Queries per second:\s+([\d.]+)"),
        "sent": num(t, r"Queries sent:\s+(\d+)"),
        "completed": num(t, r"Queries completed:\s+(\d+)"),
        "lost": num(t, r"Queries lost:\s+(\d+)"),
        "noerror": num(t, r"NOERROR (\d+)"),
        "lat_avg_ms": num(t, r"Average Latency \(s\):\s+([\d.]+)") * 1e3,
        "lat_max_ms": num(t, r"Average Latency \(s\):.*max ([\d.]+)") * 1e3,
        "cpu_s": num(t, r"(?m)^server_cpu_s=([\d.]+)"),
        "rss_kb": num(t, r"(?m)^server_rss_kb=(\d+)"),
        "restarted": "dnsd_restarted=1" in t,
    }


def main() -> None:
    out = Path(sys.argv[1])
    runs = defaultdict(list)
    for f in sorted(out.glob("*-r[0-9]*.txt")):
        runs[f.name.rsplit("-r", 1)[0]].append(parse(f))
    med = {}
    print("| server | runs | qps (median) | qps all runs | avg latency ms | max latency ms | lost (sum) | NOERROR % | server CPU us/query | server RSS MiB after runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in [k for k in ("dnsmasq", "securely") if k in runs]:
        rs = runs[k]

        def m(key):
            return statistics.median(r[key] for r in rs)

        cpu = statistics.median(r["cpu_s"] * 1e6 / r["completed"] for r in rs if r["completed"])
        med[k] = {"qps": m("qps"), "lat": m("lat_avg_ms"), "cpu": cpu}
        done = sum(r["completed"] for r in rs)
        allq = ", ".join(format(r["qps"], ".0f") for r in rs)
        rss = ", ".join(format(r["rss_kb"] / 1024, ".1f") for r in rs)
        print(
            f"| {k} | {len(rs)} | {m('qps'):.0f} | {allq} | {m('lat_avg_ms'):.3f} | {max(r['lat_max_ms'] for r in rs):.1f} "
            f"| {sum(r['lost'] for r in rs):.0f} | {100 * sum(r['noerror'] for r in rs) / max(done, 1):.2f} | {cpu:.1f} | {rss} |"
        )
        if any(r["restarted"] for r in rs):
            print(f"\n{k}: dnsd restarted during at least one run\n")
    if "dnsmasq" in med and "securely" in med:
        a, b = med["securely"], med["dnsmasq"]
        print()
        print("| securely / dnsmasq | qps | avg latency | CPU us/query |")
        print("|---|---|---|---|")
        print(f"| ratio (medians) | {a['qps'] / b['qps']:.2f} | {a['lat'] / b['lat']:.2f} | {a['cpu'] / b['cpu']:.2f} |")


if __name__ == "__main__":
    main()
