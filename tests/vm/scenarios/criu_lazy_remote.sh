# Scenario: remote lazy-pages migration. The workload runs as PID 1 of its own PID namespace; `criu
# dump --lazy-pages` freezes it and serves its memory on 127.0.0.1; `criu lazy-pages --page-server`
# fetches pages on fault (and in the background) for `criu restore --lazy-pages`. The restored
# workload keeps verifying its memory while the source still holds the frozen original.
. /guest/lib.sh
port=27021
pid=$(workload_start_ns w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
echo "workload pid=$pid (PID 1 in its namespace)"
workload_wait_verifies w.log 1 60
mkdir src dst
criu dump -t "$pid" -D src --lazy-pages --address 127.0.0.1 --port "$port" -o dump.log &
dump_pid=$!
# Ready when it listens; give up early if it died.
serving() { netstat -ltn | grep -q "127.0.0.1:$port " || ! kill -0 "$dump_pid" 2>/dev/null; }
wait_until 60 serving && kill -0 "$dump_pid" 2>/dev/null || { tail -20 src/dump.log; fail "lazy dump is not serving pages"; }
eager=$(cat src/pages-*.img 2>/dev/null | wc -c)
echo "dump done: local pages_bytes=$eager (lazy pages stay at the source)"
if [ "$eager" -ge 4194304 ]; then
    # CRIU dumped the working set eagerly (seen once): keep what it said for the next reader.
    echo "--- eager dump: src/dump.log (tail)"; tail -40 src/dump.log
    echo "--- /proc/$pid/maps"; cat "/proc/$pid/maps" 2>/dev/null | head -40
fi
cp src/*.img dst/
before=$(workload_verifies w.log)
echo "before verifies=$before"
criu lazy-pages --page-server --address 127.0.0.1 --port "$port" -D dst -o lazy.log &
lazy_pid=$!
daemon_ready() { [ -S dst/lazy-pages.socket ] || ! kill -0 "$lazy_pid" 2>/dev/null; }
wait_until 30 daemon_ready && kill -0 "$lazy_pid" 2>/dev/null || { tail -20 dst/lazy.log; fail "criu lazy-pages did not start"; }
criu restore -d -D dst --lazy-pages -o restore.log || { tail -20 dst/restore.log; tail -20 dst/lazy.log; fail "criu restore failed"; }
workload_wait_verifies w.log "$before" 90
wait "$lazy_pid" || { tail -20 dst/lazy.log; fail "criu lazy-pages failed"; }
wait "$dump_pid" || { tail -20 src/dump.log; fail "lazy criu dump failed"; }
echo "lazy migration complete"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
