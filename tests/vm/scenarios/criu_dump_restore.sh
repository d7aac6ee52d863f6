# Scenario: `criu dump` of the running workload, then `criu restore -d` of it: the restored
# process keeps its PID, keeps running and its own memory self-check keeps passing.
. /guest/lib.sh
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir img
run criu dump -t "$pid" -D img -o dump.log
wait_gone "$pid" 30
before=$(workload_verifies w.log)
echo "dumped pid=$pid pages_bytes=$(cat img/pages-*.img | wc -c)"
echo "before verifies=$before"
criu restore -d -D img -o restore.log || { tail -20 img/restore.log; fail "criu restore failed"; }
[ -e "/proc/$pid" ] || fail "restored process $pid is not there"
workload_wait_verifies w.log "$before" 60
echo "restored pid=$pid comm=$(cat "/proc/$pid/comm")"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
