# Scenario: `criu check` passes on Debian 12's stock kernel with the modules init loaded.
# (The two "exited, status=1" lines come from iptables probes: there is no iptables in the guest.)
. /guest/lib.sh
run criu --version
criu check >check.log 2>&1
status=$?
cat check.log
echo "criu check status=$status"
[ "$status" = 0 ] || fail "criu check failed"
grep -q '^Looks good' check.log || fail "criu check did not say 'Looks good'"
