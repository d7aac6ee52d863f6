# Scenario: two `criu pre-dump --track-mem` rounds and a final `criu dump --track-mem
# --prev-images-dir`, then restore. Soft-dirty tracking makes the later rounds carry only what the
# workload wrote in between, so their pages-*.img are smaller than the first round's.
# Transparent huge pages are off: khugepaged collapsing part of the working set into a huge page
# marks all of its 2 MiB soft-dirty, which makes round sizes depend on timing.
. /guest/lib.sh
echo never >/sys/kernel/mm/transparent_hugepage/enabled || fail "cannot turn THP off"
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
pages_bytes() { cat "$1"/pages-*.img | wc -c; }
mkdir pre1 pre2 final
run criu pre-dump -t "$pid" -D pre1 --track-mem -o pre-dump.log
workload_wait_verifies w.log "$(workload_verifies w.log)" 30
run criu pre-dump -t "$pid" -D pre2 --track-mem --prev-images-dir ../pre1 -o pre-dump.log
workload_wait_verifies w.log "$(workload_verifies w.log)" 30
run criu dump -t "$pid" -D final --track-mem --prev-images-dir ../pre2 -o dump.log
wait_gone "$pid" 30
r1=$(pages_bytes pre1)
r2=$(pages_bytes pre2)
r3=$(pages_bytes final)
echo "round pre1 pages_bytes=$r1"
echo "round pre2 pages_bytes=$r2"
echo "round final pages_bytes=$r3"
[ "$r2" -lt "$r1" ] || fail "second pre-dump ($r2 bytes) is not smaller than the first ($r1)"
[ "$r3" -lt "$r1" ] || fail "final dump ($r3 bytes) is not smaller than the first pre-dump ($r1)"
before=$(workload_verifies w.log)
echo "before verifies=$before"
criu restore -d -D final -o restore.log || { tail -20 final/restore.log; fail "criu restore failed"; }
workload_wait_verifies w.log "$before" 60
echo "restored pid=$pid"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
