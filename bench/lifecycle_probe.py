#!/usr/bin/env python3
"""Timing helpers of lifecycle.sh, in one process so that no interpreter start-up is timed.

  start CTL CONF LOG
      Launches `securely -c CONF` (securely beside CTL, output to LOG) and polls
      `CTL --socket <runtime_dir>/control.sock status --json` until all three daemons are
      ready. Prints "PID MS": the supervisor's pid and the milliseconds from launch to the
      first reply showing all ready.
  recover CTL SOCK DAEMON PID EXPECT PROBE
      SIGKILLs PID (DAEMON's instance), then runs the shell command PROBE until its stdout
      (stripped) equals EXPECT (EXPECT "-": until it exits 0), then polls status until
      DAEMON is ready with another pid. Prints "SERVE_MS READY_MS FAILED_PROBES NEW_PID",
      both times from the kill.
"""
import json
import os
import signal
import subprocess
import sys
import time

POLL = 0.005


def status(ctl: str, sock: str):
    p = subprocess.run([ctl, "--socket", sock, "status", "--json"], capture_output=True)
    if p.returncode != 0:
        return None
    try:
        return {d["name"]: d for d in json.loads(p.stdout)["daemons"]}
    except (ValueError, KeyError):
        return None


def runtime_dir(conf: str) -> str:
    for line in open(conf):
        if line.startswith("runtime_dir:"):
            return line.split(":", 1)[1].strip()
    sys.exit(f"no runtime_dir in {conf}")


def start(ctl: str, conf: str, log: str) -> None:
    sock = os.path.join(runtime_dir(conf), "control.sock")
    securely = os.path.join(os.path.dirname(ctl), "securely")
    env = dict(os.environ, SECURELY_LOG=os.environ.get("SECURELY_LOG", "warn"))
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen([securely, "-c", conf], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    deadline = t0 + 30
    while time.perf_counter() < deadline:
        st = status(ctl, sock)
        if st and len(st) == 3 and all(d["state"] == "ready" for d in st.values()):
            print(p.pid, f"{(time.perf_counter() - t0) * 1e3:.1f}")
            return
        if p.poll() is not None:
            sys.exit(f"securely exited with {p.returncode} before ready (see {log})")
        time.sleep(POLL)
    print(p.pid, "timeout")
    sys.exit(1)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def recover(ctl: str, sock: str, daemon: str, pid: int, expect: str, probe: str) -> None:
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        pass
    failed = 0
    deadline = t0 + 60
    while True:
        p = subprocess.run(probe, shell=True, capture_output=True, text=True)
        ok = p.returncode == 0 if expect == "-" else p.stdout.strip() == expect
        if ok:
            break
        failed += 1
        if time.perf_counter() > deadline:
            sys.exit(f"{daemon} did not serve again within 60 s (last probe: {p.stdout!r} {p.stderr!r})")
        time.sleep(POLL)
    serve = (time.perf_counter() - t0) * 1e3
    while True:
        st = status(ctl, sock)
        d = st.get(daemon) if st else None
        if d and d["state"] == "ready" and d["pid"] and d["pid"] != pid:
            break
        if time.perf_counter() > deadline:
            sys.exit(f"{daemon} not ready in status within 60 s: {d}")
        time.sleep(POLL)
    ready = (time.perf_counter() - t0) * 1e3
    print(f"{serve:.1f} {ready:.1f} {failed} {d['pid']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["start"] and len(sys.argv) == 5:
        start(*sys.argv[2:5])
    elif sys.argv[1:2] == ["recover"] and len(sys.argv) == 8:
        recover(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], sys.argv[7])
    else:
        sys.exit(__doc__)
