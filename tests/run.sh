#!/usr/bin/env bash
# Installs what pagestream's test suite needs on Debian 12 (when run as root) and runs all of it:
# formatting, clippy with warnings as errors, and every unit, property and integration test.
# Tests whose tools cannot be installed (not root) print "skipped: <reason>"; as root, or in CI,
# those tools are required and their absence is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v crit >/dev/null 2>&1 || packages+=(criu)   # crit: CRIU's image tool, for interop tests
dpkg -s libclang-dev >/dev/null 2>&1 || packages+=(libclang-dev)   # bindgen of the userfaultfd crate
command -v tc >/dev/null 2>&1 || packages+=(iproute2)   # ip, tc: the shaped link of bench stream
command -v python3 >/dev/null 2>&1 || packages+=(python3)   # bench stream's python heap workload

if [ "$(id -u)" = 0 ]; then
    if [ ${#packages[@]} -gt 0 ]; then
        echo "== installing ${packages[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    fi
    # The real-kernel test guest (tests/guest_*.rs): qemu from bookworm-backports, busybox-static,
    # cpio. A failed install does not stop the suite: the guest tests then fail, naming the reason.
    bash tests/vm/install.sh || echo "== installing the guest tools failed; the guest tests will fail"
    # CRIU 4.1.1 from Debian 13, extracted under target/criu4 (not installed): real CRIU on the
    # host kernel for tests/criu4_host.rs. A failed download makes those tests fail, naming it.
    bash tests/criu4/install.sh || echo "== extracting CRIU 4.1.1 failed; the criu4 host tests will fail"
    export PAGESTREAM_REQUIRE="${PAGESTREAM_REQUIRE:-crit,qemu,criu4,tc,python3}"
elif [ ${#packages[@]} -gt 0 ]; then
    echo "== not root: not installing ${packages[*]}; the tests that need them will say skipped"
fi

for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
