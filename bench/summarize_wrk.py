#!/usr/bin/env python3
"""Summarize proxy.sh's wrk outputs NAME[-KIND]-rN.txt: medians over repeats, and securely/nginx
(one ratio row per KIND: keepalive and handshake in https runs)."""
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
# https runs: what req/s means in each kind
KINDS = {
    "keepalive": "https, keep-alive (req/s)",
    "handshake": "https, a new connection per request (req/s = handshakes/s)",
}


def ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * UNIT[m.group(2)]


def parse(path: Path) -> dict | None:
    t = path.read_text()
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if not m:
        return None
    d = {"rps": float(m.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", t, re.M)
        d[f"p{pct}"] = ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    d["non2xx"] = int(m.group(1)) if m else 0
    for key in ("backend_cpu_s", "server_cpu_s", "backend_time_wait", "server_rss_kb"):
        m = re.search(rf"^{key}=([\d.]+)", t, re.M)
        d[key] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(s|m)", t)
    d["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    d["sockerr"] = sum(int(x) for x in m.groups()) if m else 0
    d["sockerr_text"] = re.search(r"Socket errors: (.*)", t).group(1) if m else ""
    d["restarted"] = "proxyd_restarted=1" in t
    return d


def main() -> None:
    out = Path(sys.argv[1])
    runs = defaultdict(list)
    failed = defaultdict(int)
    for f in sorted(out.glob("*-r*.txt")):
        name = f.name.rsplit("-r", 1)[0]
        d = parse(f)
        if d is None:
            failed[name] += 1
        else:
            runs[name].append(d)
    # names: direct, nginx, securely (http) or nginx-KIND, securely-KIND (https)
    order = sorted(runs, key=lambda k: (k.partition("-")[2], ("direct", "nginx", "securely").index(k.partition("-")[0])))
    med = {}
    print("| target | runs | req/s (median) | req/s all runs | p50 ms | p99 ms | non-2xx | socket errors | proxy CPU us/req | backend CPU us/req | backend TIME-WAIT | server RSS MiB after runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in order:
        rs = runs[k]

        def m(key):
            return statistics.median(r[key] for r in rs)

        def per_req(key):
            v = [r[key] * 1e6 / r["requests"] for r in rs if r.get(key) is not None and r["requests"]]
            return statistics.median(v) if v else float("nan")

        med[k] = {"rps": m("rps"), "p99": m("p99"), "cpu": per_req("server_cpu_s")}
        errs = "; ".join(r["sockerr_text"] for r in rs if r["sockerr"]) or "0"
        cpu = "-" if k == "direct" else f"{med[k]['cpu']:.1f}"
        allr = ", ".join(f"{r['rps']:.0f}" for r in rs)
        rss = ", ".join(f"{(r['server_rss_kb'] or 0) / 1024:.1f}" for r in rs)
        print(
            f"| {k} | {len(rs)} | {m('rps'):.0f} | {allr} | {m('p50'):.2f} "
            f"| {m('p99'):.2f} | {sum(r['non2xx'] for r in rs)} | {errs} | {cpu} "
            f"| {per_req('backend_cpu_s'):.1f} | {max(r['backend_time_wait'] or 0 for r in rs):.0f} "
            f"| {rss} |"
        )
    for k, n in failed.items():
        print(f"\n{k}: {n} run(s) without a wrk result (see the files)")
    for k in runs:
        if any(r["restarted"] for r in runs[k]):
            print(f"\n{k}: proxyd restarted during at least one run")
    pairs = [k.partition("-")[2] for k in order if k.startswith("securely") and "nginx" + k[len("securely"):] in med]
    if pairs:
        print()
        print("| securely / nginx | req/s | p99 latency | CPU us/req |")
        print("|---|---|---|---|")
        for kind in pairs:
            suffix = f"-{kind}" if kind else ""
            a, b = med["securely" + suffix], med["nginx" + suffix]
            label = KINDS.get(kind, "ratio (medians)")
            print(f"| {label} | {a['rps'] / b['rps']:.2f} | {a['p99'] / b['p99']:.2f} | {a['cpu'] / b['cpu']:.2f} |")


if __name__ == "__main__":
    main()
