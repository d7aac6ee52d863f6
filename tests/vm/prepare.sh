#!/usr/bin/env bash
# Prepares the parts of the test guest that do not change between runs, cached under CACHE
# (default target/guest) and rebuilt only when an input changed:
#   - Debian 12's stock kernel: the linux-image-6.1.0-NN-amd64 package that linux-image-amd64
#     names, fetched with `apt-get download` and unpacked with `dpkg -x` (never installed); only
#     vmlinuz and the modules CRIU needs (with their depends= chains) are kept;
#   - the base initramfs: static busybox, /usr/sbin/criu with its libraries, those modules with a
#     busybox `depmod` index, and the guest's /init (tests/vm/init).
# Prints the folder holding `vmlinuz` and `base.cpio.gz` as its last line. Exits non-zero with a
# one-line reason on stderr when something cannot be had (the tests turn that into "skipped").
#
# Usage: tests/vm/prepare.sh [CACHE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cache=$(realpath -m "${1:-$here/../../target/guest}")
mkdir -p "$cache/kernel"

# Modules that are =m in Debian's 6.1 config and without which every criu command fails in
# kerndat ("Unable to initialize Netlink socket"). Their dependencies are added from modules.dep.
modules=(crc32c_generic nfnetlink libcrc32c nf_tables tun inet_diag tcp_diag udp_diag raw_diag
    unix_diag netlink_diag af_packet_diag veth)

for tool in busybox cpio dpkg apt-get gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (tests/vm/install.sh installs the guest tools)"
done
busybox=$(command -v busybox)
LC_ALL=C ldd "$busybox" >/dev/null 2>&1 && die "$busybox is not static (install busybox-static)"
[ -x /usr/sbin/criu ] || die "/usr/sbin/criu is missing (apt-get install criu)"

exec 9>"$cache/prepare.lock"
timeout 900 flock 9 || die "timed out waiting for $cache/prepare.lock"

# --- the kernel package ------------------------------------------------------------------------
pkg=$(timeout 60 apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
deb=
if [ -n "$pkg" ]; then
    ver=$(timeout 60 apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/ { print $2; exit }') || true
    [ -n "$ver" ] || die "apt-cache knows $pkg but not its version"
    deb="$cache/kernel/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ ! -s "$deb" ]; then
        say "downloading $pkg $ver"
        (cd "$cache/kernel" && timeout 600 apt-get download -q=2 -o APT::Sandbox::User=root "$pkg=$ver") ||
            die "apt-get download $pkg=$ver failed"
        [ -s "$deb" ] || die "apt-get download did not produce $deb"
    fi
else
    # No apt lists (apt-get update never ran, or not as root): use a package fetched earlier.
    deb=$(find "$cache/kernel" -maxdepth 1 -name 'linux-image-*.deb' -printf '%T@ %p\n' 2>/dev/null |
        sort -n | tail -1 | cut -d' ' -f2-)
    [ -n "$deb" ] || die "apt-cache knows no linux-image-amd64 (run apt-get update as root) and none is cached"
fi

kdir="$cache/kernel/$(basename "$deb" .deb)"
if [ ! -e "$kdir/.complete" ]; then
    say "unpacking $(basename "$deb")"
    rm -rf "$kdir" "$kdir.tmp"
    mkdir -p "$kdir.tmp/x"
    timeout 300 dpkg -x "$deb" "$kdir.tmp/x" || die "dpkg -x $deb failed"
    kver=$(basename "$(find "$kdir.tmp/x/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -1)")
    if [ -z "$kver" ] || [ ! -f "$kdir.tmp/x/boot/vmlinuz-$kver" ]; then die "no kernel in $deb"; fi
    src="$kdir.tmp/x/lib/modules/$kver"
    dst="$kdir.tmp/modules/lib/modules/$kver"
    mkdir -p "$dst"
    cp "$kdir.tmp/x/boot/vmlinuz-$kver" "$kdir.tmp/vmlinuz"
    # No modules.dep ships in the package (depmod writes it at install time): follow each module's
    # "depends=" field of its .modinfo section from the wanted names to a closed set.
    declare -A path_of=() seen=()
    while read -r path; do
        n=$(basename "$path")
        n=${n%%.ko*}
        path_of[${n//-/_}]=$path
    done < <(cd "$src" && find kernel -name '*.ko*')
    todo=("${modules[@]}")
    while [ ${#todo[@]} -gt 0 ]; do
        m=${todo[0]//-/_}
        todo=("${todo[@]:1}")
        [ -n "${seen[$m]:-}" ] && continue
        seen[$m]=1
        path=${path_of[$m]:-}
        [ -n "$path" ] || die "module $m is not in $(basename "$deb")"
        [[ "$path" == *.ko ]] || die "compressed module $path: not supported by this script"
        mkdir -p "$dst/$(dirname "$path")"
        cp "$src/$path" "$dst/$path"
        deps=$(tr '\0' '\n' <"$src/$path" | grep -a -m1 '^depends=' || true)
        deps=${deps#depends=}
        for dep in ${deps//,/ }; do todo+=("$dep"); done
    done
    for f in modules.builtin modules.builtin.modinfo modules.order; do
        [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
    done
    echo "$kver" >"$kdir.tmp/kver"
    printf '%s\n' "${modules[@]}" >"$kdir.tmp/load"
    rm -rf "$kdir.tmp/x"
    touch "$kdir.tmp/.complete"
    mv "$kdir.tmp" "$kdir"
    say "kernel $kver: $(find "$kdir/modules" -name '*.ko*' | wc -l) modules kept"
fi
kver=$(cat "$kdir/kver")
# A newer kernel package replaced older ones: drop those (about 70 MB each).
find "$cache/kernel" -mindepth 1 -maxdepth 1 ! -name "$(basename "$deb")" ! -name "$(basename "$kdir")" \
    -exec rm -rf {} +

# --- the base initramfs --------------------------------------------------------------------------
criu_libs=$(ldd_libs /usr/sbin/criu)
# shellcheck disable=SC2086
hash=$({
    echo "$(basename "$deb") ${modules[*]}"
    sha256sum "$here/prepare.sh" "$here/lib.sh" "$here/init" "$here/guest-lib.sh" "$busybox" \
        /usr/sbin/criu $criu_libs | cut -d' ' -f1
} | sha256sum | cut -c1-16)
base="$cache/base-$hash"
if [ ! -e "$base/.complete" ]; then
    say "building base initramfs $hash"
    rm -rf "$base" "$base.tmp"
    stage="$base.tmp/stage"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,var,etc,root,guest}
    ln -s ../run "$stage/var/run"
    cp "$busybox" "$stage/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
    done
    copy_exe "$stage" /usr/sbin/criu /usr/sbin/criu
    cp -a "$kdir/modules/lib" "$stage/"
    timeout 60 "$busybox" depmod -b "$stage" "$kver" || die "busybox depmod failed"
    cp "$kdir/load" "$stage/etc/guest-modules"
    cp "$here/init" "$stage/init"
    chmod 0755 "$stage/init"
    cp "$here/guest-lib.sh" "$stage/guest/lib.sh"
    echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
    echo "root:x:0:" >"$stage/etc/group"
    make_cpio "$stage" "$base.tmp/base.cpio"
    timeout 120 gzip -1 -n "$base.tmp/base.cpio"
    # A following archive must start 4-byte aligned: pad with zeros, which the kernel skips.
    size=$(stat -c %s "$base.tmp/base.cpio.gz")
    head -c $(((512 - size % 512) % 512)) /dev/zero >>"$base.tmp/base.cpio.gz"
    cp "$kdir/vmlinuz" "$base.tmp/vmlinuz"
    rm -rf "$stage"
    touch "$base.tmp/.complete"
    mv "$base.tmp" "$base"
    # Older bases are dead weight once their inputs changed.
    find "$cache" -maxdepth 1 -name 'base-*' ! -name "base-$hash" -exec rm -rf {} +
fi
echo "$base"
