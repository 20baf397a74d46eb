# shellcheck shell=bash
# Shared helpers of Securely's benchmarks. Source it, do not run it.
#
# Every process started here (peers through start_bg, Securely stacks through
# securely_start) listens on 127.0.0.1 only, is recorded by PID and is stopped by PID on
# exit (SIGTERM, then SIGKILL after a few seconds). Scratch goes under
# ${TMPDIR:-/tmp}/securely-bench (BENCH_DIR), results under $BENCH_DIR/results.
#
# Knobs common to every script:
#   SECURELY_BIN  directory of the release binaries   (default: <repo>/target/release)
#   BENCH_DIR     scratch and results                 (default: ${TMPDIR:-/tmp}/securely-bench)
#   REPEATS       interleaved repeats                 (default: 3)

BENCH_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_HOME/.." && pwd)
SECURELY_BIN=${SECURELY_BIN:-$REPO_ROOT/target/release}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/securely-bench}
RUN=${RUN:-$BENCH_DIR/run}
RESULTS=${RESULTS:-$BENCH_DIR/results}
REPEATS=${REPEATS:-3}
HZ=$(getconf CLK_TCK)
# the interpreter itself, not a version manager's shim (pyenv's costs ~0.2 s a call)
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)}
mkdir -p "$RUN" "$RESULTS"

_BG_PIDS=()
_SEC_CHILD_PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need CMD... : fail early when a tool is missing
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "$c is not installed (see bench/README.md)"
  done
}

# need_securely: the release binaries exist
need_securely() {
  local b
  for b in securely securelyctl securely-proxyd securely-dnsd securely-queued "$@"; do
    [[ -x $SECURELY_BIN/$b ]] || die "$SECURELY_BIN/$b is missing: run 'cargo build --release --workspace'"
  done
}

# start_bg NAME CMD...   -> starts CMD in the background, output to $RUN/NAME.log, records its PID
start_bg() {
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  local pid=$!
  _BG_PIDS+=("$pid")
  echo "$pid" >"$RUN/$name.pid"
  log "started $name pid=$pid: $*"
}

# track_daemon PID : a daemon a supervisor started; stopped on exit if its supervisor did not
track_daemon() { _SEC_CHILD_PIDS+=("$1"); }

alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# stop_pids PID... : SIGTERM, wait up to 5 s, then SIGKILL what is left
stop_pids() {
  local pid i left
  for pid in "$@"; do
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for ((i = 0; i < 100; i++)); do
    left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left)) || break
    sleep 0.05
  done
  for pid in "$@"; do
    if alive "$pid"; then
      log "pid $pid still alive after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  _forget "$@"
}

# _forget PID... : drop stopped pids from the lists stopped on exit (a pid may be reused)
_forget() {
  local keep=() p q drop
  for p in "${_BG_PIDS[@]}"; do
    drop=0; for q in "$@"; do [[ $p == "$q" ]] && drop=1; done
    ((drop)) || keep+=("$p")
  done
  _BG_PIDS=("${keep[@]}")
  keep=()
  for p in "${_SEC_CHILD_PIDS[@]}"; do
    drop=0; for q in "$@"; do [[ $p == "$q" ]] && drop=1; done
    ((drop)) || keep+=("$p")
  done
  _SEC_CHILD_PIDS=("${keep[@]}")
}

# daemon pids still alive and still ours (comm securely-*)
_live_daemons() {
  local p
  for p in "$@"; do
    alive "$p" && [[ $(cat "/proc/$p/comm" 2>/dev/null) == securely-* ]] && echo "$p"
  done
  return 0
}

stop_all() {
  # supervisors first (they stop their daemons), then any daemon left behind
  if ((${#_BG_PIDS[@]})); then stop_pids "${_BG_PIDS[@]}"; fi
  if ((${#_SEC_CHILD_PIDS[@]})); then
    local left=()
    mapfile -t left < <(_live_daemons "${_SEC_CHILD_PIDS[@]}")
    if ((${#left[@]})); then log "daemons left behind: ${left[*]}"; stop_pids "${left[@]}"; fi
  fi
  _BG_PIDS=() _SEC_CHILD_PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# wait_tcp HOST PORT [TIMEOUT_S]
wait_tcp() {
  local host=$1 port=$2 t=${3:-10} i
  for ((i = 0; i < t * 20; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "timeout waiting for $host:$port"
}

# refuse anything that is not loopback
assert_loopback() {
  case "$1" in
    127.*|::1|localhost) ;;
    *) echo "refusing non-loopback target $1" >&2; exit 2 ;;
  esac
}

# port_free PORT : nothing listens on 127.0.0.1:PORT (TCP or UDP)
port_free() {
  ! ss -Hltun "( sport = :$1 )" 2>/dev/null | grep -q .
}
assert_ports_free() {
  local p
  for p in "$@"; do port_free "$p" || die "port $p is in use on this machine; choose other ports (see the script's knobs)"; done
}

now_ns() { date +%s%N; }
# ms_since T0_NS -> milliseconds since T0 with 1 decimal
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN{printf "%.1f", (b-a)/1e6}'; }

# cpu_ticks PID : utime+stime (every thread) of PID and of its direct children (nginx workers)
cpu_ticks() {
  local pids=("$1") p t=0
  mapfile -t -O 1 pids < <(pgrep -P "$1" || true)
  for p in "${pids[@]}"; do
    [[ -r /proc/$p/stat ]] || continue
    # fields after the ")": state=1 ... utime=12 stime=13
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}
# ticks_to_s A B -> seconds between two cpu_ticks readings
ticks_to_s() { awk -v a="$1" -v b="$2" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}'; }

# rss_kb PID... : sum of VmRSS in KiB
rss_kb() {
  local p t=0 v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# ---------------------------------------------------------------------------------------
# A Securely stack from $SECURELY_BIN, in a temp dir under $RUN.
#
# securely_start NAME HTTP_PORT DNS_PORT [EXTRA_YAML]
#   Writes $RUN/stack-NAME/securely.yaml (runtime_dir, data_dir beside it), starts
#   `securely -c FILE` in the background (log: $RUN/stack-NAME/securely.log), waits until
#   `securelyctl status --json` shows all three daemons ready. Sets:
#     SEC_DIR SEC_CONF SEC_SOCK (control socket) SEC_PID (supervisor) SEC_READY_MS
# securely_stop : SIGTERM the supervisor (graceful), SIGKILL what is left after 5 s.
# ---------------------------------------------------------------------------------------
SEC_DIR='' SEC_CONF='' SEC_SOCK='' SEC_PID='' SEC_READY_MS=''
SECURELY_WRAP=()   # a prefix for the supervisor's command line, e.g. (taskset -c 0)
SECURELY_PROXY_YAML=''   # more lines of the `proxy:` section, e.g. '  tls_listen: [...]'

securely_write_conf() {
  local dir=$1 http_port=$2 dns_port=$3 extra=${4:-}
  rm -rf "$dir"; mkdir -p "$dir"
  cat >"$dir/securely.yaml" <<EOF
version: 1
runtime_dir: $dir/run
data_dir: $dir/data
grace_period_seconds: 2
graceful_shutdown_timeout_seconds: 1
proxy:
  listen: ["127.0.0.1:$http_port"]
${SECURELY_PROXY_YAML}
dns:
  listen: ["127.0.0.1:$dns_port"]
  tld: test
  addresses: ["127.0.0.1", "::1"]
  upstreams: []
EOF
  [[ -n $extra ]] && printf '%s\n' "$extra" >>"$dir/securely.yaml"
  return 0
}

securely_start() {
  local name=$1 http_port=$2 dns_port=$3 extra=${4:-}
  need_securely
  SEC_DIR=$RUN/stack-$name
  SEC_CONF=$SEC_DIR/securely.yaml
  SEC_SOCK=$SEC_DIR/run/control.sock
  securely_write_conf "$SEC_DIR" "$http_port" "$dns_port" "$extra"
  "$SECURELY_BIN/securely" -t -c "$SEC_CONF" >"$SEC_DIR/check.log" 2>&1 \
    || die "securely -t rejected $SEC_CONF: $(cat "$SEC_DIR/check.log")"
  local t0; t0=$(now_ns)
  SECURELY_LOG=${SECURELY_LOG:-warn} "${SECURELY_WRAP[@]}" "$SECURELY_BIN/securely" -c "$SEC_CONF" >"$SEC_DIR/securely.log" 2>&1 &
  SEC_PID=$!
  _BG_PIDS+=("$SEC_PID")
  log "started securely ($name) pid=$SEC_PID, http 127.0.0.1:$http_port, dns 127.0.0.1:$dns_port"
  if ! securely_wait_ready 30; then
    log "--- $SEC_DIR/securely.log (tail) ---"; tail -40 "$SEC_DIR/securely.log" >&2
    die "the stack $name did not become ready"
  fi
  SEC_READY_MS=$(awk -v a="$t0" -v b="$SEC_READY_NS" 'BEGIN{printf "%.1f", (b-a)/1e6}')
  securely_track_daemons
  log "securely ($name) ready after ${SEC_READY_MS} ms: $(securely_pids_line)"
}

# sctl ARGS... : securelyctl against the current stack
sctl() { "$SECURELY_BIN/securelyctl" --socket "$SEC_SOCK" "$@"; }

# securely_wait_ready TIMEOUT_S : polls `status --json` (one python process, ~every 10 ms)
# until all three daemons are ready; sets SEC_READY_NS (epoch ns of the first ready reply).
securely_wait_ready() {
  local out
  out=$("$PYTHON" - "$SECURELY_BIN/securelyctl" "$SEC_SOCK" "${1:-30}" "${2:-}" <<'EOF'
import json, subprocess, sys, time
ctl, sock, timeout, exclude = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
# exclude: "name=pid" -> that daemon must be ready with another pid
ex = dict(x.split("=") for x in exclude.split(",") if x)
end = time.time() + timeout
while time.time() < end:
    p = subprocess.run([ctl, "--socket", sock, "status", "--json"], capture_output=True)
    if p.returncode == 0:
        try:
            d = json.loads(p.stdout)["daemons"]
        except Exception:
            d = []
        if len(d) == 3 and all(x["state"] == "ready" and str(x["pid"]) != ex.get(x["name"]) for x in d):
            print(time.time_ns()); sys.exit(0)
    time.sleep(0.01)
sys.exit(1)
EOF
) || return 1
  SEC_READY_NS=$out
}

# securely_status : status --json of the current stack
securely_status() { sctl status --json; }

# securely_daemon_pid NAME : the pid of daemon NAME (proxyd, dnsd, queued); empty if none
securely_daemon_pid() {
  securely_status | "$PYTHON" -c '
import json, sys
for d in json.load(sys.stdin)["daemons"]:
    if d["name"] == sys.argv[1] and d["pid"]:
        print(d["pid"])' "$1"
}

# securely_field NAME FIELD : a field of daemon NAME's status entry
securely_field() {
  securely_status | "$PYTHON" -c '
import json, sys
for d in json.load(sys.stdin)["daemons"]:
    if d["name"] == sys.argv[1]:
        print(d.get(sys.argv[2]))' "$1" "$2"
}

# securely_all_pids : supervisor pid then each daemon's pid
securely_all_pids() {
  echo "$SEC_PID"
  securely_status | "$PYTHON" -c '
import json, sys
for d in json.load(sys.stdin)["daemons"]:
    if d["pid"]:
        print(d["pid"])'
}
securely_pids_line() {
  securely_status | "$PYTHON" -c '
import json, sys
j = json.load(sys.stdin)
print(" ".join("%s=%s" % (d["name"], d["pid"]) for d in j["daemons"]))'
}

# securely_track_daemons : record the daemons' current pids so they are stopped on exit too
securely_track_daemons() {
  local p
  while read -r p; do
    [[ -n $p && $p != "$SEC_PID" ]] && track_daemon "$p"
  done < <(securely_all_pids)
  return 0
}

securely_stop() {
  [[ -n $SEC_PID ]] || return 0
  local daemons=() left=()
  mapfile -t daemons < <(securely_all_pids 2>/dev/null | tail -n +2)
  stop_pids "$SEC_PID"
  if ((${#daemons[@]})); then
    mapfile -t left < <(_live_daemons "${daemons[@]}")
    if ((${#left[@]})); then log "daemons outlived the supervisor: ${left[*]}"; stop_pids "${left[@]}"; fi
    _forget "${daemons[@]}"
  fi
  SEC_PID=''
}

# log_digest FILE : the stack's warnings/errors/panics, counted by message (timestamps and
# pids stripped), most frequent first; prints nothing when there are none
log_digest() {
  grep -aiE ' (WARN|ERROR) |panic' "$1" 2>/dev/null \
    | sed -E 's/^([a-z-]+)\[[0-9]+\]: [0-9T:.Z-]+ /\1: /' | sort | uniq -c | sort -rn | head -"${2:-8}" || true
}

# report_log FILE : log_digest to stderr, under a heading, when there is something
report_log() {
  local digest
  digest=$(log_digest "$1")
  [[ -z $digest ]] && return 0
  log "the stack logged warnings/errors (count, message; full log: $1):"
  printf '%s\n' "$digest" | cut -c1-400 >&2
}

# median of the numbers given as arguments
median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2}}'
}
