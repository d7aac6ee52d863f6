# Scenario: two `criu pre-dump --track-mem` rounds and a final `criu dump --track-mem
# --prev-images-dir`, all through `pagestream page-server --to`, which relays each session over
# QUIC (mutual TLS, loopback) to `pagestream receive --criu-sessions`; the destination stores them
# as ps/1, ps/2 -> parent ../1, ps/3 -> parent ../2, ps/last -> 3 and answers has_parent from
# them, so the later rounds carry only dirty pages. The final dump's other image files are copied
# into ps/last and `criu restore -D ps/last` resolves pages through the chain.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27034
qport=4434
echo never >/sys/kernel/mm/transparent_hugepage/enabled || fail "cannot turn THP off"

criu_round() {
    _dir=$1 _log=$2
    shift 2
    echo "+ criu $*"
    criu "$@" -D "$_dir" --page-server --address 127.0.0.1 --port "$port" -o "$_log" ||
        { tail -20 "$_dir/$_log"; cat ps.out ps.err recv.out recv.err; fail "criu $1 ($_dir) through the relay failed"; }
}

pagestream certs certs >/dev/null || fail "pagestream certs"
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
pagestream receive --criu-sessions --listen 127.0.0.1:$qport --images-dir ps --sessions 3 \
    --tls-cacert certs/cacert.pem --tls-cert certs/server-cert.pem --tls-key certs/server-key.pem \
    >recv.out 2>recv.err &
recv_pid=$!
receiving() { grep -q 'receiving CRIU page-server sessions on' recv.err || ! kill -0 "$recv_pid" 2>/dev/null; }
wait_until 30 receiving && kill -0 "$recv_pid" 2>/dev/null || { cat recv.out recv.err; fail "pagestream receive is not listening"; }
pagestream page-server --listen 127.0.0.1:$port --to 127.0.0.1:$qport --sessions 3 \
    --tls-cacert certs/cacert.pem --tls-cert certs/client-cert.pem --tls-key certs/client-key.pem \
    >ps.out 2>ps.err &
ps_pid=$!
listening() { grep -q '^listening on ' ps.out || ! kill -0 "$ps_pid" 2>/dev/null; }
wait_until 30 listening && kill -0 "$ps_pid" 2>/dev/null || { cat ps.out ps.err; fail "pagestream page-server is not listening"; }
mkdir pre1 pre2 final
criu_round pre1 pre-dump.log pre-dump -t "$pid" --track-mem
workload_wait_verifies w.log "$(workload_verifies w.log)" 30
criu_round pre2 pre-dump.log pre-dump -t "$pid" --track-mem --prev-images-dir ../pre1
workload_wait_verifies w.log "$(workload_verifies w.log)" 30
criu_round final dump.log dump -t "$pid" --track-mem --prev-images-dir ../pre2
wait "$ps_pid" || { cat ps.out ps.err; fail "pagestream page-server --to failed"; }
wait "$recv_pid" || { cat recv.out recv.err; fail "pagestream receive --criu-sessions failed"; }
cat ps.out ps.err recv.out recv.err
wait_gone "$pid" 30
ls pre1/pages-*.img pre2/pages-*.img final/pages-*.img >/dev/null 2>&1 && fail "pages were written locally"
for k in 1 2 3; do
    echo "session $k pages_bytes=$(cat ps/$k/pages-*.img | wc -c) parent=$(readlink ps/$k/parent)"
done
restore_last_intact final "$pid"
