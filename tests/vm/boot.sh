#!/usr/bin/env bash
# Boots pagestream's test guest once: Debian 12's kernel under qemu (TCG), the cached base
# initramfs from prepare.sh plus a small per-run archive with the given binaries, files and
# scenario scripts, which the guest's /init runs one after the other. The serial console is the
# only channel back; it is saved to RUN_DIR/console.log for the caller to parse.
#
# Usage: tests/vm/boot.sh MANIFEST RUN_DIR [CACHE]
# MANIFEST has one item a line (no spaces inside fields):
#   bin NAME HOST_PATH              executable -> /guest/bin/NAME (on PATH), with its libraries
#   file GUEST_PATH HOST_PATH       any file   -> GUEST_PATH
#   scenario NAME TIMEOUT_S SCRIPT  a busybox sh script, run in order with its own timeout
# Environment: PAGESTREAM_GUEST_MEM (default 2G), PAGESTREAM_GUEST_CPUS (default 2).
# Exit status: 0 when the guest reached its "done" marker, 1 otherwise (reason on stderr).
# Runs are serialised through a lock under CACHE: this machine cannot afford two TCG guests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ $# -ge 2 ] || die "usage: boot.sh MANIFEST RUN_DIR [CACHE]"
manifest=$(realpath "$1")
run=$(realpath -m "$2")
cache=$(realpath -m "${3:-$here/../../target/guest}")
command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 is not installed (tests/vm/install.sh)"

base=$("$here/prepare.sh" "$cache" | tail -1) || die "preparing the guest failed"

# --- the per-run archive -------------------------------------------------------------------------
rm -rf "$run"
stage="$run/stage"
mkdir -p "$stage/guest/bin" "$stage/guest/scenarios"
total=0
n=0
while read -r kind a b c rest; do
    case "$kind" in
    '' | '#'*) continue ;;
    bin) copy_exe "$stage" "$b" "/guest/bin/$a" ;;
    file)
        [[ "$a" == /* ]] || die "guest path must be absolute: $a"
        mkdir -p "$stage/$(dirname "$a")"
        cp -L "$b" "$stage/$a"
        ;;
    scenario)
        [[ "$a" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad scenario name: $a"
        [[ "$b" =~ ^[0-9]+$ ]] || die "bad timeout for $a: $b"
        n=$((n + 1))
        slot=$(printf '%03d-%s' "$n" "$a")
        cp "$c" "$stage/guest/scenarios/$slot.sh"
        echo "$b" >"$stage/guest/scenarios/$slot.timeout"
        total=$((total + b))
        ;;
    *) die "unknown manifest line: $kind $a $b $c $rest" ;;
    esac
done <"$manifest"
[ "$n" -gt 0 ] || die "the manifest names no scenario"
make_cpio "$stage" "$run/run.cpio"
cat "$base/base.cpio.gz" "$run/run.cpio" >"$run/initrd"
rm -rf "$stage" "$run/run.cpio"

# --- the boot --------------------------------------------------------------------------------------
# Boot and module loading take 10-20 s under TCG; allow generously for a busy machine.
limit=$((total + 120))
exec 9>"$cache/run.lock"
timeout 1800 flock 9 || die "timed out waiting for another guest run ($cache/run.lock)"
say "booting ($n scenario(s), limit ${limit}s)"
status=0
timeout -k 10 "$limit" qemu-system-x86_64 \
    -accel tcg,thread=multi,tb-size=256 -cpu max \
    -m "${PAGESTREAM_GUEST_MEM:-2G}" -smp "${PAGESTREAM_GUEST_CPUS:-2}" \
    -display none -monitor none -serial "file:$run/console.log" \
    -no-reboot -nic none \
    -kernel "$base/vmlinuz" -initrd "$run/initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init" \
    </dev/null >"$run/qemu.log" 2>&1 || status=$?
rm -f "$run/initrd"
if ! grep -q '^=== pagestream-guest done' "$run/console.log" 2>/dev/null; then
    [ "$status" = 124 ] || [ "$status" = 137 ] && die "guest did not finish within ${limit}s"
    die "guest stopped early (qemu status $status): $(tail -c 300 "$run/qemu.log" 2>/dev/null | tr '\n' ' ')"
fi
exit 0
