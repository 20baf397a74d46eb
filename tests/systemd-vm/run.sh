#!/usr/bin/env bash
# Proof under a real systemd: boot a minimal Debian bookworm (systemd as PID 1) under qemu,
# install the securely .deb there and drive it with systemctl and securelyctl: start, a site
# served, a .test name through systemd-resolved, reload (same main PID, every daemon
# replaced), a daemon restart, kill -9 recoveries, a package upgrade done as a reload under
# HTTP and DNS load, stop (nothing left), start again (data kept), purge.
# Prints each check as PASS/FAIL and exits non-zero on any failure, missing check or timeout.
#
# Usage: tests/systemd-vm/run.sh [FIRST.deb [SECOND.deb]]
#   FIRST.deb   the package to install (env SECURELY_DEB1)
#   SECOND.deb  a newer build of it, to upgrade to (env SECURELY_DEB2). Without it, FIRST is
#               repacked with the version FIRST's+vmtest2 (same binaries: the upgrade still
#               re-executes every process, which is what is checked).
#   Without any: both are built with packaging/build-deb.sh (DEB_VERSION=V-1~vmtest1, then
#               V-1~vmtest2) into the run's directory.
# Env: VM_DIR     image cache and run files (default ${TMPDIR:-/tmp}/securely-vm)
#      REBUILD=1  rebuild the image from scratch
#      TIMEOUT    hard cap on the VM, seconds (default 1500); HOOK_TIMEOUT the guest's cap on
#                 its checks (default 1200)
#      SMP, MEM, ACCEL: passed to boot.sh (default 2 CPUs, 2048 MB, tcg: KVM is not usable here)
#      NO_INSTALL=1  never apt-get install the host tools
# Needs root (debootstrap, mkfs.ext4 -d of a root-owned tree) and the Debian mirror once.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export VM_DIR=${VM_DIR:-${TMPDIR:-/tmp}/securely-vm}
TIMEOUT=${TIMEOUT:-1500}
HOOK_TIMEOUT=${HOOK_TIMEOUT:-1200}
T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}'; }
say() { echo "systemd-vm: $*" >&2; }
die() { say "ERROR: $*"; echo "RESULT: FAIL ($*)"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, a root-owned image tree)"

# ---------------------------------------------------------------- host tools
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v dpkg-deb >/dev/null || die "dpkg-deb missing (not a Debian host?)"
if ((${#need[@]})); then
  [[ ${NO_INSTALL:-0} != 1 ]] || die "missing: ${need[*]} (NO_INSTALL=1)"
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache policy qemu-system-x86 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
  # In one line with qemu-utils at qemu-system-x86's version: a newer qemu-utils (from
  # backports) otherwise blocks qemu-system-common, or gets removed.
  qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    qemu-system-x86 "qemu-utils=$qv" debootstrap e2fsprogs >&2 ||
    die "apt-get install qemu-system-x86 qemu-utils debootstrap e2fsprogs failed"
fi

# ---------------------------------------------------------------- the packages
mkdir -p "$VM_DIR/runs"
RUN=$(mktemp -d "$VM_DIR/runs/run.XXXXXX")
SHARE=$RUN/share
mkdir -p "$SHARE/debs" "$SHARE/out"
DEB1=${1:-${SECURELY_DEB1:-}}
DEB2=${2:-${SECURELY_DEB2:-}}
T_DEB=$(date +%s.%N)
if [[ -z $DEB1 ]]; then
  say "building the packages with packaging/build-deb.sh"
  [[ -x $REPO/packaging/build-deb.sh ]] || die "no packaging/build-deb.sh; pass FIRST.deb [SECOND.deb]"
  base=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="securely"))')
  DEB1=$(cd "$REPO" && DEB_VERSION="$base-1~vmtest1" DEB_OUTPUT="$RUN/build1/" packaging/build-deb.sh | tail -1) ||
    die "packaging/build-deb.sh failed"
  DEB2=$(cd "$REPO" && DEB_VERSION="$base-1~vmtest2" DEB_OUTPUT="$RUN/build2/" packaging/build-deb.sh | tail -1) ||
    die "packaging/build-deb.sh (second build) failed"
fi
[[ -f $DEB1 ]] || die "no such package: $DEB1"
cp "$DEB1" "$SHARE/debs/first.deb"
V1=$(dpkg-deb -f "$DEB1" Version)
if [[ -n $DEB2 ]]; then
  [[ -f $DEB2 ]] || die "no such package: $DEB2"
  cp "$DEB2" "$SHARE/debs/second.deb"
else
  say "no second package given: repacking $DEB1 as version $V1+vmtest2"
  dpkg-deb -R "$DEB1" "$RUN/repack"
  sed -i "s/^Version: .*/Version: $V1+vmtest2/" "$RUN/repack/DEBIAN/control"
  dpkg-deb -b -Zgzip "$RUN/repack" "$SHARE/debs/second.deb" >/dev/null
  rm -rf "$RUN/repack"
fi
V2=$(dpkg-deb -f "$SHARE/debs/second.deb" Version)
dpkg --compare-versions "$V2" gt "$V1" || die "the second package ($V2) is not newer than the first ($V1)"
say "packages: $(dpkg-deb -f "$DEB1" Package) $V1 -> $V2 ($(elapsed "$T_DEB") s)"

# ---------------------------------------------------------------- the image
# The packages' dependencies must be in the image (the guest has no network): any not
# installed there yet is remembered in $VM_DIR/extra-packages and the image rebuilt with it.
deps=$(for d in "$SHARE/debs/first.deb" "$SHARE/debs/second.deb"; do
  dpkg-deb -f "$d" Depends; echo ,; dpkg-deb -f "$d" Pre-Depends; echo ,; done |
  tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//; s/^ *//; s/ *$//' | grep -v '^$' | sort -u)
touch "$VM_DIR/extra-packages"
if [[ -d $VM_DIR/rootfs/var/lib/dpkg ]]; then
  for p in $deps; do
    dpkg-query --admindir="$VM_DIR/rootfs/var/lib/dpkg" -W -f='${Status}' "$p" 2>/dev/null |
      grep -q 'ok installed' || echo "$p" >>"$VM_DIR/extra-packages"
  done
else
  printf '%s\n' $deps >>"$VM_DIR/extra-packages"
fi
sort -u -o "$VM_DIR/extra-packages" "$VM_DIR/extra-packages"
T_IMG=$(date +%s.%N)
(
  flock 9
  EXTRA_PACKAGES=$(tr '\n' ' ' <"$VM_DIR/extra-packages") "$HERE/build-image.sh"
) 9>"$VM_DIR/.build.lock" 2>&1 | tee "$RUN/image.log" >&2 || die "building the VM image failed"
IMG_STATE=$(grep -q 'vm image: cached' "$RUN/image.log" && echo cached || echo built)
IMG_S=$(elapsed "$T_IMG")

# ---------------------------------------------------------------- boot and check
cp "$HERE/guest-hook.sh" "$SHARE/guest-hook.sh"
chmod 755 "$SHARE/guest-hook.sh"
echo "$HOOK_TIMEOUT" >"$SHARE/hook-timeout"
say "booting the VM (software emulation; console: $RUN/console.log)"
T_BOOT=$(date +%s.%N)
set +e
SHARE=$SHARE LOG=$RUN/console.log TIMEOUT=$TIMEOUT "$HERE/boot.sh"
qrc=$?
set -e
BOOT_S=$(elapsed "$T_BOOT")

# ---------------------------------------------------------------- verdict
EXPECTED="install unit-verify start privileges group-access site dns resolved doctor reload
restart-dnsd kill9-proxyd kill9-dnsd kill9-queued upgrade journal security stop start-again
notify-variant purge resolv-conf"
RES=$SHARE/out/results.txt
touch "$RES"
fails=0
echo
echo "== tests/systemd-vm: $(dpkg-deb -f "$DEB1" Package) $V1 -> $V2 under systemd in a VM"
grep -E '^(PASS|FAIL|SKIP) ' "$RES" || true
fails=$(grep -c '^FAIL ' "$RES" || true)
for s in $EXPECTED; do
  if ! grep -qE "^(PASS|FAIL|SKIP) $s( |:|$)" "$RES"; then
    echo "FAIL $s: not reached"
    fails=$((fails + 1))
  fi
done
if ! grep -q '^END ' "$RES"; then
  echo "FAIL guest: the checks did not finish (qemu exit $qrc$([[ $qrc == 124 ]] && echo ": timeout after $TIMEOUT s"); see $RUN/console.log)"
  fails=$((fails + 1))
elif [[ $qrc != 0 ]]; then
  echo "FAIL vm: qemu exited $qrc$([[ $qrc == 124 ]] && echo " (timeout after $TIMEOUT s)")"
  fails=$((fails + 1))
fi
cp "$SHARE"/out/*.txt "$SHARE"/out/*.log "$RUN/" 2>/dev/null || true
if [[ -s $RUN/journal.txt ]]; then
  echo "== per-process journal identifiers (in the guest)"
  sed 's/^/   /' "$RUN/journal.txt"
fi
if [[ -s $RUN/security.txt ]]; then
  echo "== systemd-analyze security securely.service (in the guest)"
  sed 's/^/   /' "$RUN/security.txt"
fi
rm -rf "$VM_DIR/last-run"
ln -sfn "$RUN" "$VM_DIR/last-run"
echo "== timing: image ${IMG_S} s ($IMG_STATE), VM boot + checks + poweroff ${BOOT_S} s, total $(elapsed "$T0") s"
echo "== logs: $RUN (console.log, hook.log, results.txt, security.txt, load-*.txt)"
rm -rf "$SHARE/debs"
# keep the logs of the last 5 runs
ls -dt "$VM_DIR"/runs/run.* 2>/dev/null | tail -n +6 | xargs -r rm -rf
if ((fails)); then
  echo "RESULT: FAIL ($fails failed)"
  exit 1
fi
echo "RESULT: PASS"
