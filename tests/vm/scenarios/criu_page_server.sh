# Scenario: `criu dump` sends the pages through `criu page-server` (TCP on 127.0.0.1); the page
# server's pagemaps and pages join the other images and `criu restore` brings the workload back.
. /guest/lib.sh
port=27011
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir ps img
criu page-server -D ps --address 127.0.0.1 --port "$port" -o ps.log &
ps_pid=$!
serving() { netstat -ltn | grep -q "127.0.0.1:$port " || ! kill -0 "$ps_pid" 2>/dev/null; }
wait_until 30 serving && kill -0 "$ps_pid" 2>/dev/null || { tail -20 ps/ps.log; fail "page server is not listening"; }
run criu dump -t "$pid" -D img --page-server --address 127.0.0.1 --port "$port" -o dump.log
wait "$ps_pid" || { tail -20 ps/ps.log; fail "page server failed"; }
wait_gone "$pid" 30
ls img/pages-*.img >/dev/null 2>&1 && fail "pages were written locally, not to the page server"
echo "page-server received pages_bytes=$(cat ps/pages-*.img | wc -c) pagemaps=$(ls ps/pagemap-*.img | wc -l)"
cp ps/pagemap-*.img ps/pages-*.img img/
before=$(workload_verifies w.log)
echo "before verifies=$before"
criu restore -d -D img -o restore.log || { tail -20 img/restore.log; fail "criu restore failed"; }
workload_wait_verifies w.log "$before" 60
echo "restored pid=$pid"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
