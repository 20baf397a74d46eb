#!/usr/bin/env bash
# Durable job queue: securely-queued vs beanstalkd, in the same run, interleaved.
#
#   securely    : a Securely stack (fresh data_dir each repeat); gRPC on <run>/queued.sock
#   bs-fsync    : beanstalkd -b DIR -f 0   binlog, fsync after every write  127.0.0.1:$BASE_PORT
#   bs-nofsync  : beanstalkd -b DIR -F     binlog, never fsync             127.0.0.1:$BASE_PORT+1
# The client is the same for all: securely-queue-load (bench/src/queue_load.rs), N pushes
# then N reserve+ack (beanstalkd: put, then reserve-with-timeout + delete), each caller
# strictly request/response. "seq": one caller on one connection, as the peers'
# bs_client.py. "cC" (when CONCURRENCY > 1): C callers at once (queued: C streams on one
# HTTP/2 connection; beanstalkd: C connections). Each repeat starts fresh servers and
# probes the disk's fsync rate in the same directory first (fsync_probe.py): durable
# figures follow it. The order of the servers rotates between repeats.
#
# Env knobs: REPEATS=3 N=5000 SIZE=64 CONCURRENCY=16 (0 or 1: sequential only)
#            BASE_PORT=21300 CLIENT_TIMEOUT=120 (seconds per client run)
#            MODE=unpinned|pinned (pinned: servers on CPU0, client on CPU1)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

N=${N:-5000}
SIZE=${SIZE:-64}
CONCURRENCY=${CONCURRENCY:-16}
BASE_PORT=${BASE_PORT:-21300}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-120}
MODE=${MODE:-unpinned}
HOST=127.0.0.1
assert_loopback $HOST
need beanstalkd python3 ss timeout taskset du
need_securely securely-queue-load
LOAD=$SECURELY_BIN/securely-queue-load
if [[ $MODE == pinned ]]; then SRV_PIN=(taskset -c 0); CLI_PIN=(taskset -c 1); else SRV_PIN=(); CLI_PIN=(); fi

BS_F0_PORT=$BASE_PORT BS_F_PORT=$((BASE_PORT + 1)) SEC_HTTP_PORT=$((BASE_PORT + 2)) SEC_DNS_PORT=$((BASE_PORT + 3))
assert_ports_free "$BS_F0_PORT" "$BS_F_PORT" "$SEC_HTTP_PORT" "$SEC_DNS_PORT"

D=$RUN/queue
OUT=$RESULTS/queue-$MODE
rm -rf "$D" "$OUT"; mkdir -p "$D" "$OUT"

MODES=(seq)
((CONCURRENCY > 1)) && MODES+=("c$CONCURRENCY")

run_client() { # SERVER MODE REPEAT
  local server=$1 mode=$2 r=$3 f conc=1 target=()
  f=$OUT/$server-$mode-r$r
  [[ $mode == c* ]] && conc=${mode#c}
  case $server in
    securely) target=(--socket "$SEC_DIR/run/queued.sock") ;;
    bs-fsync) target=(--beanstalkd "$HOST:$BS_F0_PORT") ;;
    bs-nofsync) target=(--beanstalkd "$HOST:$BS_F_PORT") ;;
  esac
  if timeout "$CLIENT_TIMEOUT" "${CLI_PIN[@]}" "$LOAD" "${target[@]}" -n "$N" --size "$SIZE" -C "$conc" \
       --queue "bench-$mode-r$r" --label "$server-$mode" >"$f.json" 2>"$f.err"; then
    log "run $r $server $mode: $("$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1])); print("push %.0f jobs/s (p99 %.2f ms), reserve+ack %.0f jobs/s (p99 %.2f ms)" % (j["push_jobs_per_s"], j["push_p99_ms"], j["reserve_ack_jobs_per_s"], j["reserve_ack_p99_ms"]))' "$f.json")"
  else
    local rc=$?
    log "run $r $server $mode FAILED (exit $rc$( ((rc == 124)) && echo ": timed out after ${CLIENT_TIMEOUT}s")): $(tail -3 "$f.err" | tr '\n' ' ')"
    echo "{\"label\": \"$server-$mode\", \"failed\": $rc}" >"$f.json"
  fi
}

for r in $(seq 1 "$REPEATS"); do
  # the disk's fsync rate right now, in the directory the servers write to
  "$PYTHON" "$HERE/fsync_probe.py" "$D" 1000 >"$OUT/fsync-r$r.json"
  log "repeat $r: disk $("$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%d append+fsync/s (p50 %.2f ms, p99 %.2f ms), %d overwrite+fdatasync/s" % (j["fsyncs_per_s"], j["p50_ms"], j["p99_ms"], j["overwrite_fdatasyncs_per_s"]))' "$OUT/fsync-r$r.json")"

  rm -rf "$D/binlog-f0" "$D/binlog-F"; mkdir -p "$D/binlog-f0" "$D/binlog-F"
  start_bg bs-fsync "${SRV_PIN[@]}" beanstalkd -l $HOST -p "$BS_F0_PORT" -b "$D/binlog-f0" -f 0
  BS_F0_PID=$(cat "$RUN/bs-fsync.pid")
  start_bg bs-nofsync "${SRV_PIN[@]}" beanstalkd -l $HOST -p "$BS_F_PORT" -b "$D/binlog-F" -F
  BS_F_PID=$(cat "$RUN/bs-nofsync.pid")
  SECURELY_WRAP=("${SRV_PIN[@]}")
  securely_start "queue-r$r" "$SEC_HTTP_PORT" "$SEC_DNS_PORT"
  QPID=$(securely_daemon_pid queued)
  wait_tcp $HOST "$BS_F0_PORT"; wait_tcp $HOST "$BS_F_PORT"

  # rotate the order of the servers between repeats
  servers=(securely bs-fsync bs-nofsync)
  k=$(((r - 1) % 3))
  servers=("${servers[@]:k}" "${servers[@]:0:k}")
  for mode in "${MODES[@]}"; do
    for s in "${servers[@]}"; do run_client "$s" "$mode" "$r"; done
  done

  q_after=$(securely_daemon_pid queued || true)
  if [[ $q_after != "$QPID" ]]; then
    log "WARNING: queued pid changed during repeat $r: $QPID -> ${q_after:-none}"
    echo "repeat $r: queued restarted ($QPID -> ${q_after:-none})" >>"$OUT/restarts.txt"
  fi
  sctl queue:stats >"$OUT/securely-queue-stats-r$r.txt" 2>&1 || true
  {
    echo "repeat $r: securely data_dir $(du -sh "$SEC_DIR/data" | cut -f1), beanstalkd binlogs -f 0: $(du -sh "$D/binlog-f0" | cut -f1), -F: $(du -sh "$D/binlog-F" | cut -f1)"
  } >>"$OUT/disk-usage.txt"
  cp "$SEC_DIR/securely.log" "$OUT/securely-r$r.log"
  securely_stop
  stop_pids "$BS_F0_PID" "$BS_F_PID"
done

for f in "$OUT"/securely-r*.log; do report_log "$f"; done

{
  echo "# queue: MODE=$MODE N=$N SIZE=$SIZE CONCURRENCY=$CONCURRENCY, $REPEATS repeats, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  "$PYTHON" "$HERE/summarize_queue.py" "$OUT"
  echo
  cat "$OUT/disk-usage.txt"
  [[ -f $OUT/restarts.txt ]] && cat "$OUT/restarts.txt"
  true
} | tee "$OUT/summary.md"
