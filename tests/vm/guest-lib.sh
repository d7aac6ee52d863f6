# shellcheck shell=sh
# Helpers for the scenario scripts of pagestream's test guest (busybox sh). It lives in the guest as
# /guest/lib.sh; a scenario starts with `. /guest/lib.sh`. Each scenario runs in its own empty
# folder under /tmp, with stdin /dev/null and output on the serial console.
#
# General: fail, run, now_ms, wait_until, wait_gone, file_size.
# The test workload (pagestream-workload, when the run ships it): workload_start,
# workload_start_ns, workload_verifies, workload_wait_verifies, workload_intact.

# fail MSG...: ends the scenario (or the $(...) it runs in) with status 1 and a FAIL line on
# stderr, so a helper used as `pid=$(workload_start ...) || fail ...` still shows why.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# run CMD...: shows the command, runs it and fails the scenario when it fails.
run() {
    echo "+ $*"
    "$@" || fail "exit $? from: $*"
}

now_ms() {
    read -r _up _ </proc/uptime
    _cs=${_up#*.}
    echo $((${_up%.*} * 1000 + 10 * ${_cs#0}))
}

# wait_until SECS CMD...: polls CMD every 0.1 s until it succeeds; status 1 after SECS seconds.
wait_until() {
    _end=$(($(now_ms) + $1 * 1000))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$_end" ] || return 1
        sleep 0.1
    done
}

_gone() { [ ! -e "/proc/$1" ]; }

# wait_gone PID SECS: waits until no process PID exists (not even a zombie); fails the scenario
# otherwise. After `criu dump` the old task must be gone before it can be restored with its PID.
wait_gone() {
    wait_until "$2" _gone "$1" || fail "process $1 still exists after $2 s"
}

# file_size FILE: its size in bytes.
file_size() { stat -c %s "$1"; }

# workload_start LOG ARGS...: starts pagestream-workload detached (own session, stdin /dev/null,
# output to LOG, parent init), as `criu dump -t PID` wants it without --shell-job; waits for its
# "ready" line and prints its PID.
workload_start() {
    _log=$1
    shift
    (setsid pagestream-workload "$@" </dev/null >"$_log" 2>&1 &)
    wait_until 60 grep -q '^ready pid=' "$_log" || fail "workload did not start: $(cat "$_log")"
    sed -n 's/^ready pid=\([0-9]*\) .*/\1/p' "$_log" | head -1
}

# workload_start_ns LOG ARGS...: as workload_start, but the workload is PID 1 of its own PID
# namespace (unshare -p -f) and leads its own session inside it (CRIU refuses a session leader
# outside the namespace). Prints its PID as seen from here (the one for criu -t). There is no
# --mount-proc: a private mount namespace on the initramfs root is one CRIU cannot dump ("Can't
# lookup mount ... path=/dev/null"), and the workload does not read /proc.
workload_start_ns() {
    _log=$1
    shift
    (unshare -p -f setsid pagestream-workload "$@" </dev/null >"$_log" 2>&1 &
        echo $! >"$_log.unshare")
    wait_until 60 grep -q '^ready pid=' "$_log" || fail "workload did not start: $(cat "$_log")"
    _u=$(cat "$_log.unshare")
    _p=$(cat "/proc/$_u/task/$_u/children" 2>/dev/null)
    _p=${_p%% *}
    [ -n "$_p" ] || fail "no child of unshare ($_u) found"
    echo "$_p"
}

# workload_verifies LOG: the `verifies` count of the last progress line of LOG (0 if none).
workload_verifies() {
    _v=$(sed -n 's/^progress .*verifies=\([0-9]*\) ok$/\1/p' "$1" | tail -1)
    echo "${_v:-0}"
}

_verifies_above() { [ "$(workload_verifies "$1")" -gt "$2" ]; }

# workload_wait_verifies LOG N SECS: waits until LOG reports more than N verification passes;
# fails the scenario otherwise (or at once when LOG shows CORRUPT).
workload_wait_verifies() {
    wait_until "$3" _verifies_above "$1" "$2" || {
        workload_intact "$1"
        fail "workload verifies stayed at $(workload_verifies "$1") (wanted > $2 within $3 s)"
    }
    workload_intact "$1"
}

# workload_intact LOG: fails the scenario if LOG reports corrupted memory.
workload_intact() {
    if grep -q CORRUPT "$1"; then
        grep CORRUPT "$1"
        fail "workload reported corrupted memory"
    fi
}

# copy_other_images SRC DST: the image files the dumping CRIU kept in its own -D directory (all but
# pagemap-*/pages-*, the parent link and the logs) into the page server's session directory.
copy_other_images() {
    for f in "$1"/*; do
        case ${f##*/} in pagemap-* | pages-* | parent | *.log) continue ;; esac
        [ -f "$f" ] && [ ! -L "$f" ] || continue
        cp "$f" "$2"/ || fail "cannot copy $f to $2"
    done
}

# restore_last_intact DUMPDIR PID: completes ps/last with DUMPDIR's other image files, checks it,
# restores it with CRIU and waits until the workload (log w.log) passes another self-check.
restore_last_intact() {
    echo "last -> $(readlink ps/last)"
    copy_other_images "$1" ps/last
    pagestream image verify ps/last || fail "pagestream image verify ps/last"
    before=$(workload_verifies w.log)
    echo "before verifies=$before"
    criu restore -d -D ps/last -o restore.log || { tail -20 ps/last/restore.log; fail "criu restore failed"; }
    workload_wait_verifies w.log "$before" 60
    echo "restored pid=$2"
    echo "after verifies=$(workload_verifies w.log)"
    tail -2 w.log
}
