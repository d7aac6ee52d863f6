#!/usr/bin/env bash
# CRIU page-server mode benchmark: `criu dump --page-server` of one `pagestream workload` (default
# 512 MiB) into three page servers, side by side in one run:
#   criu             target/criu4/criu page-server (the baseline; ratios are against it)
#   pagestream-local pagestream page-server --images-dir (stores the session here)
#   pagestream-quic  pagestream page-server --to: relays over QUIC (mutual TLS, LZ4) to
#                    pagestream receive --criu-sessions in a second network namespace (veth)
# Per run: dump wall time (criu dump start to exit), CRIU's frozen/memdump/memwrite times (its
# stats-dump image), bytes on the wire, peak RSS of the page-server side (/usr/bin/time).
# Bytes on the wire are counted by the kernel, not estimated: everything runs in a private network
# namespace, so its interface counters see only this benchmark. TCP payload (criu, local; and the
# CRIU->relay hop of quic) = lo bytes - 52 per packet (IP 20 + TCP 20 + timestamps 12; lo counts
# without the Ethernet header), both directions (the page server's replies are a few bytes).
# QUIC (quic) = UDP payload on the veth = bytes - 42 per packet (Ethernet 14 + IP 20 + UDP 8), both
# directions, i.e. QUIC headers, TLS tags and ACKs included. The relay's own count (QUIC stream bytes)
# is kept in the JSON as relay_stream_bytes.
# Modes alternate (rotated start each repetition); a fresh workload per run; medians of --runs.
# Run as root from anywhere:  bash benches/criu_page_server.sh [--size 512M] [--runs 3] [--json]
# Needs: bash tests/criu4/install.sh (CRIU 4.1.1), cargo build --release, crit, jq, iproute2.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."
CRIU=$PWD/target/criu4/criu PS=$PWD/target/release/pagestream
size=512M runs=3 json=0 args=("$@")
die() { echo "criu_page_server.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --json) json=1; shift ;;
    -h | --help) sed -n '2,19p' "$self"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive integer"
[ "$(id -u)" = 0 ] || die "needs root (criu dump, network namespaces)"
[ -x "$CRIU" ] || die "missing $CRIU: run 'bash tests/criu4/install.sh' (as root)"
[ -x "$PS" ] || die "missing $PS: run 'cargo build --release'"
for c in crit jq ip unshare nsenter ss /usr/bin/time; do command -v "$c" >/dev/null || die "missing $c"; done
# Private network namespace: the interface counters then count only this benchmark's traffic.
[ "${PSBENCH_IN_NETNS:-}" = 1 ] || exec env PSBENCH_IN_NETNS=1 unshare -n -- bash "$self" "${args[@]}"

work=$(mktemp -d /tmp/psbench.XXXXXX)
bg=() wl=() holder=
# shellcheck disable=SC2013 # the children files hold space-separated PIDs
killtree() { # PID: kills it and its descendants, by id
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do killtree "$c"; done
    kill "$1" 2>/dev/null || true
}
cleanup() {
    local p
    for p in "${bg[@]}"; do killtree "$p"; done
    for p in "${wl[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [ -z "$holder" ] || kill "$holder" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "$*" >&2; }
now_ns() { date +%s%N; }
wait_for() { # SECS CMD...: poll CMD every 0.1 s
    local end=$(($(date +%s) + $1)); shift
    until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.1; done
}
gone() { [ ! -e /proc/"$1" ]; }
tcp_listening() { [ -n "$(ss -ltnH "sport = :$1")" ]; }
other_netns() { [ "$(readlink /proc/"$1"/ns/net)" != "$(readlink /proc/self/ns/net)" ]; }
# IFACE: "BYTES PACKETS" it carried (lo: rx only, as its tx counts the same packets; veth: rx + tx)
counters() { awk -v i="$1:" '$1==i {print ($1=="lo:") ? $2 " " $3 : $2 + $10 " " $3 + $11}' /proc/net/dev; }
payload() { # IFACE "BYTES0 PKTS0" HDR: payload bytes carried since the snapshot, both directions
    local b p b0 p0; read -r b p <<<"$(counters "$1")"; read -r b0 p0 <<<"$2"
    echo $(((b - b0) - (p - p0) * $3))
}

# Network: lo for the TCP page-server connections; a veth pair to a second namespace (held by a
# sleep) for QUIC. IPv6 off so that no autoconfiguration traffic lands in the counters.
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
[ "$(cat /proc/sys/net/ipv4/tcp_timestamps)" = 0 ] && tcp_hdr=40 || tcp_hdr=52
unshare -n sleep infinity &
holder=$!
wait_for 10 other_netns "$holder" || die "no second netns"
inb() { nsenter -t "$holder" -n "$@"; }
inb sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add psb0 type veth peer name psb1 netns "$holder"
ip addr add 10.77.0.1/24 dev psb0 && ip link set psb0 up
inb ip link set lo up && inb ip addr add 10.77.0.2/24 dev psb1 && inb ip link set psb1 up
"$PS" certs --name 10.77.0.2 "$work/certs" >/dev/null

modes=(criu pagestream-local pagestream-quic)
results=$work/results.jsonl
n=0
run_one() { # MODE REP
    local mode=$1 rep=$2 d pid srv recv='' port qport lo0 vb0 t0 t1 tcp wire stream=null rss rrss=null
    n=$((n + 1)) port=$((27100 + n)) qport=$((4500 + n)) d=$work/$n-$1
    mkdir -p "$d/img"
    # Detached as CRIU wants it: own session, no tty, reparented away from this script.
    (cd "$d" || exit 1; setsid "$PS" workload --size "$size" --rate 2000 --report-ms 1000 </dev/null >w.log 2>&1 &)
    wait_for 60 grep -q '^ready pid=' "$d/w.log" || die "workload did not start: $(cat "$d/w.log")"
    pid=$(sed -n 's/^ready pid=\([0-9]*\) .*/\1/p' "$d/w.log" | head -1)
    wl+=("$pid")
    wait_for 300 grep -q 'verifies=1 ok' "$d/w.log" || die "workload never verified: $(tail -3 "$d/w.log")"
    ! grep -q CORRUPT "$d/w.log" || die "workload reports corrupt memory"
    case $mode in
    criu)
        mkdir -p "$d/ps"
        /usr/bin/time -f %M -o "$d/rss" "$CRIU" page-server -D "$d/ps" --address 127.0.0.1 --port "$port" \
            -o ps.log >"$d/ps.out" 2>&1 &
        srv=$!
        wait_for 30 tcp_listening "$port" || die "criu page-server not listening: $(tail "$d/ps/ps.log")" ;;
    pagestream-local)
        /usr/bin/time -f %M -o "$d/rss" "$PS" page-server --listen 127.0.0.1:"$port" --images-dir "$d/ps" \
            --sessions 1 >"$d/ps.out" 2>"$d/ps.err" &
        srv=$!
        wait_for 30 grep -q '^listening on' "$d/ps.out" || die "pagestream page-server not listening: $(cat "$d/ps.err")" ;;
    pagestream-quic)
        inb /usr/bin/time -f %M -o "$d/rss.recv" "$PS" receive --criu-sessions --listen 10.77.0.2:"$qport" \
            --images-dir "$d/ps" --sessions 1 --tls-cacert "$work/certs/cacert.pem" \
            --tls-cert "$work/certs/server-cert.pem" --tls-key "$work/certs/server-key.pem" >"$d/recv.out" 2>"$d/recv.err" &
        recv=$!
        bg+=("$recv")
        wait_for 30 grep -q 'receiving CRIU page-server sessions' "$d/recv.err" || die "receiver not up: $(cat "$d/recv.err")"
        /usr/bin/time -f %M -o "$d/rss" "$PS" page-server --listen 127.0.0.1:"$port" --to 10.77.0.2:"$qport" \
            --sessions 1 --tls-cacert "$work/certs/cacert.pem" --tls-cert "$work/certs/client-cert.pem" \
            --tls-key "$work/certs/client-key.pem" >"$d/ps.out" 2>"$d/ps.err" &
        srv=$!
        wait_for 30 grep -q '^listening on' "$d/ps.out" || die "relay not listening: $(cat "$d/ps.err")" ;;
    esac
    bg+=("$srv")
    lo0=$(counters lo) vb0=$(counters psb0)
    t0=$(now_ns)
    "$CRIU" dump -t "$pid" -D "$d/img" --page-server --address 127.0.0.1 --port "$port" -o dump.log 2>"$d/dump.err" ||
        die "$mode: criu dump failed; dump.log tail:
$(tail -15 "$d/img/dump.log")
page server: $(tail -5 "$d/ps.out" "$d/ps.err" "$d/ps/ps.log" 2>/dev/null)"
    t1=$(now_ns)
    wait "$srv" || die "$mode: page server failed: $(tail -5 "$d/ps.out" "$d/ps.err" "$d/ps/ps.log" 2>/dev/null)"
    [ -z "$recv" ] || wait "$recv" || die "$mode: receiver failed: $(tail -5 "$d/recv.out" "$d/recv.err")"
    tcp=$(payload lo "$lo0" "$tcp_hdr") wire=$tcp
    if [ "$mode" = pagestream-quic ]; then
        wire=$(payload psb0 "$vb0" 42)
        stream=$(sed -n 's/.* in \([0-9.]*\) MiB on the wire.*/\1/p' "$d/ps.out" | awk '{printf "%d", $1 * 1048576}')
        rrss=$(tail -1 "$d/rss.recv")
    fi
    rss=$(tail -1 "$d/rss")
    wait_for 30 gone "$pid" || die "dumped workload $pid still exists after 30 s"
    bg=() wl=()
    ! ls "$d"/img/pages-*.img >/dev/null 2>&1 || die "$mode: pages were written locally, not to the page server"
    crit show "$d/img/stats-dump" | jq -c --arg mode "$mode" --argjson rep "$rep" --argjson pid "$pid" \
        --argjson dump_ns $((t1 - t0)) --argjson tcp "$tcp" --argjson wire "$wire" --argjson stream "$stream" \
        --argjson rss "$rss" --argjson rrss "$rrss" '.entries[0].dump | {mode: $mode, rep: $rep, pid: $pid,
        dump_s: ($dump_ns / 1e9), freezing_s: (.freezing_time / 1e6), frozen_s: (.frozen_time / 1e6),
        memdump_s: (.memdump_time / 1e6), memwrite_s: (.memwrite_time / 1e6), pages_scanned, pages_written,
        wire_bytes: $wire, tcp_hop_bytes: $tcp, relay_stream_bytes: $stream, server_rss_kib: $rss,
        receiver_rss_kib: $rrss}' >>"$results"
    tail -1 "$results" | jq -r '"\(.mode) run \(.rep): dump \(.dump_s)s frozen \(.frozen_s)s wire \(.wire_bytes)B"' >&2
    rm -rf "$d/ps" # frees the page data before the next run
}

log "== pagestream CRIU page-server benchmark: workload $size, $runs runs per mode, work in $work"
for ((r = 1; r <= runs; r++)); do
    for ((i = 0; i < ${#modes[@]}; i++)); do run_one "${modes[(i + r - 1) % ${#modes[@]}]}" "$r"; done
done

summary=$(jq -sc --arg size "$size" '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    group_by(.mode) | map({key: .[0].mode, value: {runs: length, dump_s: (map(.dump_s) | median),
        frozen_s: (map(.frozen_s) | median), memdump_s: (map(.memdump_s) | median),
        memwrite_s: (map(.memwrite_s) | median), wire_bytes: (map(.wire_bytes) | median),
        server_rss_kib: (map(.server_rss_kib) | median)}}) | from_entries
    | .criu as $b | map_values(. + {dump_vs_criu: (.dump_s / $b.dump_s), wire_vs_criu: (.wire_bytes / $b.wire_bytes)})
    | {summary: true, size: $size, modes: .}' "$results")
if [ "$json" = 1 ]; then
    cat "$results"
    echo "$summary"
else
    printf '%-17s | %7s | %8s | %9s | %10s | %11s | %9s | %9s | %7s\n' mode "dump s" "frozen s" "memdump s" \
        "memwrite s" "MiB on wire" "dump/criu" "wire/criu" "RSS MiB"
    jq -r --argjson order "$(printf '%s\n' "${modes[@]}" | jq -R . | jq -sc .)" \
        '.modes as $m | $order[] | . as $k | $m[$k] | [$k, .dump_s, .frozen_s, .memdump_s, .memwrite_s,
        .wire_bytes / 1048576, .dump_vs_criu, .wire_vs_criu, .server_rss_kib / 1024] | @tsv' <<<"$summary" |
        awk -F'\t' '{printf "%-17s | %7.2f | %8.2f | %9.2f | %10.2f | %11.1f | %9.2f | %9.2f | %7.0f\n",
            $1, $2, $3, $4, $5, $6, $7, $8, $9}'
    echo "medians of $runs runs, workload $size; wire: TCP payload on lo (criu, local), UDP payload on the veth (quic);"
    echo "RSS: the page server (quic: the relay; the receiver is in the JSON as receiver_rss_kib)"
fi
