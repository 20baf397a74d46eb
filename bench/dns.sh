#!/usr/bin/env bash
# DNS: securely-dnsd vs dnsmasq, in the same run, interleaved.
#
#   dnsmasq  : address=/test/127.0.0.1 + local=/test/, no upstream     127.0.0.1:$BASE_PORT
#   securely : a Securely stack, dns.tld test, no upstreams            127.0.0.1:$BASE_PORT+1
#              (its HTTP listens on $BASE_PORT+2, unused here)
# First a few dig checks against both (the answers, side by side), then dnsperf over UDP
# with NQ random names under .test (type A), `-c CLIENTS -q OUTSTANDING -l DURATION`, the
# order of the two servers alternating between repeats. Also records each server's CPU
# time during the run (dnsmasq; securely-dnsd) as CPU microseconds per answered query.
# With ISOLATE=1 (default, needs root) everything runs in a private network namespace
# with only `lo`, so no packet can leave the machine.
#
# Env knobs: REPEATS=3 DURATION=10 CLIENTS=2 OUTSTANDING=100 NQ=10000 BASE_PORT=25353
#            MODE=unpinned|pinned (pinned: servers on CPU0, dnsperf on CPU1) ISOLATE=1
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [[ ${ISOLATE:-1} == 1 && -z ${_IN_NETNS:-} ]]; then
  exec unshare --net -- env _IN_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

source "$HERE/lib.sh"

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-2}
OUTSTANDING=${OUTSTANDING:-100}
NQ=${NQ:-10000}
MODE=${MODE:-unpinned}
BASE_PORT=${BASE_PORT:-25353}
HOST=127.0.0.1
assert_loopback $HOST
need dnsmasq dnsperf dig python3 ss taskset
need_securely

if [[ $MODE == pinned ]]; then SRV_PIN=(taskset -c 0); CLI_PIN=(taskset -c 1); else SRV_PIN=(); CLI_PIN=(); fi

DM_PORT=$BASE_PORT SEC_PORT=$((BASE_PORT + 1)) SEC_HTTP_PORT=$((BASE_PORT + 2))
assert_ports_free "$DM_PORT" "$SEC_PORT" "$SEC_HTTP_PORT"

D=$RUN/dns
OUT=$RESULTS/dns-$MODE
rm -rf "$D" "$OUT"; mkdir -p "$D" "$OUT"
chmod 755 "$D"

# ---- query file: NQ random names under .test, type A ----
"$PYTHON" - "$NQ" >"$D/queries.txt" <<'EOF'
import random, string, sys
rnd = random.Random(42)
for _ in range(int(sys.argv[1])):
    name = "".join(rnd.choices(string.ascii_lowercase + string.digits, k=rnd.randint(6, 14)))
    print(f"{name}.test A")
EOF

cat >"$D/dnsmasq.conf" <<EOF
port=$DM_PORT
listen-address=$HOST
bind-interfaces
no-resolv
no-poll
no-hosts
no-negcache
address=/test/127.0.0.1
local=/test/
pid-file=
log-facility=$D/dnsmasq-facility.log
dns-forward-max=1000
EOF

start_bg dnsmasq "${SRV_PIN[@]}" dnsmasq -k --conf-file="$D/dnsmasq.conf"
DM_PID=$(cat "$RUN/dnsmasq.pid")
SECURELY_WRAP=("${SRV_PIN[@]}")
securely_start dns "$SEC_HTTP_PORT" "$SEC_PORT"
sleep 0.5

# ---- answers, side by side ----
# dig_brief PORT NAME TYPE -> "STATUS: TYPE RDATA; ..." (answer, then authority with "auth")
dig_brief() {
  dig @"$HOST" -p "$1" "$2" "$3" +tries=1 +time=3 +noall +comments +answer +authority 2>&1 | awk '
    /status:/ { match($0, /status: [A-Z]+/); st = substr($0, RSTART + 8, RLENGTH - 8) }
    /timed out|no servers/ { st = "no answer" }
    section == "auth" && !/^;/ && NF >= 5 { rr = rr sep "auth " $4; sep = "; " }
    /^;; AUTHORITY SECTION/ { section = "auth" }
    /^;; ANSWER SECTION/ { section = "ans" }
    section == "ans" && !/^;/ && NF >= 5 { v = $5; for (i = 6; i <= NF && i <= 6; i++) v = v " " $i; rr = rr sep $4 " " v; sep = "; " }
    END { printf "%s%s", (st == "" ? "?" : st), (rr == "" ? "" : ": " rr) }'
}
{
  echo "| query | dnsmasq (address=/test/ + local=/test/) | securely-dnsd |"
  echo "|---|---|---|"
  for q in "foo.test A" "a.b.foo.test A" "foo.test AAAA" "foo.test MX" "test SOA" "test NS" "example.com A"; do
    # shellcheck disable=SC2086
    set -- $q
    echo "| $1 $2 | $(dig_brief "$DM_PORT" "$1" "$2") | $(dig_brief "$SEC_PORT" "$1" "$2") |"
  done
} >"$OUT/dig.md"
cat "$OUT/dig.md" >&2
for s in "dnsmasq:$DM_PORT" "securely:$SEC_PORT"; do
  a=$(dig @"$HOST" -p "${s##*:}" foo.test A +short +tries=1 +time=3 || true)
  [[ $a == 127.0.0.1 ]] || die "${s%%:*} answered '$a' for foo.test A"
done

run_one() { # NAME REPEAT
  local name=$1 r=$2 f port spid c0 c1 pid_after
  f=$OUT/$name-r$r.txt
  if [[ $name == dnsmasq ]]; then port=$DM_PORT spid=$DM_PID; else port=$SEC_PORT spid=$(securely_daemon_pid dnsd); fi
  c0=$(cpu_ticks "$spid")
  "${CLI_PIN[@]}" dnsperf -s "$HOST" -p "$port" -d "$D/queries.txt" -l "$DURATION" \
    -c "$CLIENTS" -q "$OUTSTANDING" -t 2 >"$f" 2>&1 || log "dnsperf exited non-zero against $name (see $f)"
  c1=$(cpu_ticks "$spid")
  echo "server_cpu_s=$(ticks_to_s "$c0" "$c1")" >>"$f"
  echo "server_rss_kb=$(rss_kb "$spid")" >>"$f"
  if [[ $name == securely ]]; then
    pid_after=$(securely_daemon_pid dnsd || true)
    if [[ $pid_after != "$spid" ]]; then
      echo "dnsd_restarted=1 (pid $spid -> ${pid_after:-none})" >>"$f"
      log "WARNING: dnsd pid changed during the run: $spid -> ${pid_after:-none}"
      securely_track_daemons
    fi
  fi
  log "run $r $name: $(grep -E 'Queries per second' "$f" | tr -s ' ') $(grep -E 'Queries lost' "$f" | tr -s ' ') cpu=$(grep server_cpu_s "$f" | cut -d= -f2)s"
}

for r in $(seq 1 "$REPEATS"); do
  if ((r % 2)); then run_one dnsmasq "$r"; run_one securely "$r"; else run_one securely "$r"; run_one dnsmasq "$r"; fi
done

cp "$SEC_DIR/securely.log" "$OUT/securely.log"
report_log "$OUT/securely.log"

{
  echo "# dns: MODE=$MODE dnsperf UDP -c$CLIENTS -q$OUTSTANDING -l$DURATION, $NQ names under .test (A), $REPEATS repeats, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  "$PYTHON" "$HERE/summarize_dnsperf.py" "$OUT"
  echo
  echo "Answers (dig, network namespace isolated: ${_IN_NETNS:-no}):"
  echo
  cat "$OUT/dig.md"
  echo
  digest=$(log_digest "$OUT/securely.log")
  [[ -n $digest ]] && printf '\nstack log, warnings/errors (count, message):\n```\n%s\n```\n' "$(cut -c1-300 <<<"$digest")"
  echo "securely stack restarts during the run: $(sctl status --json | "$PYTHON" -c 'import json,sys; print(", ".join("%s=%s" % (d["name"], d["restarts"]) for d in json.load(sys.stdin)["daemons"]))')"
} | tee "$OUT/summary.md"
