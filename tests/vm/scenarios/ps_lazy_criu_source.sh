# Scenario: post-copy from `criu dump --lazy-pages` with pagestream in between. The workload is
# PID 1 of its own PID namespace (the frozen original keeps its PID until the end); `criu dump
# --lazy-pages` leaves its lazy pages in its own page server; `pagestream serve-lazy
# --criu-page-server` fetches them with PS_IOV_GET and serves them over QUIC to `pagestream
# lazy-pages --from`, CRIU's lazy-pages daemon for `criu restore --lazy-pages`. When every page is
# installed, serve-lazy sends CRIU the CLOSE that ends the dump.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27037
qport=4437
tls() { echo --tls-cacert certs/cacert.pem --tls-cert "certs/$1-cert.pem" --tls-key "certs/$1-key.pem"; }

pagestream certs certs >/dev/null || fail "pagestream certs"
pid=$(workload_start_ns w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
mkdir src dst
criu dump -t "$pid" -D src --lazy-pages --address 127.0.0.1 --port "$port" -o dump.log &
dump_pid=$!
hexport=$(printf '%04X' "$port")
serving() { grep -q ":$hexport 00000000:0000 0A" /proc/net/tcp || ! kill -0 "$dump_pid" 2>/dev/null; }
wait_until 60 serving && kill -0 "$dump_pid" 2>/dev/null || { tail -20 src/dump.log; fail "the lazy dump is not serving"; }
echo "dump done: local pages_bytes=$(cat src/pages-*.img 2>/dev/null | wc -c) lazy entries=$(pagestream image show src | grep -c LAZY)"
cp src/*.img dst/
# shellcheck disable=SC2046
pagestream serve-lazy --listen 127.0.0.1:$qport -D src --criu-page-server 127.0.0.1:$port --sessions 1 \
    $(tls server) >srv.out 2>srv.err &
srv_pid=$!
up() { grep -q 'serving' srv.err || ! kill -0 "$srv_pid" 2>/dev/null; }
wait_until 30 up && kill -0 "$srv_pid" 2>/dev/null || { cat srv.out srv.err; fail "serve-lazy is not serving"; }
# shellcheck disable=SC2046
pagestream lazy-pages -D dst --from 127.0.0.1:$qport --tls-server-name localhost $(tls client) --json \
    >lazy.out 2>lazy.err &
lazy_pid=$!
daemon_ready() { [ -S dst/lazy-pages.socket ] || ! kill -0 "$lazy_pid" 2>/dev/null; }
wait_until 30 daemon_ready && kill -0 "$lazy_pid" 2>/dev/null || { cat lazy.err; fail "pagestream lazy-pages did not start"; }
before=$(workload_verifies w.log)
echo "before verifies=$before"
criu restore -d -D dst --lazy-pages -o restore.log || { tail -20 dst/restore.log; cat lazy.err srv.err; fail "criu restore --lazy-pages failed"; }
workload_wait_verifies w.log "$before" 90
wait "$lazy_pid" || { cat lazy.out lazy.err; fail "pagestream lazy-pages failed"; }
wait "$srv_pid" || { cat srv.out srv.err; fail "pagestream serve-lazy failed"; }
wait "$dump_pid" || { tail -20 src/dump.log; fail "the lazy criu dump failed"; }
echo "lazy summary $(cat lazy.out)"
cat srv.out
echo "lazy migration complete"
echo "restored pid=$pid"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
