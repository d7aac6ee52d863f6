# Scenario: two `criu pre-dump --track-mem` rounds and a final `criu dump --track-mem
# --prev-images-dir`, all through `pagestream page-server`, which stores them as sessions ps/1,
# ps/2 -> parent ../1, ps/3 -> parent ../2 and ps/last -> 3. It answers has_parent truthfully, so
# the later rounds carry only what the workload dirtied in between (PE_PARENT holes for the
# rest). The dumping CRIU keeps its own local chain pre1 <- pre2 <- final of the other image files
# (inventory.img with dump_uptime is what its PID-reuse check reads). The final dump's other image
# files are copied into ps/last and `criu restore -D ps/last` resolves pages through the chain.
# Transparent huge pages are off so that round sizes do not depend on khugepaged.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27032
echo never >/sys/kernel/mm/transparent_hugepage/enabled || fail "cannot turn THP off"

# criu_round DIR LOG ARGS...: one CRIU invocation to the page server; shows its log on failure.
criu_round() {
    _dir=$1 _log=$2
    shift 2
    echo "+ criu $*"
    criu "$@" -D "$_dir" --page-server --address 127.0.0.1 --port "$port" -o "$_log" ||
        { tail -20 "$_dir/$_log"; cat ps.out ps.err; fail "criu $1 ($_dir) through pagestream failed"; }
}

pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
pagestream page-server --listen 127.0.0.1:$port --images-dir ps --sessions 3 >ps.out 2>ps.err &
ps_pid=$!
listening() { grep -q '^listening on ' ps.out || ! kill -0 "$ps_pid" 2>/dev/null; }
wait_until 30 listening && kill -0 "$ps_pid" 2>/dev/null || { cat ps.out ps.err; fail "pagestream page-server is not listening"; }
mkdir pre1 pre2 final
criu_round pre1 pre-dump.log pre-dump -t "$pid" --track-mem
workload_wait_verifies w.log "$(workload_verifies w.log)" 30
criu_round pre2 pre-dump.log pre-dump -t "$pid" --track-mem --prev-images-dir ../pre1
workload_wait_verifies w.log "$(workload_verifies w.log)" 30
criu_round final dump.log dump -t "$pid" --track-mem --prev-images-dir ../pre2
wait "$ps_pid" || { cat ps.out ps.err; fail "pagestream page-server failed"; }
cat ps.out ps.err
wait_gone "$pid" 30
ls pre1/pages-*.img pre2/pages-*.img final/pages-*.img >/dev/null 2>&1 && fail "pages were written locally"
for k in 1 2 3; do
    echo "session $k pages_bytes=$(cat ps/$k/pages-*.img | wc -c) parent=$(readlink ps/$k/parent)"
done
restore_last_intact final "$pid"
