#!/usr/bin/env bash
# Makes Debian 13 (trixie)'s criu 4.1.1 runnable on this Debian 12 host without installing it, for
# tests: target/criu4/criu is a wrapper that starts the extracted criu through trixie's own dynamic
# loader.
#
# Why: bookworm's criu 3.17 (/usr/sbin/criu, left alone) fails on newer kernels with vdso errors;
# trixie's 4.1.1 knows the new vDSO layout (see /work/shared/docs/vm-criu.md, "A second, faster
# option on the host itself"). Trixie's criu needs a newer glibc than the host has, so it cannot
# simply be copied next to the host's libraries.
#
# How: a private apt configuration (private sources folder, lists folder and an empty dpkg status
# file under target/criu4/apt, through apt's -o Dir::Etc::sourceparts / Dir::State::Lists /
# Dir::State::status) knows trixie only; the system's apt configuration and lists stay unchanged.
# `apt-cache depends --recurse` gives criu's Depends closure (libc6 included), `apt-get download`
# fetches those .debs, and `dpkg -x` unpacks each into target/criu4/root. Nothing is installed.
# The wrapper runs
#   <root>/usr/lib64/ld-linux-x86-64.so.2 --library-path <root's lib dirs> <root>/usr/sbin/criu "$@"
# so /proc/self/exe of the criu process is the loader, not criu. That does not matter for check,
# dump, restore, page-server or lazy-pages (criu does not re-execute itself there); it would matter
# for libcriu/`criu swrk` users that exec "criu" from PATH, which the tests do not use.
#
# Idempotent: with target/criu4/criu present and working, it only prints the version (no network).
# Not root: prints a "skipped" line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."

base=$(realpath -m target/criu4)
root="$base/root"
wrapper="$base/criu"

if [ "$(id -u)" != 0 ]; then
    echo "== not root: skipped installing trixie's criu 4.1.1 into target/criu4"
    exit 0
fi

if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
    echo "== trixie criu present: $("$wrapper" --version | head -1)"
    exit 0
fi

apt_dir="$base/apt"
debs="$base/debs"
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$debs"
# The trixie archive key is in bookworm's debian-archive-keyring (13/trixie automatic, security
# and stable release keys), so Signed-By works without Trusted: yes.
cat >"$apt_dir/sources.list.d/pagestream-criu4.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# Empty dpkg status: apt resolves against trixie alone and ignores what the host has installed
# (criu 3.17, bookworm's libc6), so every candidate is trixie's.
: >"$apt_dir/status"

apt_opts=(
    -o "Dir::Etc::sourcelist=/dev/null"
    -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache::archives=$apt_dir/archives"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
)
echo "== apt-get update (private trixie lists in target/criu4/apt)"
timeout 600 apt-get "${apt_opts[@]}" update -qq

# criu's Depends/Pre-Depends closure in trixie (libc6, libgnutls30t64 and its crypto libraries,
# libnftables1, libnl-3-200, libnet1, libprotobuf-c1, libbsd0, libcompel1, ...). Recommends
# (iproute2, python3-pycriu) are not needed for dumping and restoring plain processes.
mapfile -t pkgs < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -E '^[a-z0-9]' | sort -u)
echo "== downloading ${#pkgs[@]} packages from trixie: ${pkgs[*]}"
rm -f "$debs"/*.deb
# APT::Sandbox::User=root: the download folder under the repo need not be reachable for _apt
# (apt would fall back to root with a warning anyway).
(cd "$debs" && timeout 600 apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root download -qq "${pkgs[@]}")

rm -rf "$root"
mkdir -p "$root"
for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$root"
done

# Trixie ships the loader as /usr/lib64/ld-linux-x86-64.so.2 (usr-merged); the /lib64 link would
# come from base-files, which is not unpacked here.
ld_so=
for cand in "$root/usr/lib64/ld-linux-x86-64.so.2" "$root/lib64/ld-linux-x86-64.so.2"; do
    if [ -e "$cand" ]; then ld_so=$cand; break; fi
done
[ -n "$ld_so" ] || { echo "no ld-linux-x86-64.so.2 in $root" >&2; exit 1; }
lib_dirs=()
for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 usr/lib64 lib usr/lib; do
    [ -d "$root/$d" ] && lib_dirs+=("$root/$d")
done
lib_path=$(IFS=:; echo "${lib_dirs[*]}")

# Every shared library criu needs must resolve inside root.
libs=$("$ld_so" --library-path "$lib_path" --list "$root/usr/sbin/criu")
if grep 'not found' <<<"$libs"; then
    echo "criu 4.1.1 is missing libraries (above)" >&2
    exit 1
fi

cat >"$wrapper.tmp" <<WRAP
#!/bin/sh
# Generated by tests/criu4/install.sh: trixie's criu 4.1.1 through trixie's own loader.
exec "$ld_so" --library-path "$lib_path" "$root/usr/sbin/criu" "\$@"
WRAP
chmod +x "$wrapper.tmp"
version=$("$wrapper.tmp" --version | head -1)
mv "$wrapper.tmp" "$wrapper"
echo "== trixie criu installed in target/criu4: $version"
