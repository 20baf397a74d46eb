#!/usr/bin/env bash
# Boot the VM built by build-image.sh with SHARE exported over virtio-9p (tag host0); the
# guest runs SHARE/guest-hook.sh as root under systemd (PID 1) and powers off. No network
# device (-nic none). The console goes to $LOG, each line timestamped (seconds since qemu
# started); console lines starting with PASS, FAIL, SKIP, INFO:, STEP or @@ are echoed to stderr
# as they come. Exit status: qemu's (124 = hit TIMEOUT).
#
# Env: VM_DIR (default ${TMPDIR:-/tmp}/securely-vm)  SHARE (required)  LOG (default
#      $VM_DIR/console.log)  ACCEL=tcg|kvm (default tcg)  CPU (max under tcg, qemu64 under
#      kvm)  SMP=2  MEM=2048  TIMEOUT=1200 (hard wall-clock cap, seconds)
set -uo pipefail
VM_DIR=${VM_DIR:-${TMPDIR:-/tmp}/securely-vm}
: "${SHARE:?SHARE=dir to export to the guest}"
ACCEL=${ACCEL:-tcg}
SMP=${SMP:-2}
MEM=${MEM:-2048}
TIMEOUT=${TIMEOUT:-1200}
LOG=${LOG:-$VM_DIR/console.log}
if [[ $ACCEL == kvm ]]; then
  CPU=${CPU:-qemu64}
  ACCEL_OPT=(-accel kvm)
else
  CPU=${CPU:-max}
  ACCEL_OPT=(-accel tcg,thread=multi)
fi
APPEND=${APPEND:-"console=ttyS0 root=/dev/vda rw panic=-1 systemd.show_status=0 loglevel=4"}

# -snapshot: guest writes go to a throw-away overlay (in $TMPDIR), the image stays pristine
export TMPDIR=$VM_DIR
cmd=(qemu-system-x86_64 "${ACCEL_OPT[@]}" -cpu "$CPU" -smp "$SMP" -m "$MEM"
  -nographic -nodefaults -no-reboot -serial stdio -nic none
  -kernel "$VM_DIR/vmlinuz" -initrd "$VM_DIR/initrd.img" -append "$APPEND"
  -snapshot -drive "file=$VM_DIR/rootfs.img,format=raw,if=virtio,cache=unsafe"
  -virtfs "local,path=$SHARE,mount_tag=host0,security_model=none,id=host0")
echo "${cmd[*]}" >"$LOG.cmd"

timeout --foreground -k 5 "$TIMEOUT" "${cmd[@]}" </dev/null 2>&1 | python3 -u -c '
import re, sys, time
t0 = time.monotonic()
show = re.compile(r"^(PASS |FAIL |SKIP |INFO: |STEP |@@)")
with open(sys.argv[1], "w") as log:
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
        stamp = "[%8.3f]" % (time.monotonic() - t0)
        log.write("%s %s\n" % (stamp, line))
        log.flush()
        if show.match(line):
            sys.stderr.write("  %s %s\n" % (stamp, line))
' "$LOG"
exit "${PIPESTATUS[0]}"
