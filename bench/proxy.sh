#!/usr/bin/env bash
# HTTP reverse proxy: securely-proxyd vs nginx, in the same run, interleaved.
#
#   backend  : nginx static "hello\n"                          127.0.0.1:$BASE_PORT
#   nginx    : nginx proxy_pass, upstream keepalive 128         127.0.0.1:$BASE_PORT+1
#   securely : a Securely stack, site "bench" -> the backend    127.0.0.1:$BASE_PORT+2
#              (its DNS listens on $BASE_PORT+3, unused here)
# wrk sends `Host: bench.test` to every target (so requests are byte-identical); each repeat
# runs direct (the backend alone, as a reference), nginx and securely, with a 2 s warm-up
# before each measured run, the order of the two proxies alternating between repeats.
# Besides wrk's figures it records each proxy's CPU time during the measured run (utime +
# stime of every thread, from /proc/PID/stat; nginx: master + workers; securely: the
# securely-proxyd process, whose pid comes from `securelyctl status --json`), giving CPU
# microseconds per request: on 2 shared cores the steadiest figure.
#
#
# SCHEME=https: the same backend behind TLS. nginx gets `listen ... ssl` with an ECDSA
# P-256 leaf for bench.test (and *.bench.test) signed by a throw-away CA, both made here
# with openssl; Securely gets `proxy.tls_listen` on $BASE_PORT+4, `securelyctl
# site:secure bench`, and serves the leaf its local CA mints. Each side is first checked
# with curl trusting only its own CA (`ca:export` for Securely). wrk then reaches
# https://bench.test:PORT/ (SNI bench.test; the name resolves to 127.0.0.1 through a
# hosts file bind-mounted over /etc/hosts in a private mount namespace of wrk's own, so
# root is needed) in two kinds of run per target and repeat:
#   keepalive: as for http (req/s over 64 kept-alive connections);
#   handshake: `-H 'Connection: close'`, a new TCP connection and a full TLS handshake
#              per request (wrk resumes no session): req/s = handshakes/s.
# wrk offers no ALPN, so both serve HTTP/1.1; both negotiate TLS 1.3 with X25519 (nginx
# 1.22 needs `ssl_protocols TLSv1.2 TLSv1.3` for that: its default stops at 1.2); what
# each negotiated goes to NAME-tls.txt.
# No `direct` runs (the backend speaks plain HTTP).
#
# Env knobs:
#   SCHEME=http|https
#   REPEATS=3 DURATION=10s CONNS=64 WRK_THREADS=2 (1 in pinned/split)
#   WORKERS=1      nginx worker_processes and proxyd `threads` (try WORKERS=2)
#   MODE=unpinned|pinned|split   as the peers' proxy_bench.sh:
#        pinned: backend + proxies on CPU0, wrk -t1 on CPU1
#        split:  proxies on CPU0, backend + wrk on CPU1
#   BASE_PORT=28080
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

MODE=${MODE:-unpinned}
SCHEME=${SCHEME:-http}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
BASE_PORT=${BASE_PORT:-28080}
HOST=127.0.0.1
assert_loopback "$HOST"
need wrk nginx curl python3 ss pgrep taskset
case $SCHEME in
  http) ;;
  https) need openssl unshare mount; ((EUID == 0)) || die "SCHEME=https needs root (wrk's private /etc/hosts)" ;;
  *) die "SCHEME must be http|https" ;;
esac
need_securely

case $MODE in
  pinned) BE_PIN=(taskset -c 0); SRV_PIN=(taskset -c 0); WRK_PIN=(taskset -c 1); WRK_THREADS=${WRK_THREADS:-1} ;;
  split)  BE_PIN=(taskset -c 1); SRV_PIN=(taskset -c 0); WRK_PIN=(taskset -c 1); WRK_THREADS=${WRK_THREADS:-1} ;;
  unpinned) BE_PIN=(); SRV_PIN=(); WRK_PIN=(); WRK_THREADS=${WRK_THREADS:-2} ;;
  *) die "MODE must be unpinned|pinned|split" ;;
esac

BE_PORT=$BASE_PORT NG_PORT=$((BASE_PORT + 1)) SEC_PORT=$((BASE_PORT + 2)) SEC_DNS_PORT=$((BASE_PORT + 3))
SEC_TLS_PORT=$((BASE_PORT + 4))
assert_ports_free "$BE_PORT" "$NG_PORT" "$SEC_PORT" "$SEC_DNS_PORT" "$SEC_TLS_PORT"

D=$RUN/proxy
OUT=$RESULTS/proxy-$MODE-w$WORKERS; [[ $SCHEME == https ]] && OUT+=-https
rm -rf "$D" "$OUT"; mkdir -p "$D"/{backend,nproxy,www,tls} "$OUT"
printf 'hello\n' >"$D/www/index.html"
chmod -R a+rX "$D"

nginx_common() {
  cat <<EOF
worker_processes $WORKERS;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
EOF
}
{ nginx_common "$D/backend"; cat <<EOF
  server {
    listen $HOST:$BE_PORT reuseport backlog=4096;
    root $D/www;
    location / { index index.html; }
  }
}
EOF
} >"$D/backend/nginx.conf"
# make_cert DIR: an ECDSA P-256 CA and a leaf for bench.test signed by it, shaped like
# the ones Securely's local CA makes (CA:TRUE pathlen:0 root; CA:FALSE serverAuth leaf)
make_cert() {
  local dir=$1
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 30 \
    -subj '/CN=bench CA' -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext 'basicConstraints=critical,CA:TRUE,pathlen:0' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=bench.test' \
    -keyout "$dir/leaf.key" -out "$dir/leaf.csr" 2>/dev/null
  printf '%s\n' 'subjectAltName=DNS:bench.test,DNS:*.bench.test' 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$dir/leaf.ext"
  openssl x509 -req -sha256 -days 30 -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -extfile "$dir/leaf.ext" -out "$dir/leaf.pem" 2>/dev/null
}
NG_LISTEN="listen $HOST:$NG_PORT reuseport backlog=4096;"
if [[ $SCHEME == https ]]; then
  make_cert "$D/tls"
  NG_LISTEN="listen $HOST:$NG_PORT ssl reuseport backlog=4096;
    server_name bench.test;
    ssl_certificate $D/tls/leaf.pem;
    ssl_certificate_key $D/tls/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3;"
  printf '%s bench.test\n' "$HOST" >"$D/tls/hosts"
fi
{ nginx_common "$D/nproxy"; cat <<EOF
  upstream backend { server $HOST:$BE_PORT; keepalive 128; keepalive_requests 1000000; }
  server {
    $NG_LISTEN
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
EOF
} >"$D/nproxy/nginx.conf"

# the backend always uses WORKERS workers too (as in the peers' script)
start_bg backend "${BE_PIN[@]}" nginx -e "$D/backend/error.log" -p "$D/backend" -c "$D/backend/nginx.conf" -g 'daemon off; user root;'
start_bg nproxy "${SRV_PIN[@]}" nginx -e "$D/nproxy/error.log" -p "$D/nproxy" -c "$D/nproxy/nginx.conf" -g 'daemon off; user root;'
wait_tcp $HOST "$BE_PORT"; wait_tcp $HOST "$NG_PORT"

# Securely: the supervisor (and so every daemon) pinned like the other proxies
SECURELY_WRAP=("${SRV_PIN[@]}")
[[ $SCHEME == https ]] && SECURELY_PROXY_YAML="  tls_listen: [\"$HOST:$SEC_TLS_PORT\"]"
securely_start proxy "$SEC_PORT" "$SEC_DNS_PORT" "threads: $WORKERS"
sctl site:link bench "$HOST:$BE_PORT" >&2

plain=("$BE_PORT" "$SEC_PORT"); [[ $SCHEME == http ]] && plain+=("$NG_PORT")
for p in "${plain[@]}"; do
  body=$(curl -s --max-time 2 -H 'Host: bench.test' "http://$HOST:$p/")
  [[ $body == hello ]] || die "port $p returned '$body'"
done
declare -A URL=([direct]=http://$HOST:$BE_PORT/ [nginx]=http://$HOST:$NG_PORT/ [securely]=http://$HOST:$SEC_PORT/)
WRK=("${WRK_PIN[@]}" wrk)
if [[ $SCHEME == https ]]; then
  sctl site:secure bench >&2
  sctl ca:export >"$D/tls/securely-ca.pem"
  URL=([nginx]=https://bench.test:$NG_PORT/ [securely]=https://bench.test:$SEC_TLS_PORT/)
  for name in nginx securely; do
    ca=$D/tls/ca.pem; [[ $name == securely ]] && ca=$D/tls/securely-ca.pem
    port=${URL[$name]##*:}; port=${port%/}
    body=$(curl -s --max-time 5 --cacert "$ca" --resolve "bench.test:$port:$HOST" "${URL[$name]}") \
      || die "$name: curl trusting only its CA failed for ${URL[$name]}"
    [[ $body == hello ]] || die "$name returned '$body' over https"
    openssl s_client -connect "$HOST:$port" -servername bench.test -CAfile "$ca" </dev/null 2>/dev/null \
      | grep -E '^(New|Server Temp Key|Peer signature type|Verification)' >"$OUT/$name-tls.txt" || true
  done
  log "nginx and securely return 'hello' over https://bench.test, each trusted by its own CA only"
  # wrk resolves bench.test through a hosts file of its own (SNI and Host: bench.test)
  WRK=("${WRK_PIN[@]}" unshare --mount -- sh -c 'mount --bind "$0" /etc/hosts && exec wrk "$@"' "$D/tls/hosts")
fi
log "the backend and securely (and nginx over http) return 'hello' for Host: bench.test"
curl -s -o /dev/null -D - -H 'Host: bench.test' "http://$HOST:$SEC_PORT/" >"$OUT/securely-headers.txt"

BPID=$(cat "$RUN/backend.pid") NPID=$(cat "$RUN/nproxy.pid")

run_one() { # NAME REPEAT [KIND: keepalive|handshake, https only]
  local name=$1 r=$2 kind=${3:-} f spid pid_after b0 b1 s0 s1 tw kids=() extra=()
  f=$OUT/$name${kind:+-$kind}-r$r.txt
  [[ $kind == handshake ]] && extra=(-H 'Connection: close')
  case $name in
    direct) spid=$BPID ;;
    nginx) spid=$NPID ;;
    securely) spid=$(securely_daemon_pid proxyd) ;;
  esac
  "${WRK[@]}" -t"$WRK_THREADS" -c"$CONNS" -d2s -H 'Host: bench.test' "${extra[@]}" "${URL[$name]}" >/dev/null
  b0=$(cpu_ticks "$BPID"); s0=$(cpu_ticks "$spid")
  "${WRK[@]}" -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency -H 'Host: bench.test' "${extra[@]}" \
    "${URL[$name]}" >"$f" 2>&1 || log "wrk exited non-zero against $name (see $f)"
  b1=$(cpu_ticks "$BPID"); s1=$(cpu_ticks "$spid")
  {
    echo "backend_cpu_s=$(ticks_to_s "$b0" "$b1")"
    echo "server_cpu_s=$(ticks_to_s "$s0" "$s1")"
    mapfile -t kids < <(pgrep -P "$spid" || true)
    echo "server_rss_kb=$(rss_kb "$spid" "${kids[@]}")"
    # upstream keepalive check: TIME-WAIT sockets towards the backend (near 0 => reused)
    tw=$(ss -Htan state time-wait "( dport = :$BE_PORT )" | wc -l)
    echo "backend_time_wait=$tw"
  } >>"$f"
  if [[ $name == securely ]]; then
    pid_after=$(securely_daemon_pid proxyd || true)
    if [[ $pid_after != "$spid" ]]; then
      echo "proxyd_restarted=1 (pid $spid -> ${pid_after:-none})" >>"$f"
      log "WARNING: proxyd pid changed during the run: $spid -> ${pid_after:-none}"
      securely_track_daemons
    fi
  fi
  log "run $r $name${kind:+ $kind}: $(grep -E 'Requests/sec' "$f" | tr -s ' ') $(grep -E '^(Non-2xx|  Socket errors)' "$f" | tr -s ' ' | tr '\n' ' ')cpu=$(grep server_cpu_s "$f" | cut -d= -f2)s TIME-WAIT=$tw"
}

for r in $(seq 1 "$REPEATS"); do
  order=(nginx securely); ((r % 2)) || order=(securely nginx)
  if [[ $SCHEME == https ]]; then
    for name in "${order[@]}"; do run_one "$name" "$r" keepalive; run_one "$name" "$r" handshake; done
  else
    run_one direct "$r"
    for name in "${order[@]}"; do run_one "$name" "$r"; done
  fi
done

# anything proxyd logged (warnings and errors only unless SECURELY_LOG says otherwise)
cp "$SEC_DIR/securely.log" "$OUT/securely.log"
sctl status >"$OUT/securely-status.txt" 2>&1 || true
report_log "$OUT/securely.log"

{
  echo "# proxy: SCHEME=$SCHEME MODE=$MODE WORKERS=$WORKERS wrk -t$WRK_THREADS -c$CONNS -d$DURATION, $REPEATS repeats, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  "$PYTHON" "$HERE/summarize_wrk.py" "$OUT"
  echo
  digest=$(log_digest "$OUT/securely.log")
  [[ -n $digest ]] && printf '\nstack log, warnings/errors (count, message):\n```\n%s\n```\n' "$(cut -c1-300 <<<"$digest")"
  echo "securely stack restarts during the run: $(sctl status --json | "$PYTHON" -c 'import json,sys; print(", ".join("%s=%s" % (d["name"], d["restarts"]) for d in json.load(sys.stdin)["daemons"]))')"
} | tee "$OUT/summary.md"
