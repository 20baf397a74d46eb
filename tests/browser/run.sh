#!/usr/bin/env bash
# Proof in a real browser: headless Chromium opens https://myapp.test, served by the stack
# with a leaf from proxyd's local CA, trusted only through `securelyctl ca:trust` into a
# throw-away HOME's NSS database; no certificate error is allowed (no
# --ignore-certificate-errors), the page's text is checked (--dump-dom) and a screenshot
# saved. Then the name constraints: a CA made here with the same constraints as proxyd's
# (compared with `openssl x509 -ext nameConstraints`) and trusted the same way gets its
# leaf for ok.test accepted and its leaf for a name outside the TLD refused by Chromium
# ("Not permitted by name constraints" in its net log).
# (proxyd's own key never leaves proxyd, and proxyd mints nothing outside the TLD, so the
# refusal is shown with a CA of the test's.)
#
# Usage: tests/browser/run.sh        (outside `cargo test`, like tests/systemd-vm)
# Env: OUT         where the screenshot goes (default tests/browser/out)
#      BIN         a directory with securely, its daemons and securelyctl (default: the
#                  workspace is built and target/debug used)
#      NO_INSTALL=1  never apt-get install chromium / libnss3-tools
#      KEEP=1      keep the run's directory (logs, net log, certificates)
# Prints each check as PASS/FAIL and exits non-zero on any failure.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$HERE/out}
TLD=test
PAGE_TEXT="Hello from myapp over https"
say() { echo "browser: $*" >&2; }
FAILED=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILED=1; }
die() { say "ERROR: $*"; echo "RESULT: FAIL ($*)"; exit 1; }

# ---------------------------------------------------------------- tools
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v certutil >/dev/null || need+=(libnss3-tools)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  [[ ${NO_INSTALL:-0} != 1 ]] || die "missing: ${need[*]} (NO_INSTALL=1)"
  SUDO=$(command -v sudo || true)
  [[ $(id -u) == 0 ]] && SUDO=
  say "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
    die "apt-get install ${need[*]} failed"
fi

if [[ -z ${BIN:-} ]]; then
  say "building"
  (cd "$REPO" && cargo build --workspace -q) || die "cargo build failed"
  BIN=$REPO/target/debug
fi
export PATH="$BIN:$PATH"

# ---------------------------------------------------------------- a stack on free ports
W=$(mktemp -d "${TMPDIR:-/tmp}/securely-browser.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ ${KEEP:-0} == 1 ]] && say "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
HTTP=$(free_port) TLS=$(free_port) DNS=$(free_port) BACKEND=$(free_port)
cat >"$W/securely.yaml" <<EOF
runtime_dir: $W/run
data_dir: $W/data
proxy:
  listen: ["127.0.0.1:$HTTP"]
  tls_listen: ["127.0.0.1:$TLS"]
dns:
  tld: $TLD
  listen: ["127.0.0.1:$DNS"]
  upstreams: []
EOF
CTL=(securelyctl -c "$W/securely.yaml")

mkdir -p "$W/site"
cat >"$W/site/index.html" <<EOF
<!doctype html>
<html><head><title>myapp</title>
<style>body{font:32px sans-serif;margin:3em;background:#0b6;color:#fff}</style></head>
<body><h1>$PAGE_TEXT</h1><p id="proto"></p>
<script>document.getElementById('proto').textContent = 'served over ' + location.protocol;</script>
</body></html>
EOF
python3 -m http.server "$BACKEND" --bind 127.0.0.1 --directory "$W/site" >"$W/backend.log" 2>&1 &
PIDS+=($!)
securely -c "$W/securely.yaml" >"$W/securely.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 150); do
  "${CTL[@]}" status --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)["daemons"]
sys.exit(0 if len(d) == 3 and all(x["state"] == "ready" for x in d) else 1)' && break
  sleep 0.2
done
"${CTL[@]}" status >&2 || die "the stack did not start: $(tail -5 "$W/securely.log")"

"${CTL[@]}" site:link myapp "127.0.0.1:$BACKEND" >&2 || die "site:link failed"
"${CTL[@]}" site:secure myapp >&2 || die "site:secure failed"

# ---------------------------------------------------------------- ca:trust, a fresh HOME
# Only the NSS database of a throw-away HOME: no system store, no JDK.
export HOME=$W/home JAVA_HOME=$W/no-jdk SECURELY_CA_SYSTEM_ANCHOR=
unset SUDO_UID SUDO_GID
mkdir -p "$HOME"
TRUST=$("${CTL[@]}" ca:trust) || true
echo "$TRUST" | sed 's/^/  ca:trust: /' >&2
grep -qx "nss     $HOME/.pki/nssdb: trusted" <<<"$TRUST" &&
  pass "ca:trust put the CA in $HOME/.pki/nssdb" || fail "ca:trust: $TRUST"
certutil -L -d "sql:$HOME/.pki/nssdb" | grep -q '^Securely local CA .* C,,' &&
  pass "certutil -L lists it with trust C,," || fail "not in the NSS db: $(certutil -L -d "sql:$HOME/.pki/nssdb")"

# ---------------------------------------------------------------- Chromium
mkdir -p "$OUT"
# $1: URL, $2: host:port of the server for it, then Chromium's action flags.
chromium_at() {
  local url=$1 server=$2 host
  shift 2
  host=${url#https://}
  host=${host%%/*}
  timeout 90 chromium --headless=new --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$W/chromium-profile" --window-size=1024,640 \
    --host-resolver-rules="MAP $host:443 $server" "$@" "$url" 2>>"$W/chromium.log"
}

DOM=$(chromium_at https://myapp.$TLD/ "127.0.0.1:$TLS" --dump-dom || true)
if grep -q "$PAGE_TEXT" <<<"$DOM" && grep -q "served over https:" <<<"$DOM"; then
  pass "Chromium loaded https://myapp.$TLD with no certificate error and shows \"$PAGE_TEXT\""
else
  fail "Chromium's page for https://myapp.$TLD: $(head -c 600 <<<"$DOM")"
fi
chromium_at https://myapp.$TLD/ "127.0.0.1:$TLS" --screenshot="$OUT/myapp.png" >/dev/null || true
[[ -s $OUT/myapp.png ]] && pass "screenshot: $OUT/myapp.png" || fail "no screenshot"

# The control: a HOME whose NSS database never saw ca:trust gets no page.
rm -rf "$W/chromium-profile"
mkdir -p "$W/untrusted-home"
DOM=$(HOME=$W/untrusted-home chromium_at https://myapp.$TLD/ "127.0.0.1:$TLS" --dump-dom || true)
if grep -q "$PAGE_TEXT" <<<"$DOM"; then
  fail "Chromium loaded https://myapp.$TLD without the CA trusted"
else
  pass "without ca:trust, Chromium refuses it: $(grep -o 'Page load failed: [^ ]*' "$W/chromium.log" | tail -1)"
fi

# ---------------------------------------------------------------- name constraints
# A CA of the test's with proxyd's constraints; its leaves for ok.test and evil.example.com.
NC=$W/nc
mkdir -p "$NC"
"${CTL[@]}" ca:export >"$NC/proxyd-ca.pem"
CONSTRAINTS=$(openssl x509 -in "$NC/proxyd-ca.pem" -noout -ext nameConstraints | tail -n +2 |
  sed -n 's/^ *//p' | paste -sd, -)
say "proxyd's CA: $(openssl x509 -in "$NC/proxyd-ca.pem" -noout -ext nameConstraints | tr -s ' \n' ' ')"
# "Permitted:,DNS:test,DNS:localhost,Excluded:,IP:..." -> an openssl config line.
NC_CONF=$(awk -F, '{
  mode = ""; out = "";
  for (i = 1; i <= NF; i++) {
    if ($i == "Permitted:") { mode = "permitted"; continue }
    if ($i == "Excluded:") { mode = "excluded"; continue }
    split($i, kv, ":"); value = substr($i, length(kv[1]) + 2)
    if (kv[1] == "IP Address") kv[1] = "IP"
    out = out (out == "" ? "" : ",") mode ";" kv[1] ":" value
  }
  print out }' <<<"$CONSTRAINTS")
[[ -n $NC_CONF ]] || die "proxyd's CA has no name constraints"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=Name constraint test CA" -keyout "$NC/ca.key" -out "$NC/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "nameConstraints=critical,$NC_CONF" 2>>"$W/openssl.log" || die "openssl: test CA"
if [[ $(openssl x509 -in "$NC/ca.pem" -noout -ext nameConstraints | tail -n +2) == \
      $(openssl x509 -in "$NC/proxyd-ca.pem" -noout -ext nameConstraints | tail -n +2) ]]; then
  pass "the test CA has proxyd's CA's name constraints"
else
  fail "the test CA's constraints differ: $(openssl x509 -in "$NC/ca.pem" -noout -ext nameConstraints)"
fi
leaf() { # $1: DNS name
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$NC/$1.key" -out "$NC/$1.csr" 2>>"$W/openssl.log" &&
    openssl x509 -req -in "$NC/$1.csr" -CA "$NC/ca.pem" -CAkey "$NC/ca.key" -days 30 \
      -out "$NC/$1.pem" -extfile <(printf '%s\n' "subjectAltName=DNS:$1" \
        "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth") 2>>"$W/openssl.log"
}
serve() { # $1: DNS name, $2: port
  openssl s_server -quiet -accept "127.0.0.1:$2" -cert "$NC/$1.pem" -key "$NC/$1.key" \
    -WWW >>"$W/s_server.log" 2>&1 &
  PIDS+=($!)
}
NC_HOME=$W/nc-home
mkdir -p "$NC_HOME/.pki/nssdb" "$NC/www"
echo "<html><body><h1>the name-constrained test CA's ok.$TLD</h1></body></html>" >"$NC/www/index.html"
certutil -N --empty-password -d "sql:$NC_HOME/.pki/nssdb"
certutil -A -n "Name constraint test CA" -t "C,," -i "$NC/ca.pem" -d "sql:$NC_HOME/.pki/nssdb"
OK_PORT=$(free_port) EVIL_PORT=$(free_port)
leaf "ok.$TLD" && leaf evil.example.com || die "openssl: leaves"
pushd "$NC/www" >/dev/null # s_server -WWW serves files from where it starts
serve "ok.$TLD" "$OK_PORT"
serve evil.example.com "$EVIL_PORT"
popd >/dev/null
sleep 1
rm -rf "$W/chromium-profile"
DOM=$(HOME=$NC_HOME chromium_at "https://ok.$TLD/index.html" "127.0.0.1:$OK_PORT" --dump-dom || true)
grep -q "test CA's ok.$TLD" <<<"$DOM" &&
  pass "a leaf for ok.$TLD from the test CA is accepted" ||
  fail "ok.$TLD refused: $(head -c 600 <<<"$DOM")"
# Headless Chromium loads nothing on a certificate error ("Page load failed:
# net::ERR_CERT_INVALID"); its net log has the verifier's reason.
DOM=$(HOME=$NC_HOME chromium_at https://evil.example.com/index.html "127.0.0.1:$EVIL_PORT" \
  --log-net-log="$W/evil.netlog.json" --net-log-capture-mode=Everything --dump-dom || true)
if grep -q "test CA's" <<<"$DOM"; then
  fail "Chromium accepted a leaf for evil.example.com from the constrained CA"
elif grep -q "Not permitted by name constraints" "$W/evil.netlog.json"; then
  pass "Chromium refused the leaf for evil.example.com: $(grep -o 'Page load failed: [^ ]*' "$W/chromium.log" | tail -1), net log: \"Not permitted by name constraints\""
else
  fail "no name-constraint refusal for evil.example.com: $(tail -3 "$W/chromium.log")"
fi
VERIFY=$(openssl verify -CAfile "$NC/ca.pem" "$NC/evil.example.com.pem" 2>&1 || true)
grep -q "permitted subtree violation" <<<"$VERIFY" &&
  pass "openssl verify agrees: permitted subtree violation" || fail "openssl verify: $VERIFY"

if ((FAILED)); then echo "RESULT: FAIL"; exit 1; fi
echo "RESULT: PASS"
