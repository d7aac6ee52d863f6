# Scenario: `criu dump --page-server` sends the pages to `pagestream page-server` (TCP on 127.0.0.1),
# which commits them as session 1 (ps/1, ps/last -> 1); the dump's other image files are copied
# next to them and `criu restore -D ps/last` brings the workload back, memory intact.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27031


pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir img
pagestream page-server --listen 127.0.0.1:$port --images-dir ps --sessions 1 >ps.out 2>ps.err &
ps_pid=$!
listening() { grep -q '^listening on ' ps.out || ! kill -0 "$ps_pid" 2>/dev/null; }
wait_until 30 listening && kill -0 "$ps_pid" 2>/dev/null || { cat ps.out ps.err; fail "pagestream page-server is not listening"; }
start=$(now_ms)
criu dump -t "$pid" -D img --page-server --address 127.0.0.1 --port "$port" -o dump.log ||
    { tail -20 img/dump.log; cat ps.out ps.err; fail "criu dump to pagestream failed"; }
echo "dump took ms=$(($(now_ms) - start))"
wait "$ps_pid" || { cat ps.out ps.err; fail "pagestream page-server failed"; }
cat ps.out ps.err
wait_gone "$pid" 30
ls img/pages-*.img >/dev/null 2>&1 && fail "pages were written locally, not to the page server"
echo "page-server received pages_bytes=$(cat ps/1/pages-*.img | wc -c) pagemaps=$(ls ps/1/pagemap-*.img | wc -l)"
restore_last_intact img "$pid"
