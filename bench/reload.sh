#!/usr/bin/env bash
# Upgrades under load: Securely reloaded N times while wrk (HTTP) and dnsperf (DNS) run,
# next to nginx reloaded N times under the same wrk load, in the same run.
#
#   backend  : nginx static "hello\n"                           127.0.0.1:$BASE_PORT
#   nginx    : nginx proxy_pass to the backend                  127.0.0.1:$BASE_PORT+1
#   securely : a Securely stack, site "bench" -> the backend     127.0.0.1:$BASE_PORT+2
#              (dnsd on $BASE_PORT+3, answering bench.test)
#
# For each target: wrk (keep-alive connections, `Host: bench.test`) runs DURATION; after
# a 2 s warm-up the target is reloaded RELOADS times, RELOAD_GAP seconds apart:
#   securely: `securelyctl reload` (check, re-exec of the supervisor, hand-over of every
#             daemon to a fresh instance), the binaries first copied anew over the paths
#             the stack runs from (a package upgrade);
#   nginx:    `nginx -s reload` (new workers, old workers drain).
# Each reload is timed from the command to the last old process gone (securely: the
# daemons' pids before the reload; nginx: its workers' pids before). dnsperf queries
# Securely's dnsd (20k qps) during both runs: its answers are counted in Securely's run;
# in nginx's it is the same background load (nginx serves no DNS: no peer figure there).
#
# Printed: requests, errors (connect, read, write, timeout, non-2xx) from wrk, DNS
# queries sent/completed/lost from dnsperf, and every reload's duration.
#
# Env knobs: RELOADS=5 RELOAD_GAP=2 DURATION=(auto: 4 + RELOADS*RELOAD_GAP + 2 s)
#            CONNS=32 BASE_PORT=29080
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

RELOADS=${RELOADS:-5}
RELOAD_GAP=${RELOAD_GAP:-2}
DURATION_S=${DURATION_S:-$((4 + RELOADS * RELOAD_GAP + 2))}
CONNS=${CONNS:-32}
BASE_PORT=${BASE_PORT:-29080}
HOST=127.0.0.1
assert_loopback "$HOST"
need wrk nginx dnsperf curl dig python3 ss pgrep
need_securely

BE_PORT=$BASE_PORT NG_PORT=$((BASE_PORT + 1)) SEC_PORT=$((BASE_PORT + 2)) SEC_DNS_PORT=$((BASE_PORT + 3))
assert_ports_free "$BE_PORT" "$NG_PORT" "$SEC_PORT" "$SEC_DNS_PORT"

D=$RUN/reload
OUT=$RESULTS/reload
rm -rf "$D" "$OUT"; mkdir -p "$D/www" "$D/backend" "$D/nproxy" "$D/bin" "$OUT"
printf 'hello\n' >"$D/www/index.html"
chmod -R a+rX "$D"

nginx_conf() { # DIR LISTEN_PORT BODY...
  local dir=$1 port=$2; shift 2
  cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  $*
  server { listen $HOST:$port backlog=4096; $( [[ $port == "$BE_PORT" ]] && echo "root $D/www; location / { index index.html; }" || echo "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }" ) }
}
EOF
}
nginx_conf "$D/backend" "$BE_PORT" >"$D/backend/nginx.conf"
nginx_conf "$D/nproxy" "$NG_PORT" "upstream backend { server $HOST:$BE_PORT; keepalive 128; }" >"$D/nproxy/nginx.conf"
start_bg backend nginx -e "$D/backend/error.log" -p "$D/backend" -c "$D/backend/nginx.conf" -g 'daemon off; user root;'
start_bg nproxy nginx -e "$D/nproxy/error.log" -p "$D/nproxy" -c "$D/nproxy/nginx.conf" -g 'daemon off; user root;'
wait_tcp $HOST "$BE_PORT"; wait_tcp $HOST "$NG_PORT"
NG_MASTER=$(cat "$RUN/nproxy.pid")

# Securely runs from copies of the release binaries, so a reload can install new ones.
install_binaries() {
  local b
  for b in securely securely-proxyd securely-dnsd securely-queued; do
    cp "$REPO_ROOT/target/release/$b" "$D/bin/.$b.new" && mv "$D/bin/.$b.new" "$D/bin/$b"
  done
}
install_binaries
cp "$SECURELY_BIN/securelyctl" "$D/bin/securelyctl"
SECURELY_BIN=$D/bin securely_start reload "$SEC_PORT" "$SEC_DNS_PORT"
SECURELY_BIN=$D/bin
sctl site:link bench "$HOST:$BE_PORT" >&2
for p in "$NG_PORT" "$SEC_PORT"; do
  body=$(curl -s --max-time 2 -H 'Host: bench.test' "http://$HOST:$p/")
  [[ $body == hello ]] || die "port $p returned '$body'"
done
[[ $(dig +short -p "$SEC_DNS_PORT" @"$HOST" bench.test A) == 127.0.0.1 ]] || die "dnsd does not answer bench.test"
printf 'bench.test A\n' >"$D/queries.txt"

# pids_gone PID... : waits until none of the pids lives (10 ms polls, 60 s at most)
pids_gone() {
  local pid i
  for ((i = 0; i < 6000; i++)); do
    local left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left)) || return 0
    sleep 0.01
  done
  return 1
}

securely_daemon_pids() {
  sctl status --json | "$PYTHON" -c 'import json,sys; print(" ".join(str(d["pid"]) for d in json.load(sys.stdin)["daemons"] if d["pid"]))'
}

reload_securely() {
  local olds t0 out
  olds=$(securely_daemon_pids)
  install_binaries
  t0=$(now_ns)
  out=$(sctl reload 2>&1) || { log "securely reload failed: $out"; echo failed; return; }
  # shellcheck disable=SC2086
  pids_gone $olds || { echo "old-left"; return; }
  echo "$(ms_since "$t0")"
}

reload_nginx() {
  local olds t0
  olds=$(pgrep -P "$NG_MASTER" | tr '\n' ' ')
  t0=$(now_ns)
  nginx -p "$D/nproxy" -c "$D/nproxy/nginx.conf" -s reload 2>>"$D/nproxy/reload.log"
  # shellcheck disable=SC2086
  pids_gone $olds || { echo "old-left"; return; }
  echo "$(ms_since "$t0")"
}

# run_target NAME PORT : wrk (and for securely dnsperf) for DURATION_S, reloading meanwhile
run_target() {
  local name=$1 port=$2 i times=()
  log "$name: wrk -c$CONNS for ${DURATION_S}s, $RELOADS reloads"
  wrk -t2 -c"$CONNS" -d"${DURATION_S}s" -H 'Host: bench.test' "http://$HOST:$port/" >"$OUT/$name-wrk.txt" 2>&1 &
  local wrk_pid=$!
  # The same DNS load on the machine in both runs (it only measures dnsd's answers in
  # Securely's; in nginx's it is background load of the same size).
  dnsperf -s "$HOST" -p "$SEC_DNS_PORT" -d "$D/queries.txt" -l "$DURATION_S" -c 4 -q 64 -t 2 -Q 20000 >"$OUT/$name-dnsperf.txt" 2>&1 &
  local dnsperf_pid=$!
  sleep 2
  for ((i = 1; i <= RELOADS; i++)); do
    times+=("$(reload_"$name")")
    sleep "$RELOAD_GAP"
  done
  wait "$wrk_pid" || true
  wait "$dnsperf_pid" || true
  printf '%s\n' "${times[@]}" >"$OUT/$name-reload-ms.txt"
}

run_target nginx "$NG_PORT"
run_target securely "$SEC_PORT"

# ---- report ----
wrk_line() { # FILE -> requests errors...
  "$PYTHON" - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
req = re.search(r"(\d+) requests in", t)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
c, r, w, to = sock.groups() if sock else (0, 0, 0, 0)
print(f"requests {req.group(1) if req else '?'}  errors: connect {c} read {r} write {w} timeout {to} non-2xx {non2xx.group(1) if non2xx else 0}")
EOF
}
dns_line() {
  "$PYTHON" - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
g = lambda k: (re.search(k + r":\s+(\d+)", t) or [None, "?"])[1]
print(f"DNS queries sent {g('Queries sent')}  completed {g('Queries completed')}  lost {g('Queries lost')}")
EOF
}
{
  echo "== reloads under load: $RELOADS each, ${DURATION_S}s of wrk -c$CONNS (keep-alive) =="
  for name in securely nginx; do
    echo "$name: $(wrk_line "$OUT/$name-wrk.txt")"
    [[ $name == securely ]] && echo "securely: $(dns_line "$OUT/securely-dnsperf.txt")"
    echo "$name: reload ms (command to last old process gone): $(tr '\n' ' ' <"$OUT/$name-reload-ms.txt")"
  done
} | tee "$OUT/summary.txt"
