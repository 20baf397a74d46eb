#!/bin/bash
# Runs INSIDE the VM, as root, with systemd as PID 1 (started by securely-vm-runner.service
# from the 9p share that run.sh prepares). Installs the package under test, drives it with
# systemctl and securelyctl, and prints one line per check:
#   PASS <step> [details]      FAIL <step>: <why>
# Results also go to out/results.txt in the share, details to out/*.txt; the last line is
# "END <n-fail> failed". The share holds: debs/first.deb, debs/second.deb (a newer version
# of the same package), this script.
set -u
SHARE=$(dirname "$(readlink -f "$0")")
OUT=$SHARE/out
mkdir -p "$OUT"
RES=$OUT/results.txt
: >"$RES"
FIRST=$SHARE/debs/first.deb
SECOND=$SHARE/debs/second.deb
CONF=/etc/securely/securely.yaml
NFAIL=0
T_START=$(date +%s.%N)
export DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= SYSTEMD_COLORS=0 PAGER=cat

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
pass() { echo "PASS $1${2:+ ($2)}" | tee -a "$RES"; }
fail() {
  echo "FAIL $1: $2" | tee -a "$RES"
  NFAIL=$((NFAIL + 1))
  echo "    journal of securely.service since the step began:"
  journalctl -b -u securely.service --since "@${STEP_T0%.*}" -n 40 --no-pager -o short-monotonic 2>&1 | show
}
info() { echo "INFO: $*"; }
step() { STEP=$1; STEP_T0=$(now); echo "STEP $1 (t=$(secs "$T_START") s)"; }
took() { secs "$STEP_T0"; }
# A command's output, indented, into the log (the console and out/hook.log).
show() { sed 's/^/    | /'; }

ctl() {
  if [[ -f $CONF ]]; then timeout 40 securelyctl -c "$CONF" "$@"; else timeout 40 securelyctl "$@"; fi
}
status_json() { ctl status --json 2>/dev/null; }
# "name=pid" lines: supervisor first, then each daemon.
pids_of() { jq -r '"supervisor=\(.supervisor.pid)", (.daemons[] | "\(.name)=\(.pid)")' <<<"$1"; }
pid_in() { sed -n "s/^$1=//p" <<<"$2"; }
main_pid() { systemctl show -p MainPID --value securely.service; }
all_ready() {
  local j
  j=$(status_json) || return 1
  jq -e '(.daemons | length) == 3 and all(.daemons[]; .state == "ready" and .pid != null)' \
    <<<"$j" >/dev/null
}
# wait_until SECONDS CMD...: polls CMD every 0.25 s.
wait_until() {
  local limit=$1 t0
  shift
  t0=$(date +%s)
  while (($(date +%s) - t0 < limit)); do
    "$@" && return 0
    sleep 0.25
  done
  "$@"
}
# Waits until DAEMON is ready on a pid other than OLD.
daemon_replaced() {
  local j
  j=$(status_json) || return 1
  jq -e --arg n "$1" --argjson old "$2" \
    '.daemons[] | select(.name == $n) | .state == "ready" and .pid != null and .pid != $old' \
    <<<"$j" >/dev/null
}
all_replaced() {   # all_replaced "<pids_of before>"
  local j d old
  all_ready || return 1
  j=$(status_json) || return 1
  for d in proxyd dnsd queued; do
    old=$(pid_in "$d" "$1")
    [[ $(pid_in "$d" "$(pids_of "$j")") != "$old" ]] || return 1
  done
}
http_code() {   # http_code HOST [PATH] -> prints the status code, body in $OUT/body
  curl -s -o "$OUT/body" -w '%{http_code}' --max-time 10 -H "Host: $1" "http://$HTTP${2:-/}"
}
served() { [[ $(http_code app.test) == 200 ]] && grep -q "$MARKER" "$OUT/body"; }
dig_short() { dig @"$DNS_IP" -p "$DNS_PORT" +short +time=3 +tries=2 "$@" 2>&1; }
securely_procs() { pgrep -a -x 'securely|securely-proxyd|securely-dnsd|securely-queued'; }

echo "guest: $(uname -r), $(systemctl --version | head -1), pid1=$(cat /proc/1/comm)"
RESOLV_BEFORE="$(readlink /etc/resolv.conf) $(sha256sum </etc/resolv.conf 2>/dev/null | cut -c1-16)"
info "resolv.conf before install: $RESOLV_BEFORE"

# ---------------------------------------------------------------- install
step install
PKG=$(dpkg-deb -f "$FIRST" Package)
V1=$(dpkg-deb -f "$FIRST" Version)
V2=$(dpkg-deb -f "$SECOND" Version 2>/dev/null || echo none)
info "package $PKG: first $V1, upgrade to $V2"
timeout 300 dpkg -i "$FIRST" >"$OUT/dpkg-install.txt" 2>&1
rc=$?
show <"$OUT/dpkg-install.txt"
state=$(dpkg-query -W -f='${Status} ${Version}' "$PKG" 2>&1)
if [[ $rc == 0 && $state == "install ok installed $V1" ]]; then
  pass install "dpkg -i $PKG $V1, $(took) s; securely.service $(systemctl is-enabled securely.service 2>&1), $(systemctl is-active securely.service 2>&1) after dpkg"
else
  fail install "dpkg -i exited $rc, package state: $state"
fi
getent passwd securely | show
ls -la /etc/securely /usr/lib/systemd/system/securely* /lib/systemd/system/securely* 2>/dev/null | show
ls /etc/systemd/resolved.conf.d/ /usr/lib/systemd/resolved.conf.d/ 2>/dev/null | show

step unit-verify
out=$(systemd-analyze verify securely.service 2>&1)
rc=$?
show <<<"$out"
if [[ $rc == 0 && -z $out ]]; then pass unit-verify "systemd-analyze verify: clean"
elif [[ $rc == 0 ]]; then pass unit-verify "systemd-analyze verify: rc 0, with the notes above"
else fail unit-verify "systemd-analyze verify exited $rc"; fi

# ---------------------------------------------------------------- start
step start
timeout 120 systemctl start securely.service
rc=$?
if wait_until 60 all_ready; then
  J=$(status_json)
  P0=$(pids_of "$J")
  MAIN=$(main_pid)
  HTTP=$(jq -r '[.daemons[] | select(.name == "proxyd") | .listeners[] | select(startswith("tcp://"))][0] | ltrimstr("tcp://")' <<<"$J")
  DNS=$(jq -r '[.daemons[] | select(.name == "dnsd") | .listeners[] | select(startswith("udp://"))][0] | ltrimstr("udp://")' <<<"$J")
  DNS_IP=${DNS%:*} DNS_PORT=${DNS##*:}
  DNS_IP=${DNS_IP#[} DNS_IP=${DNS_IP%]}
  ctl status | show
  if [[ $rc == 0 && $(systemctl is-active securely.service) == active && $MAIN == "$(pid_in supervisor "$P0")" ]]; then
    pass start "active, MainPID $MAIN = supervisor, $(pids_of "$J" | tail -3 | tr '\n' ' ')ready, http $HTTP, dns $DNS, $(took) s"
  else
    fail start "systemctl start rc $rc, is-active $(systemctl is-active securely.service), MainPID $MAIN vs status $(pid_in supervisor "$P0")"
  fi
else
  fail start "systemctl start rc $rc; not every daemon ready within 60 s: $(status_json | jq -c '[.daemons[]? | {name, state, pid, last_exit}]' 2>&1)"
  systemctl status --no-pager securely.service 2>&1 | show
  journalctl -b -u securely.service --no-pager 2>&1 | tail -40 | show
  echo "END $NFAIL failed (the stack never started; nothing more to check)" | tee -a "$RES"
  echo 1 >"$OUT/hook.rc"
  exit 1
fi

step privileges
problems=""
for d in proxyd dnsd queued; do
  p=$(pid_in "$d" "$P0")
  u=$(ps -o user= -p "$p" | tr -d ' ')
  [[ $u == securely ]] || problems+="$d runs as '$u'; "
done
u=$(stat -c '%U:%G %a' /run/securely 2>&1)
[[ $u == "securely:securely 750" ]] || problems+="/run/securely is $u; "
for s in /run/securely/*.sock; do
  m=$(stat -c '%G %a' "$s")
  [[ $m == "securely 660" ]] || problems+="$s is $m; "
done
u=$(stat -c '%U:%G' /var/lib/securely 2>&1)
[[ $u == securely:securely ]] || problems+="/var/lib/securely is $u; "
ls -la /run/securely /var/lib/securely | show
if [[ -z $problems ]]; then pass privileges "daemons run as securely, runtime dir 0750, sockets 0660 group securely"
else fail privileges "$problems"; fi

step group-access
# a member of the securely group (not root) runs securelyctl
id vmtester >/dev/null 2>&1 || useradd -M -G securely vmtester
out=$(cd / && timeout 30 runuser -u vmtester -- securelyctl ${CONF:+-c "$CONF"} status 2>&1)
rc=$?
show <<<"$out"
if [[ $rc == 0 ]]; then pass group-access "a member of group securely runs securelyctl status without root"
else fail group-access "securelyctl status as a group member exited $rc"; fi

# ---------------------------------------------------------------- site + DNS
step site
MARKER="securely-vm-backend-$RANDOM$RANDOM"
mkdir -p /srv/app
echo "<h1>$MARKER</h1>" >/srv/app/index.html
systemd-run --unit=vm-backend --quiet -p WorkingDirectory=/srv/app \
  python3 -m http.server --bind 127.0.0.1 8000
wait_until 20 curl -fs -o /dev/null http://127.0.0.1:8000/ || info "backend on 127.0.0.1:8000 did not come up"
ctl site:link app 127.0.0.1:8000 2>&1 | show
code=$(http_code app.test)
if [[ $code == 200 ]] && grep -q "$MARKER" "$OUT/body"; then
  code404=$(http_code nosuchsite.test)
  pass site "app.test -> 127.0.0.1:8000 served through proxyd on $HTTP (200, backend's page); unknown host: $code404"
else
  fail site "curl -H 'Host: app.test' http://$HTTP/ gave $code: $(head -c 300 "$OUT/body" | tr '\n' ' ')"
fi
ctl dns:set api.test A 10.0.0.7 2>&1 | show
JOB=$(ctl queue:push vmtest '{"kept":true}' 2>&1)
info "queue:push vmtest -> $JOB"

step dns
a=$(dig_short app.test A)
b=$(dig_short api.test A)
if [[ $a == 127.0.0.1 && $b == 10.0.0.7 ]]; then pass dns "dig @$DNS app.test -> $a, api.test -> $b"
else fail dns "dig @$DNS: app.test -> '$a', api.test -> '$b'"; fi

step resolved
resolvectl status --no-pager 2>&1 | show
out=$(timeout 30 resolvectl query app.test 2>&1)
rc=$?
show <<<"$out"
out2=$(timeout 30 resolvectl query api.test 2>&1)
show <<<"$out2"
g=$(getent ahostsv4 app.test 2>&1 | awk '{print $1; exit}')
if [[ $rc == 0 ]] && grep -q '127\.0\.0\.1' <<<"$out" && grep -q '10\.0\.0\.7' <<<"$out2"; then
  pass resolved "resolvectl query app.test -> 127.0.0.1, api.test -> 10.0.0.7 ($(grep -o 'acquired via protocol [A-Za-z]*' <<<"$out" | head -1)); getent ahostsv4 app.test -> ${g:-nothing}"
else
  fail resolved "resolvectl query app.test exited $rc: $(tr '\n' ' ' <<<"$out" | head -c 300)"
fi

step doctor
out=$(ctl doctor 2>&1)
rc=$?
show <<<"$out"
if [[ $rc == 0 ]]; then pass doctor "securelyctl doctor: rc 0"
else fail doctor "securelyctl doctor exited $rc: $(tail -3 <<<"$out" | tr '\n' ' ')"; fi

# ---------------------------------------------------------------- reload
step reload
B=$(pids_of "$(status_json)")
MAIN=$(main_pid)
timeout 120 systemctl reload securely.service
rc=$?
wait_until 60 all_replaced "$B"
A=$(pids_of "$(status_json)")
MAIN2=$(main_pid)
why=""
[[ $rc == 0 ]] || why+="systemctl reload exited $rc; "
[[ $MAIN2 == "$MAIN" && $(pid_in supervisor "$A") == "$MAIN" ]] || why+="main pid $MAIN -> $MAIN2 (status: $(pid_in supervisor "$A")); "
for d in proxyd dnsd queued; do
  [[ $(pid_in "$d" "$A") != "$(pid_in "$d" "$B")" ]] || why+="$d still on pid $(pid_in "$d" "$A"); "
done
all_ready || why+="not every daemon ready; "
[[ $(systemctl is-active securely.service) == active ]] || why+="unit $(systemctl is-active securely.service); "
served || why+="app.test not served after the reload; "
up=$(status_json | jq -c '.upgrade')
if [[ -z $why ]]; then
  pass reload "main pid $MAIN kept; $(for d in proxyd dnsd queued; do printf '%s %s->%s ' "$d" "$(pid_in "$d" "$B")" "$(pid_in "$d" "$A")"; done)upgrade $up, $(took) s"
else
  fail reload "$why"
fi

step restart-dnsd
B=$(pids_of "$(status_json)")
out=$(ctl restart dnsd 2>&1)
rc=$?
show <<<"$out"
old=$(pid_in dnsd "$B")
wait_until 20 daemon_replaced dnsd "$old"
A=$(pids_of "$(status_json)")
a=$(dig_short app.test A)
if [[ $rc == 0 && $(pid_in dnsd "$A") != "$old" && $a == 127.0.0.1 ]]; then
  pass restart-dnsd "dnsd $old -> $(pid_in dnsd "$A"), dig app.test -> $a, $(took) s"
else
  fail restart-dnsd "securelyctl restart dnsd rc $rc, dnsd $old -> $(pid_in dnsd "$A"), dig app.test -> '$a'"
fi

for d in proxyd dnsd queued; do
  step "kill9-$d"
  B=$(pids_of "$(status_json)")
  old=$(pid_in "$d" "$B")
  t0=$(now)
  kill -9 "$old"
  if wait_until 15 daemon_replaced "$d" "$old"; then
    dt=$(secs "$t0")
    A=$(pids_of "$(status_json)")
    check=ok
    case $d in
      proxyd) served || check="app.test not served" ;;
      dnsd) [[ $(dig_short app.test A) == 127.0.0.1 ]] || check="app.test not answered" ;;
      queued) ctl queue:stats >/dev/null 2>&1 || check="queue:stats failed" ;;
    esac
    if [[ $check == ok && $(main_pid) == "$MAIN" ]]; then
      pass "kill9-$d" "pid $old killed, $(pid_in "$d" "$A") ready after $dt s, main pid unchanged"
    else
      fail "kill9-$d" "replacement ready but: $check; main pid $(main_pid)"
    fi
  else
    fail "kill9-$d" "no new ready $d within 15 s: $(status_json | jq -c ".daemons[] | select(.name == \"$d\")" 2>&1)"
  fi
done

# ---------------------------------------------------------------- package upgrade
step upgrade
if [[ ! -f $SECOND ]]; then
  fail upgrade "no second .deb in the share"
else
  B=$(pids_of "$(status_json)")
  MAIN=$(main_pid)
  rm -f "$OUT"/load-*.txt "$OUT/load.stop"
  # HTTP and DNS load during the whole upgrade; every request must succeed
  (
    while [[ ! -e $OUT/load.stop ]]; do
      c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Host: app.test' "http://$HTTP/")
      echo "$(date +%s.%N) $c" >>"$OUT/load-http.txt"
    done
  ) &
  LH=$!
  (
    while [[ ! -e $OUT/load.stop ]]; do
      a=$(dig @"$DNS_IP" -p "$DNS_PORT" +short +time=5 +tries=1 app.test A 2>&1 | head -1)
      echo "$(date +%s.%N) ${a:-empty}" >>"$OUT/load-dns.txt"
    done
  ) &
  LD=$!
  sleep 2
  t_dpkg=$(now)
  timeout 300 dpkg -i "$SECOND" >"$OUT/dpkg-upgrade.txt" 2>&1
  rc=$?
  dpkg_s=$(secs "$t_dpkg")
  show <"$OUT/dpkg-upgrade.txt"
  wait_until 60 all_replaced "$B"
  sleep 2
  touch "$OUT/load.stop"
  wait "$LH" "$LD"
  A=$(pids_of "$(status_json)")
  up_ms=$(status_json | jq -r '.upgrade.took_ms // "?"')
  MAIN2=$(main_pid)
  state=$(dpkg-query -W -f='${Status} ${Version}' "$PKG" 2>&1)
  nh=$(wc -l <"$OUT/load-http.txt")
  bad_h=$(awk '$2 != 200' "$OUT/load-http.txt" | wc -l)
  nd=$(wc -l <"$OUT/load-dns.txt")
  bad_d=$(awk '$2 != "127.0.0.1"' "$OUT/load-dns.txt" | wc -l)
  why=""
  [[ $rc == 0 ]] || why+="dpkg -i exited $rc; "
  [[ $state == "install ok installed $V2" ]] || why+="package state: $state; "
  [[ $MAIN2 == "$MAIN" && $(pid_in supervisor "$A") == "$MAIN" ]] || why+="main pid $MAIN -> $MAIN2 (status: $(pid_in supervisor "$A")): restarted, not reloaded; "
  for d in proxyd dnsd queued; do
    [[ $(pid_in "$d" "$A") != "$(pid_in "$d" "$B")" ]] || why+="$d still on pid $(pid_in "$d" "$A"); "
  done
  [[ $(systemctl is-active securely.service) == active ]] || why+="unit $(systemctl is-active securely.service); "
  ((nh > 0 && bad_h == 0)) || why+="$bad_h of $nh HTTP requests failed: $(awk '$2 != 200 {print $2}' "$OUT/load-http.txt" | sort | uniq -c | tr '\n' ' '); "
  ((nd > 0 && bad_d == 0)) || why+="$bad_d of $nd DNS queries failed: $(awk '$2 != "127.0.0.1" {print $2}' "$OUT/load-dns.txt" | sort | uniq -c | tr '\n' ' '); "
  journalctl -b -u securely.service --since "-$(printf '%.0f' "$(took)")s" --no-pager -o short-monotonic 2>&1 | tail -30 | show
  if [[ -z $why ]]; then
    pass upgrade "$V1 -> $V2 as a reload: main pid $MAIN kept, $(for d in proxyd dnsd queued; do printf '%s %s->%s, ' "$d" "$(pid_in "$d" "$B")" "$(pid_in "$d" "$A")"; done)$nh HTTP requests and $nd DNS queries during it, none failed; dpkg -i $dpkg_s s, of which the stack's upgrade $up_ms ms"
  else
    fail upgrade "$why"
  fi
fi

# ---------------------------------------------------------------- journal + hardening
step journal
why=""
: >"$OUT/journal.txt"
for t in securely securely-proxyd securely-dnsd securely-queued; do
  n=$(journalctl -b -u securely.service -t "$t" --no-pager -q -o cat 2>/dev/null | wc -l)
  info "journalctl -u securely -t $t: $n lines"
  {
    echo "\$ journalctl -u securely -t $t   ($n lines; the last 4)"
    journalctl -b -u securely.service -t "$t" --no-pager -q -o short-monotonic 2>/dev/null | tail -4
  } >>"$OUT/journal.txt"
  ((n > 0)) || why+="no lines for -t $t; "
done
show <"$OUT/journal.txt"
if [[ -z $why ]]; then pass journal "each process logs under its own identifier (securely, securely-proxyd, securely-dnsd, securely-queued)"
else fail journal "$why"; fi

step security
systemd-analyze security --no-pager securely.service >"$OUT/security.txt" 2>&1
rc=$?
show <"$OUT/security.txt"
score=$(grep -i 'overall exposure' "$OUT/security.txt" | sed 's/.*: *//' | tr -s ' ')
if [[ $rc == 0 || -n $score ]]; then pass security "systemd-analyze security: ${score:-see out/security.txt}"
else fail security "systemd-analyze security exited $rc"; fi

# ---------------------------------------------------------------- stop + start again
step stop
MAIN=$(main_pid)
timeout 120 systemctl stop securely.service
rc=$?
sleep 0.5
left=$(securely_procs)
why=""
[[ $rc == 0 ]] || why+="systemctl stop exited $rc; "
[[ $(systemctl is-active securely.service) == inactive ]] || why+="unit $(systemctl is-active securely.service); "
[[ -z $left ]] || why+="processes left: $(tr '\n' ' ' <<<"$left"); "
s=$(ls /run/securely/*.sock /run/securely/*.pid 2>/dev/null | tr '\n' ' ')
[[ -z $s ]] || why+="files left: $s; "
c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: app.test' "http://$HTTP/")
if [[ -z $why ]]; then pass stop "inactive, no securely process, sockets and pid file removed, http now $c, $(took) s"
else fail stop "$why"; fi

step start-again
timeout 120 systemctl start securely.service
rc=$?
why=""
[[ $rc == 0 ]] || why+="systemctl start exited $rc; "
wait_until 60 all_ready || why+="not every daemon ready; "
served || why+="app.test not served (site lost?); "
b=$(dig_short api.test A)
[[ $b == 10.0.0.7 ]] || why+="dns:set record api.test -> '$b'; "
got=$(ctl queue:reserve vmtest --timeout 60 2>&1)
[[ $got == *'{"kept":true}'* ]] || why+="queued job lost: '$got'; "
ctl site:list | show
if [[ -z $why ]]; then pass start-again "main pid $(main_pid); site app.test served, api.test -> $b, queued job kept ($got), $(took) s"
else fail start-again "$why"; fi

# ---------------------------------------------------------------- the Type=notify variant
if [[ -f /usr/lib/systemd/system/securely-notify.service || -f /lib/systemd/system/securely-notify.service ]]; then
  step notify-variant
  why=""
  timeout 120 systemctl stop securely.service || why+="systemctl stop securely exited $?; "
  timeout 120 systemctl start securely-notify.service
  rc=$?
  [[ $rc == 0 ]] || why+="systemctl start securely-notify exited $rc; "
  wait_until 60 all_ready || why+="not every daemon ready; "
  B=$(pids_of "$(status_json)")
  MAIN=$(systemctl show -p MainPID --value securely-notify.service)
  st=$(systemctl show -p StatusText --value securely-notify.service)
  [[ $MAIN == "$(pid_in supervisor "$B")" && $MAIN != 0 ]] || why+="MainPID $MAIN, status says $(pid_in supervisor "$B"); "
  [[ -n $st ]] || why+="no STATUS= text; "
  served || why+="app.test not served; "
  timeout 120 systemctl reload securely-notify.service || why+="systemctl reload securely-notify exited $?; "
  wait_until 60 all_replaced "$B" || why+="not every daemon replaced after the reload; "
  A=$(pids_of "$(status_json)")
  [[ $(systemctl show -p MainPID --value securely-notify.service) == "$MAIN" ]] || why+="MainPID changed on reload; "
  [[ $(systemctl is-active securely-notify.service) == active ]] || why+="securely-notify is $(systemctl is-active securely-notify.service) after the reload; "
  st2=$(systemctl show -p StatusText --value securely-notify.service)
  timeout 120 systemctl stop securely-notify.service || why+="systemctl stop securely-notify exited $?; "
  sleep 0.5
  left=$(securely_procs)
  [[ -z $left ]] || why+="processes left after stop: $(tr '\n' ' ' <<<"$left"); "
  if [[ -z $why ]]; then
    pass notify-variant "Type=notify: ready with MainPID $MAIN, STATUS '$st'; reload kept it, daemons $(for d in proxyd dnsd queued; do printf '%s->%s ' "$(pid_in "$d" "$B")" "$(pid_in "$d" "$A")"; done)STATUS '$st2'; stopped clean"
  else
    fail notify-variant "$why"
  fi
else
  echo "SKIP notify-variant: the package ships no securely-notify.service" | tee -a "$RES"
fi

# ---------------------------------------------------------------- purge, resolv.conf
step purge
timeout 300 dpkg --purge "$PKG" >"$OUT/dpkg-purge.txt" 2>&1
rc=$?
show <"$OUT/dpkg-purge.txt"
sleep 0.5
why=""
[[ $rc == 0 ]] || why+="dpkg --purge exited $rc; "
left=$(securely_procs)
[[ -z $left ]] || why+="processes left: $(tr '\n' ' ' <<<"$left"); "
st=$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null)
[[ -z $st || $st == "unknown ok not-installed" || $st == "purge ok not-installed" ]] || why+="package state: $st; "
[[ ! -e /etc/securely ]] || why+="/etc/securely left: $(ls /etc/securely | tr '\n' ' '); "
[[ $(systemctl is-active systemd-resolved.service) == active ]] || why+="systemd-resolved is $(systemctl is-active systemd-resolved.service); "
rest=$(ls -d /etc/systemd/resolved.conf.d/*securely* /usr/lib/systemd/resolved.conf.d/*securely* /usr/lib/systemd/system/securely* /lib/systemd/system/securely* /usr/bin/securely* 2>/dev/null | tr '\n' ' ')
[[ -z $rest ]] || why+="files left: $rest; "
info "after purge: /var/lib/securely $(test -e /var/lib/securely && echo kept || echo removed), user securely $(getent passwd securely >/dev/null && echo kept || echo removed)"
if [[ -z $why ]]; then pass purge "dpkg --purge: no process, no unit, no conffile, resolved still active"
else fail purge "$why"; fi

step resolv-conf
RESOLV_AFTER="$(readlink /etc/resolv.conf) $(sha256sum </etc/resolv.conf 2>/dev/null | cut -c1-16)"
if [[ $RESOLV_AFTER == "$RESOLV_BEFORE" ]]; then pass resolv-conf "/etc/resolv.conf untouched through install, upgrade and purge"
else fail resolv-conf "/etc/resolv.conf changed: '$RESOLV_BEFORE' -> '$RESOLV_AFTER'"; fi

echo "END $NFAIL failed, guest time $(secs "$T_START") s" | tee -a "$RES"
echo $((NFAIL > 0)) >"$OUT/hook.rc"
exit $((NFAIL > 0))
