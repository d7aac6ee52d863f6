# Scenario: `criu dump --page-server` sends the pages to `pagestream page-server --to`, which relays
# the session over QUIC (mutual TLS, loopback) to `pagestream receive --criu-sessions`; that commits
# it as session 1 (ps/1, ps/last -> 1). The dump's other image files are copied next to the pages
# and `criu restore -D ps/last` brings the workload back, memory intact.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27033
qport=4433

pagestream certs certs >/dev/null || fail "pagestream certs"
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir img
pagestream receive --criu-sessions --listen 127.0.0.1:$qport --images-dir ps --sessions 1 \
    --tls-cacert certs/cacert.pem --tls-cert certs/server-cert.pem --tls-key certs/server-key.pem \
    >recv.out 2>recv.err &
recv_pid=$!
receiving() { grep -q 'receiving CRIU page-server sessions on' recv.err || ! kill -0 "$recv_pid" 2>/dev/null; }
wait_until 30 receiving && kill -0 "$recv_pid" 2>/dev/null || { cat recv.out recv.err; fail "pagestream receive is not listening"; }
pagestream page-server --listen 127.0.0.1:$port --to 127.0.0.1:$qport --sessions 1 \
    --tls-cacert certs/cacert.pem --tls-cert certs/client-cert.pem --tls-key certs/client-key.pem \
    >ps.out 2>ps.err &
ps_pid=$!
listening() { grep -q '^listening on ' ps.out || ! kill -0 "$ps_pid" 2>/dev/null; }
wait_until 30 listening && kill -0 "$ps_pid" 2>/dev/null || { cat ps.out ps.err; fail "pagestream page-server is not listening"; }
start=$(now_ms)
criu dump -t "$pid" -D img --page-server --address 127.0.0.1 --port "$port" -o dump.log ||
    { tail -20 img/dump.log; cat ps.out ps.err recv.out recv.err; fail "criu dump through the relay failed"; }
echo "dump took ms=$(($(now_ms) - start))"
wait "$ps_pid" || { cat ps.out ps.err; fail "pagestream page-server --to failed"; }
wait "$recv_pid" || { cat recv.out recv.err; fail "pagestream receive --criu-sessions failed"; }
cat ps.out ps.err recv.out recv.err
wait_gone "$pid" 30
ls img/pages-*.img >/dev/null 2>&1 && fail "pages were written locally, not relayed"
echo "relayed pages_bytes=$(cat ps/1/pages-*.img | wc -c) pagemaps=$(ls ps/1/pagemap-*.img | wc -l)"
restore_last_intact img "$pid"
