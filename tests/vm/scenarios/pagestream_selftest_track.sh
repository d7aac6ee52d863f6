# Scenario: pagestream's soft-dirty tracker against ground truth on Debian's 6.1 kernel
# (clear_refs + /proc/PID/pagemap bit 55, read and cleared with the threads ptrace-stopped: this
# kernel predates PAGEMAP_SCAN): every page the workload wrote in each round must be reported.
# uffd-wp must say SKIPPED (no PAGEMAP_SCAN before 6.7). THP stays at the kernel's default:
# soft-dirty may over-report after khugepaged, never miss. (digest is proven on the host.)
. /guest/lib.sh
pagestream selftest track --tracker soft-dirty >selftest.log 2>&1
status=$?
pagestream selftest track --tracker uffd-wp >>selftest.log 2>&1 || true
cat selftest.log
echo "selftest status=$status"
[ "$status" = 0 ] || fail "pagestream selftest track --tracker soft-dirty failed"
grep -q '^soft-dirty: PASS' selftest.log || fail "soft-dirty did not pass"
grep -q '^uffd-wp: SKIPPED' selftest.log || fail "uffd-wp should be unavailable on 6.1"
