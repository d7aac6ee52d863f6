#!/usr/bin/env bash
# Installs what the real-kernel test guest needs on Debian 12 (run as root): qemu-system-x86 from
# bookworm-backports, busybox-static and cpio. criu itself comes with run.sh's package list.
#
# qemu comes from backports through a private apt sources folder and a private lists folder
# (apt's -o Dir::Etc::sourceparts / Dir::State::Lists), so the system's sources stay unchanged and
# bookworm's qemu 7.2 does not replace the machine's qemu-utils from backports. Anything already
# present is left alone; with nothing missing (and apt lists that know linux-image-amd64, which
# prepare.sh needs) this script does nothing and needs no network.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)

# prepare.sh finds the guest kernel through the system's apt lists (apt-cache depends
# linux-image-amd64); make sure they know it.
if [ "$(id -u)" = 0 ] && ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    echo "== apt-get update (the apt lists do not know linux-image-amd64)"
    timeout 600 apt-get update -qq
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "== guest tools present (qemu-system-x86_64, static busybox, cpio)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "== not root: not installing ${missing[*]}; the guest tests will say skipped"
    exit 0
fi

echo "== installing guest tools: ${missing[*]}"
apt_dir=$(realpath -m target/guest/apt)
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial"
# The machine's own suites plus bookworm-backports.
{
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] && cat "$f" && echo
    done
    echo "Types: deb"
    echo "URIs: http://deb.debian.org/debian"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
} >"$apt_dir/sources.list.d/pagestream-guest.sources"
if [ -e /etc/apt/sources.list ]; then
    grep -E '^deb ' /etc/apt/sources.list >"$apt_dir/sources.list.d/system.list" || true
fi

apt_opts=(
    -o "Dir::Etc::sourcelist=/dev/null"
    -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
)
timeout 600 apt-get "${apt_opts[@]}" update -qq
# -t bookworm-backports: qemu-system-x86 and the parts of it that must match (qemu-system-common,
# -data, seabios) come from backports; everything else from the release, as backports has no other
# candidates. --no-remove makes apt refuse, instead of silently doing it, any plan that would remove
# installed packages such as qemu-utils.
DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get "${apt_opts[@]}" install -y -qq \
    --no-install-recommends --no-remove -t bookworm-backports "${missing[@]}" >/dev/null
command -v qemu-system-x86_64 >/dev/null && echo "== $(qemu-system-x86_64 --version | head -1)"
