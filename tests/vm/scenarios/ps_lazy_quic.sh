# Scenario: a lazy restore with pagestream on both ends. A plain `criu dump` (lazy-able pages are
# stored as PE_LAZY|PE_PRESENT, with data); `pagestream serve-lazy -D img` plays the source host,
# `pagestream lazy-pages -D img --from` is CRIU's lazy-pages daemon (QUIC, mutual TLS, loopback),
# and `criu restore --lazy-pages` resumes the workload at once while its memory arrives: faults
# first, the rest pushed. The workload keeps verifying its memory.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
qport=4436
tls() { echo --tls-cacert certs/cacert.pem --tls-cert "certs/$1-cert.pem" --tls-key "certs/$1-key.pem"; }

pagestream certs certs >/dev/null || fail "pagestream certs"
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir img
criu dump -t "$pid" -D img -o dump.log || { tail -20 img/dump.log; fail "criu dump failed"; }
wait_gone "$pid" 30
echo "lazy entries=$(pagestream image show img | grep -c LAZY)"
# shellcheck disable=SC2046
pagestream serve-lazy --listen 127.0.0.1:$qport -D img --sessions 1 $(tls server) >src.out 2>src.err &
src_pid=$!
serving() { grep -q 'serving' src.err || ! kill -0 "$src_pid" 2>/dev/null; }
wait_until 30 serving && kill -0 "$src_pid" 2>/dev/null || { cat src.out src.err; fail "serve-lazy is not serving"; }
# shellcheck disable=SC2046
pagestream lazy-pages -D img --from 127.0.0.1:$qport --tls-server-name localhost $(tls client) --json \
    >lazy.out 2>lazy.err &
lazy_pid=$!
daemon_ready() { [ -S img/lazy-pages.socket ] || ! kill -0 "$lazy_pid" 2>/dev/null; }
wait_until 30 daemon_ready && kill -0 "$lazy_pid" 2>/dev/null || { cat lazy.err; fail "pagestream lazy-pages did not start"; }
before=$(workload_verifies w.log)
echo "before verifies=$before"
start=$(now_ms)
criu restore -d -D img --lazy-pages -o restore.log || { tail -20 img/restore.log; cat lazy.err; fail "criu restore --lazy-pages failed"; }
echo "restore returned after ms=$(($(now_ms) - start))"
workload_wait_verifies w.log "$before" 90
wait "$lazy_pid" || { cat lazy.out lazy.err; fail "pagestream lazy-pages failed"; }
wait "$src_pid" || { cat src.out src.err; fail "pagestream serve-lazy failed"; }
echo "lazy summary $(cat lazy.out)"
cat src.out
echo "restored pid=$pid"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
