#!/usr/bin/env bash
# Build (or reuse) a minimal Debian bookworm VM for tests/systemd-vm/run.sh: systemd as PID 1,
# systemd-resolved, the Debian kernel + initramfs, and what the guest checks use (curl, dig,
# jq, python3 for a backend, iproute2, procps). Adapted from the shared VM scripts; the
# project carries its own copy.
#
# Output under $VM_DIR: vmlinuz initrd.img rootfs.img (raw ext4, built with mkfs.ext4 -d:
# no loop device, no mount). Cached: the debootstrapped tree is kept while the package list
# is unchanged, the image while this script is unchanged too.
#
# Env: VM_DIR (default ${TMPDIR:-/tmp}/securely-vm)  SUITE=bookworm  IMG_SIZE=3G
#      MIRROR (default: the one apt uses)  EXTRA_PACKAGES="pkg pkg ..." (added to the image,
#      e.g. the tested package's dependencies)  REBUILD=1 (start from scratch)
# Needs: debootstrap, e2fsprogs (mkfs.ext4 -d), root.
set -euo pipefail
VM_DIR=${VM_DIR:-${TMPDIR:-/tmp}/securely-vm}
SUITE=${SUITE:-bookworm}
IMG_SIZE=${IMG_SIZE:-3G}
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# systemd-resolved is its own package in bookworm (resolvectl, the stub on 127.0.0.53);
# dbus carries resolvectl's and systemctl's calls; man-db lets `systemd-analyze verify`
# check the unit's Documentation=man:... pages; the rest serve the guest checks.
BASE_PACKAGES="systemd systemd-sysv systemd-resolved dbus udev kmod linux-image-amd64
initramfs-tools procps iproute2 curl bind9-dnsutils jq python3 adduser man-db"
PACKAGES=$(printf '%s\n' $BASE_PACKAGES ${EXTRA_PACKAGES:-} | sort -u | tr '\n' ' ')
PACKAGES=${PACKAGES% }

ROOT=$VM_DIR/rootfs
mkdir -p "$VM_DIR"
[[ ${REBUILD:-0} == 1 ]] && rm -rf "$ROOT" "$VM_DIR/rootfs.key" "$VM_DIR/image.key" "$VM_DIR/rootfs.img"

ROOT_KEY=$(printf '%s|%s|%s' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
IMAGE_KEY=$(printf '%s|%s|%s' "$ROOT_KEY" "$IMG_SIZE" "$(sha256sum <"$0")" | sha256sum | cut -c1-16)
if [[ -f $VM_DIR/rootfs.img && -f $VM_DIR/vmlinuz && -f $VM_DIR/initrd.img &&
      $(cat "$VM_DIR/image.key" 2>/dev/null) == "$IMAGE_KEY" ]]; then
  echo "vm image: cached ($VM_DIR, key $IMAGE_KEY)" >&2
  exit 0
fi

T0=$(date +%s)
if [[ ! -x $ROOT/sbin/init || $(cat "$VM_DIR/rootfs.key" 2>/dev/null) != "$ROOT_KEY" ]]; then
  echo "vm image: debootstrap $SUITE from $MIRROR (a few minutes)" >&2
  rm -rf "$ROOT" "$VM_DIR/rootfs.key"
  # minbase + systemd as init + Debian's kernel (its postinst builds the initramfs in the chroot)
  if ! debootstrap --variant=minbase --include="${PACKAGES// /,}" \
      "$SUITE" "$ROOT" "$MIRROR" >"$VM_DIR/debootstrap.log" 2>&1; then
    tail -30 "$VM_DIR/debootstrap.log" >&2
    echo "vm image: debootstrap failed (log: $VM_DIR/debootstrap.log)" >&2
    exit 1
  fi
  # debootstrap leaves the downloaded .debs in the tree; not needed in the image
  rm -f "$ROOT"/var/cache/apt/archives/*.deb
  echo "$ROOT_KEY" >"$VM_DIR/rootfs.key"
fi
T1=$(date +%s)
echo "vm image: rootfs ready in $((T1 - T0)) s" >&2

# ---------- guest configuration ----------
echo securely-vm >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 securely-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$ROOT/etc/fstab"
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
mask() { ln -sf /dev/null "$ROOT/etc/systemd/system/$1"; }
# no gettys: the console belongs to the test runner
mask serial-getty@ttyS0.service
mask getty@tty1.service
# the guest has no network device (-nic none) and wants none; resolved stays (it is tested)
mask systemd-networkd.service
mask systemd-networkd-wait-online.service
mask systemd-timesyncd.service
mask apt-daily.timer
mask apt-daily-upgrade.timer
mask e2scrub_reap.service
mask man-db.timer

# systemd-resolved answers "Network is down" for its global DNS servers (DNS= in
# resolved.conf, where the package's drop-in puts dnsd) while no link has a routable
# address (dns_scope_network_good -> manager_routable), and this guest has no NIC. A real
# host always has one; give the guest a dummy interface with a documentation address
# (RFC 5737), which carries no traffic.
cat >"$ROOT/etc/systemd/system/vm-dummy-net.service" <<'EOF'
[Unit]
Description=tests/systemd-vm: a dummy link with a routable address (no traffic)
DefaultDependencies=no
After=systemd-udevd.service
Before=network.target systemd-resolved.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link add vmnet0 type dummy
ExecStart=/sbin/ip address add 192.0.2.10/24 dev vmnet0
ExecStart=/sbin/ip link set vmnet0 up

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/vm-dummy-net.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/vm-dummy-net.service"

# The runner: mounts the host's share (virtio-9p, tag host0) and runs its guest-hook.sh as
# root, bounded by the share's hook-timeout (default 900 s); the hook's output goes to the
# share (out/hook.log) and to the serial console; then the guest powers off.
cat >"$ROOT/usr/local/bin/securely-vm-runner" <<'EOF'
#!/bin/sh
exec >/dev/ttyS0 2>&1
echo "@@RUNNER begin uptime=$(cut -d' ' -f1 /proc/uptime) pid1=$(cat /proc/1/comm)"
mkdir -p /mnt/host
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt/host; then
  if [ -x /mnt/host/guest-hook.sh ]; then
    mkdir -p /mnt/host/out
    limit=$(cat /mnt/host/hook-timeout 2>/dev/null || echo 900)
    timeout -k 10 "$limit" /mnt/host/guest-hook.sh 2>&1 | tee /mnt/host/out/hook.log
    rc=$(cat /mnt/host/out/hook.rc 2>/dev/null || echo "none")
    echo "@@RUNNER hook done (its rc: $rc)"
  else
    echo "@@RUNNER no guest-hook.sh in the share"
  fi
  sync
  umount /mnt/host
else
  echo "@@RUNNER no 9p share"
fi
echo "@@RUNNER end uptime=$(cut -d' ' -f1 /proc/uptime)"
systemctl poweroff
EOF
chmod 755 "$ROOT/usr/local/bin/securely-vm-runner"

cat >"$ROOT/etc/systemd/system/securely-vm-runner.service" <<'EOF'
[Unit]
Description=tests/systemd-vm: run the host's guest-hook.sh, then power off
After=multi-user.target systemd-resolved.service dbus.service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/securely-vm-runner
StandardOutput=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/securely-vm-runner.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/securely-vm-runner.service"
ln -sf /lib/systemd/system/multi-user.target "$ROOT/etc/systemd/system/default.target"

# ---------- kernel, initramfs, ext4 image ----------
K=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)
I=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -1)
cp "$K" "$VM_DIR/vmlinuz"
cp "$I" "$VM_DIR/initrd.img"
rm -f "$VM_DIR/rootfs.img" "$VM_DIR/image.key"
mkfs.ext4 -q -F -L root -d "$ROOT" "$VM_DIR/rootfs.img" "$IMG_SIZE"
echo "$IMAGE_KEY" >"$VM_DIR/image.key"
T2=$(date +%s)
echo "vm image: built in $((T2 - T0)) s ($(du -sh "$ROOT" | cut -f1) rootfs, kernel $(basename "$K"), key $IMAGE_KEY)" >&2
