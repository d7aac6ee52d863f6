# Scenario: soft-dirty tracking works. A paused workload's pages are all soft-dirty after its
# first fill (pagemap bit 55); writing "4" to /proc/PID/clear_refs clears every one; after the
# workload writes some pages, exactly those pages are soft-dirty again. Transparent huge pages are
# off so that dirtiness is per 4 KiB page and the sets can be compared exactly.
. /guest/lib.sh
echo never >/sys/kernel/mm/transparent_hugepage/enabled || fail "cannot turn THP off"
mkfifo in
(setsid pagestream-workload --size 4M --pattern seq --rate 1000 --report-ms 600000 --paused \
    <in >w.log 2>&1 &)
exec 3>in
wait_until 60 grep -q '^ready pid=' w.log || fail "workload did not start: $(cat w.log)"
pid=$(sed -n 's/^ready pid=\([0-9]*\) .*/\1/p' w.log)
base=$(sed -n 's/^ready .* base=\(0x[0-9a-f]*\) .*/\1/p' w.log)
pages=$(sed -n 's/^ready .* pages=\([0-9]*\) .*/\1/p' w.log)
echo "workload pid=$pid base=$base pages=$pages"

# soft_dirty_runs: the soft-dirty pages of the workload's region, as "<count> <addr>+<n>,...".
soft_dirty_runs() {
    dd if="/proc/$pid/pagemap" bs=8 skip=$((base / 4096)) count="$pages" 2>/dev/null |
        od -An -v -t x1 -w8 |
        awk -v base="$((base))" '
            function hex(n) { s = ""; do { s = substr("0123456789abcdef", n % 16 + 1, 1) s; n = int(n / 16) } while (n > 0); return "0x" s }
            { dirty = index("0123456789abcdef", substr($7, 1, 1)) > 8 }
            dirty && start < 0 { start = NR - 1 }
            !dirty && start >= 0 { out = out sep hex(base + start * 4096) "+" (NR - 1 - start); sep = ","; count += NR - 1 - start; start = -1 }
            BEGIN { start = -1; count = 0 }
            END { if (start >= 0) { out = out sep hex(base + start * 4096) "+" (NR - start); count += NR - start }
                  print count " " out; if (NR == 0) exit 1 }'
}

runs=$(soft_dirty_runs) || fail "cannot read /proc/$pid/pagemap"
# shellcheck disable=SC2086 # split "<count> <runs>" into $1 $2
set -- $runs
echo "after fill: soft-dirty $*"
[ "$1" = "$pages" ] || fail "after the first fill $1 of $pages pages are soft-dirty"

echo mark >&3
wait_until 10 grep -q '^marked' w.log || fail "workload did not answer mark"
echo 4 >"/proc/$pid/clear_refs" || fail "cannot write /proc/$pid/clear_refs"
runs=$(soft_dirty_runs) || fail "cannot read /proc/$pid/pagemap"
# shellcheck disable=SC2086
set -- $runs
echo "after clear_refs: soft-dirty $*"
[ "$1" = 0 ] || fail "$1 pages still soft-dirty after clear_refs 4"

echo resume >&3
sleep 0.3
echo pause >&3
echo written >&3
wait_until 10 grep -q '^written ' w.log || fail "workload did not answer written"
written=$(sed -n 's/^written //p' w.log)
dirty=$(soft_dirty_runs) || fail "cannot read /proc/$pid/pagemap"
echo "workload wrote: $written"
echo "soft-dirty now: $dirty"
[ "${written%% *}" -gt 0 ] || fail "the workload wrote nothing while resumed"
[ "$written" = "$dirty" ] || fail "soft-dirty pages differ from the pages written"
echo exit >&3
