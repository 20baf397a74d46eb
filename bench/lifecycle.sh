#!/usr/bin/env bash
# Lifecycle of a Securely stack: start-up, recovery after a crash, restart, idle memory.
#
#  1. start-up (STARTS times, fresh runtime and data dirs each time):
#       fg: from launching `securely -c FILE` to the first `securelyctl status --json`
#           showing all three daemons ready (lifecycle_probe.py launches it and polls
#           every 5 ms; the figure includes up to one poll, a few ms);
#       -d: how long `securely -d -c FILE` takes to return (it exits 0 only once every
#           daemon is ready: exact, includes the daemonizing fork).
#  2. idle RSS (VmRSS) of the supervisor and of each daemon, IDLE_WAIT seconds after ready,
#     next to nginx (master + 1 worker), dnsmasq and beanstalkd idle, for scale.
#  3. recovery (RECOVERIES rounds): SIGKILL each daemon in turn and time until its real
#     service answers again: proxyd: `curl -H 'Host: life.test'` returns the backend's
#     body; dnsd: `dig foo.test A` returns 127.0.0.1; queued: `securelyctl queue:stats`
#     succeeds; then until `status` shows it ready with a new pid. Each daemon is killed
#     only after it has been up STABLE_S seconds (the supervisor's backoff is then back at
#     its first step, 100 ms).
#  4. `securelyctl restart DAEMON` (graceful: drain, new instance ready): its duration.
#
# Env knobs: STARTS=5 RECOVERIES=3 IDLE_WAIT=3 STABLE_S=10.5 BASE_PORT=23080
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

STARTS=${STARTS:-5}
RECOVERIES=${RECOVERIES:-3}
IDLE_WAIT=${IDLE_WAIT:-3}
STABLE_S=${STABLE_S:-10.5}
BASE_PORT=${BASE_PORT:-23080}
HOST=127.0.0.1
need curl dig python3 ss nginx dnsmasq beanstalkd
need_securely

HTTP_PORT=$BASE_PORT DNS_PORT=$((BASE_PORT + 1)) BE_PORT=$((BASE_PORT + 2))
NG_PORT=$((BASE_PORT + 3)) DM_PORT=$((BASE_PORT + 4)) BS_PORT=$((BASE_PORT + 5))
assert_ports_free "$HTTP_PORT" "$DNS_PORT" "$BE_PORT" "$NG_PORT" "$DM_PORT" "$BS_PORT"

D=$RUN/lifecycle
OUT=$RESULTS/lifecycle
rm -rf "$D" "$OUT"; mkdir -p "$D/www" "$OUT"
printf 'hello\n' >"$D/www/index.html"

# ---- 1. start-up ----
FG=() BG=()
for i in $(seq 1 "$STARTS"); do
  # foreground: launched and polled by one python process (no interpreter start-up timed)
  dir=$RUN/stack-life-fg-$i
  securely_write_conf "$dir" "$HTTP_PORT" "$DNS_PORT"
  read -r SEC_PID ms < <("$PYTHON" "$HERE/lifecycle_probe.py" start "$SECURELY_BIN/securelyctl" "$dir/securely.yaml" "$dir/securely.log" || true)
  [[ -n ${SEC_PID:-} ]] || die "could not start securely (see $dir/securely.log)"
  _BG_PIDS+=("$SEC_PID")
  SEC_DIR=$dir SEC_CONF=$dir/securely.yaml SEC_SOCK=$dir/run/control.sock
  [[ $ms == timeout ]] && die "the stack did not become ready within 30 s (see $dir/securely.log)"
  FG+=("$ms")
  securely_track_daemons
  securely_stop

  # -d: the foreground process returns once every daemon is ready
  dir=$RUN/stack-life-d-$i
  securely_write_conf "$dir" "$HTTP_PORT" "$DNS_PORT" "error_log: $dir/securely.log"
  t0=$(now_ns)
  if SECURELY_LOG=${SECURELY_LOG:-warn} "$SECURELY_BIN/securely" -d -c "$dir/securely.yaml" >"$dir/foreground.log" 2>&1; then
    BG+=("$(ms_since "$t0")")
  else
    log "securely -d exited non-zero: $(cat "$dir/foreground.log")"
  fi
  SEC_PID=$(cat "$dir/run/securely.pid" 2>/dev/null || true)
  [[ -n $SEC_PID ]] || die "securely -d wrote no pid file ($dir/run/securely.pid)"
  _BG_PIDS+=("$SEC_PID")
  SEC_DIR=$dir SEC_CONF=$dir/securely.yaml SEC_SOCK=$dir/run/control.sock
  securely_track_daemons
  securely_stop
  log "start $i: foreground (status polled every 5 ms) ${FG[-1]} ms, -d ${BG[-1]:-failed} ms"
done
echo "start_fg_ms ${FG[*]}" >"$OUT/raw.txt"
echo "start_d_ms ${BG[*]}" >>"$OUT/raw.txt"

# ---- 2. idle RSS ----
"$PYTHON" -m http.server "$BE_PORT" --bind $HOST --directory "$D/www" >"$RUN/life-backend.log" 2>&1 &
BE_PID=$!; _BG_PIDS+=("$BE_PID")
wait_tcp $HOST "$BE_PORT"
securely_start life "$HTTP_PORT" "$DNS_PORT"
sctl site:link life "$HOST:$BE_PORT" >&2
sleep "$IDLE_WAIT"
declare -A RSS
RSS[supervisor]=$(rss_kb "$SEC_PID")
for d in proxyd dnsd queued; do RSS[$d]=$(rss_kb "$(securely_daemon_pid $d)"); done
RSS_TOTAL=$((RSS[supervisor] + RSS[proxyd] + RSS[dnsd] + RSS[queued]))
echo "rss_kb supervisor=${RSS[supervisor]} proxyd=${RSS[proxyd]} dnsd=${RSS[dnsd]} queued=${RSS[queued]} total=$RSS_TOTAL" >>"$OUT/raw.txt"

# peers, idle, for scale
mkdir -p "$D/nginx"
cat >"$D/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $D/nginx/nginx.pid;
error_log $D/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $D/nginx/body; proxy_temp_path $D/nginx/proxy;
  fastcgi_temp_path $D/nginx/fastcgi; uwsgi_temp_path $D/nginx/uwsgi; scgi_temp_path $D/nginx/scgi;
  upstream backend { server $HOST:$BE_PORT; keepalive 128; }
  server { listen $HOST:$NG_PORT; location / { proxy_pass http://backend; } }
}
EOF
start_bg life-nginx nginx -e "$D/nginx/error.log" -p "$D/nginx" -c "$D/nginx/nginx.conf" -g 'daemon off; user root;'
start_bg life-dnsmasq dnsmasq -k --port="$DM_PORT" --listen-address=$HOST --bind-interfaces --no-resolv --no-hosts \
  --address=/test/127.0.0.1 --local=/test/ --pid-file= --log-facility="$D/dnsmasq.log"
mkdir -p "$D/binlog"
start_bg life-beanstalkd beanstalkd -l $HOST -p "$BS_PORT" -b "$D/binlog" -f 0
wait_tcp $HOST "$NG_PORT"; wait_tcp $HOST "$BS_PORT"
sleep "$IDLE_WAIT"
NG_MASTER=$(cat "$RUN/life-nginx.pid")
mapfile -t NG_ALL < <(echo "$NG_MASTER"; pgrep -P "$NG_MASTER" || true)
PEER_RSS="nginx=$(rss_kb "${NG_ALL[@]}") dnsmasq=$(rss_kb "$(cat "$RUN/life-dnsmasq.pid")") beanstalkd=$(rss_kb "$(cat "$RUN/life-beanstalkd.pid")")"
echo "peer_rss_kb $PEER_RSS" >>"$OUT/raw.txt"
stop_pids "$NG_MASTER" "$(cat "$RUN/life-dnsmasq.pid")" "$(cat "$RUN/life-beanstalkd.pid")"
log "idle RSS (KiB): supervisor=${RSS[supervisor]} proxyd=${RSS[proxyd]} dnsd=${RSS[dnsd]} queued=${RSS[queued]} total=$RSS_TOTAL; peers: $PEER_RSS"

# ---- 3. recovery after SIGKILL ----
declare -A PROBE=(
  [proxyd]="curl -s --max-time 5 -H 'Host: life.test' http://$HOST:$HTTP_PORT/"
  [dnsd]="dig @$HOST -p $DNS_PORT foo.test A +short +tries=1 +time=1"
  [queued]="'$SECURELY_BIN/securelyctl' --socket '$SEC_SOCK' queue:stats"
)
declare -A EXPECT=([proxyd]=hello [dnsd]=127.0.0.1 [queued]=-)
probe() { # DAEMON -> 0 when its real service answers
  local out
  out=$(bash -c "${PROBE[$1]}" 2>/dev/null) || return 1
  [[ ${EXPECT[$1]} == - || $out == "${EXPECT[$1]}" ]]
}
for d in proxyd dnsd queued; do probe "$d" || die "$d does not answer before the test"; done

declare -A SERVE READY
for round in $(seq 1 "$RECOVERIES"); do
  for d in proxyd dnsd queued; do
    # wait until this instance has been up STABLE_S (backoff back at its first step)
    for ((w = 0; w < 400; w++)); do
      up=$(securely_field "$d" uptime_ms)
      awk -v u="${up:-0}" -v s="$STABLE_S" 'BEGIN{exit !(u >= s * 1000)}' && break
      sleep 0.1
    done
    pid=$(securely_daemon_pid "$d")
    read -r serve ready failed newpid < <("$PYTHON" "$HERE/lifecycle_probe.py" recover "$SECURELY_BIN/securelyctl" "$SEC_SOCK" "$d" "$pid" "${EXPECT[$d]}" "${PROBE[$d]}" || true)
    [[ -n ${newpid:-} ]] || die "$d did not recover after SIGKILL (see $SEC_DIR/securely.log)"
    securely_track_daemons
    SERVE[$d]+="$serve " READY[$d]+="$ready "
    log "round $round: $d SIGKILLed (pid $pid): serving again after $serve ms ($failed failed probes), ready in status after $ready ms, new pid $newpid"
  done
done
for d in proxyd dnsd queued; do echo "recovery_$d serve_ms ${SERVE[$d]} ready_ms ${READY[$d]}" >>"$OUT/raw.txt"; done

# ---- 4. securelyctl restart ----
declare -A RESTART
for d in proxyd dnsd queued; do
  t0=$(now_ns)
  if sctl restart "$d" >&2; then RESTART[$d]=$(ms_since "$t0"); else RESTART[$d]=failed; fi
  probe "$d" || log "WARNING: $d does not answer right after 'securelyctl restart $d'"
  securely_track_daemons
done
echo "restart_ms proxyd=${RESTART[proxyd]} dnsd=${RESTART[dnsd]} queued=${RESTART[queued]}" >>"$OUT/raw.txt"
sctl status >"$OUT/status-after.txt" 2>&1 || true
cp "$SEC_DIR/securely.log" "$OUT/securely.log"

# ---- summary ----
{
  echo "# lifecycle, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| measure | median | all runs |"
  echo "|---|---|---|"
  echo "| start to all ready, foreground + status poll (ms) | $(median "${FG[@]}") | ${FG[*]} |"
  if ((${#BG[@]})); then
    echo "| start to all ready, \`securely -d\` returns (ms) | $(median "${BG[@]}") | ${BG[*]} |"
  fi
  for d in proxyd dnsd queued; do
    # shellcheck disable=SC2086
    echo "| $d: SIGKILL to serving again (ms) | $(median ${SERVE[$d]}) | ${SERVE[$d]}|"
  done
  for d in proxyd dnsd queued; do
    # shellcheck disable=SC2086
    echo "| $d: SIGKILL to ready in status (ms) | $(median ${READY[$d]}) | ${READY[$d]}|"
  done
  for d in proxyd dnsd queued; do
    echo "| \`securelyctl restart $d\` (ms) | ${RESTART[$d]} | |"
  done
  echo
  echo "| idle RSS (MiB) | supervisor | proxyd | dnsd | queued | whole stack |"
  echo "|---|---|---|---|---|---|"
  awk -v s="${RSS[supervisor]}" -v p="${RSS[proxyd]}" -v d="${RSS[dnsd]}" -v q="${RSS[queued]}" -v t="$RSS_TOTAL" \
    'BEGIN{printf "| securely | %.1f | %.1f | %.1f | %.1f | %.1f |\n", s/1024, p/1024, d/1024, q/1024, t/1024}'
  echo
  echo "peers idle, for scale (MiB): $(for kv in $PEER_RSS; do awk -v k="${kv%%=*}" -v v="${kv##*=}" 'BEGIN{printf "%s %.1f; ", k, v/1024}'; done)(nginx = master + 1 worker)"
  echo
  echo "restarts counted by the supervisor: $(sctl status --json | "$PYTHON" -c 'import json,sys; print(", ".join("%s=%s" % (d["name"], d["restarts"]) for d in json.load(sys.stdin)["daemons"]))')"
} | tee "$OUT/summary.md"
