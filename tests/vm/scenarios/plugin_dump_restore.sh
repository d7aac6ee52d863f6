# Scenario: the CRIU plugin inside real CRIU. On the source side only `criu dump --libdir plugins
# --page-server --address 127.0.0.1 --port P` (the plugin relays over QUIC with mutual TLS); on the
# destination `pagestream receive --criu-sessions`. First a dump of a pid that does not exist: it
# must fail and leave nothing committed. Then the real dump: the destination's ps/last holds every
# image file (nothing copied by hand) and the commit marker; restore refuses the unmarked source
# directory and `criu restore -D ps/last` brings the workload back, memory intact.
. "${PAGESTREAM_GUEST_LIB:-/guest/lib.sh}"
port=27035
qport=4435

pagestream certs certs >/dev/null || fail "pagestream certs"
mkdir plugins
cp "$(command -v libpagestream_criu.so)" plugins/ || fail "no plugin"
pid=$(workload_start w.log --size 32M --rate 2000 --report-ms 200) || fail "no workload"
workload_wait_verifies w.log 1 60
pagestream receive --criu-sessions --listen 127.0.0.1:$qport --images-dir ps --sessions 2 \
    --tls-cacert certs/cacert.pem --tls-cert certs/server-cert.pem --tls-key certs/server-key.pem \
    >recv.out 2>recv.err &
recv_pid=$!
receiving() { grep -q 'receiving CRIU page-server sessions on' recv.err || ! kill -0 "$recv_pid" 2>/dev/null; }
wait_until 30 receiving && kill -0 "$recv_pid" 2>/dev/null || { cat recv.out recv.err; fail "pagestream receive is not listening"; }

export PAGESTREAM_TO=127.0.0.1:$qport PAGESTREAM_LISTEN=127.0.0.1:$port PAGESTREAM_TLS_SERVER_NAME=localhost
export PAGESTREAM_TLS_CACERT="$PWD/certs/cacert.pem" PAGESTREAM_TLS_CERT="$PWD/certs/client-cert.pem"
export PAGESTREAM_TLS_KEY="$PWD/certs/client-key.pem"
dump() { criu dump -t "$1" -D "$2" --libdir "$PWD/plugins" --page-server --address 127.0.0.1 --port $port -o dump.log; }

mkdir bad
dump 999999 bad && fail "a dump of a missing pid succeeded"
grep -o 'pagestream: .*' bad/dump.log
failed_seen() { grep -q 'FAILED\|failed' recv.err; }
wait_until 30 failed_seen || { cat recv.out recv.err; fail "the destination did not see the failed dump"; }
[ -e ps/1 ] || [ -e ps/last ] && fail "the failed dump left something committed"
echo "failed dump committed nothing"

mkdir img
start=$(now_ms)
dump "$pid" img || { tail -30 img/dump.log; cat recv.out recv.err; fail "criu dump with the plugin failed"; }
echo "dump took ms=$(($(now_ms) - start))"
grep -o 'pagestream: .*' img/dump.log
wait "$recv_pid"
cat recv.out
wait_gone "$pid" 30
ls img/pages-*.img >/dev/null 2>&1 && fail "pages were written locally, not relayed"
echo "last -> $(readlink ps/last)"
ls ps/last/core-*.img ps/last/mm-*.img ps/last/pstree.img ps/last/inventory.img >/dev/null ||
    fail "the destination lacks image files: $(ls ps/last)"
echo "destination files=$(ls ps/last | wc -l) marker=$(ls ps/last/pagestream-complete.json)"
pagestream image verify ps/last || fail "pagestream image verify ps/last"
criu restore -d -D img --libdir "$PWD/plugins" -o restore.log && fail "restore from the unmarked source directory succeeded"
grep -o 'pagestream: refusing to restore.*' img/restore.log || fail "no refusal in img/restore.log"
before=$(workload_verifies w.log)
echo "before verifies=$before"
criu restore -d -D ps/last --libdir "$PWD/plugins" -o restore.log || { tail -20 ps/last/restore.log; fail "criu restore failed"; }
grep -o 'pagestream: restoring session.*' ps/last/restore.log || true  # INFO: only with -v4
workload_wait_verifies w.log "$before" 60
echo "restored pid=$pid"
echo "after verifies=$(workload_verifies w.log)"
tail -2 w.log
