# Scenario: CRIU's own lazy-pages daemon fetching from pagestream. `criu dump --page-server` sends
# the pages to `pagestream page-server` (session 1); `criu lazy-pages --page-server` then asks the
# same pagestream page-server for every lazy page with PS_IOV_GET (a second connection, served from
# ps/last), while `criu restore --lazy-pages` resumes the workload.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27039

pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir img dst
pagestream page-server --listen 127.0.0.1:$port --images-dir ps --sessions 2 >ps.out 2>ps.err &
ps_pid=$!
listening() { grep -q '^listening on ' ps.out || ! kill -0 "$ps_pid" 2>/dev/null; }
wait_until 30 listening && kill -0 "$ps_pid" 2>/dev/null || { cat ps.out ps.err; fail "pagestream page-server is not listening"; }
criu dump -t "$pid" -D img --page-server --address 127.0.0.1 --port "$port" -o dump.log ||
    { tail -20 img/dump.log; cat ps.out ps.err; fail "criu dump to pagestream failed"; }
wait_gone "$pid" 30
committed() { grep -q '^session 1 committed' ps.out; }
wait_until 30 committed || { cat ps.out ps.err; fail "session 1 was not committed"; }
# The destination: the pagemaps and pages (CRIU restores the non-lazy pages from them; the lazy ones
# come through the daemon) and the dump's other image files.
cp ps/last/pagemap-*.img ps/last/pages-*.img dst/
copy_other_images img dst
echo "lazy entries=$(pagestream image show ps/last | grep -c LAZY)"
criu lazy-pages --page-server --address 127.0.0.1 --port "$port" -D dst -o lazy.log &
lazy_pid=$!
daemon_ready() { [ -S dst/lazy-pages.socket ] || ! kill -0 "$lazy_pid" 2>/dev/null; }
wait_until 30 daemon_ready && kill -0 "$lazy_pid" 2>/dev/null || { tail -20 dst/lazy.log; fail "criu lazy-pages did not start"; }
before=$(workload_verifies w.log)
echo "before verifies=$before"
criu restore -d -D dst --lazy-pages -o restore.log || { tail -20 dst/restore.log; tail -20 dst/lazy.log; cat ps.err; fail "criu restore --lazy-pages failed"; }
workload_wait_verifies w.log "$before" 90
wait "$lazy_pid" || { tail -20 dst/lazy.log; cat ps.out ps.err; fail "criu lazy-pages failed"; }
wait "$ps_pid" || { cat ps.out ps.err; fail "pagestream page-server failed"; }
cat ps.out
echo "restored pid=$pid"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
