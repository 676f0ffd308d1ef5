#!/bin/sh
# The vmtest suite, run by /init inside the QEMU guest (busybox sh) where the cgroup v2 hierarchy is ours.
# It makes a PKI, starts runnel servers on /sys/fs/cgroup/runnel and checks that what they promise holds:
# limits enforced, stops and shutdowns leaving nothing behind, a crashed server's leftovers cleaned up.
# Each check writes "PASS name: measured numbers" or "FAIL name: why" to ttyS1, which tests/vm/run.sh shows
# and judges; details and server logs go to the console (ttyS0). Exits non-zero if any check failed.

R=/bin/runnel
ROOT_CG=/sys/fs/cgroup/runnel
STATE=/tmp/state
LOGS=/tmp/logs
RESULTS=/dev/ttyS1
LISTEN=127.0.0.1:50051
JOB_PATH=PATH=/bin:/sbin:/usr/bin:/usr/sbin
FAILS=0
PASSES=0

export RUNNEL_SERVER=$LISTEN RUNNEL_CERT=/pki/alice.crt RUNNEL_KEY=/pki/alice.key RUNNEL_CA=/pki/ca.crt

# ---- reporting -------------------------------------------------------------------------------------

say() { echo "$*"; echo "$*" >"$RESULTS"; }
pass() { say "PASS $1: $2"; PASSES=$((PASSES + 1)); }
fail() { say "FAIL $1: $2"; FAILS=$((FAILS + 1)); }
info() { say "INFO $*"; }
section() { echo; echo "==== $* (t=$(secs "$(now_cs)")s)"; }

# Centiseconds since boot, from /proc/uptime ("12.34 ..."): busybox date has no sub-second format.
now_cs() {
    read -r up _ </proc/uptime
    strip0 "${up%.*}${up#*.}"
}
strip0() {  # leading zeros would make $((...)) read octal
    n=$1
    while [ "${n#0}" != "$n" ]; do n=${n#0}; done
    echo "${n:-0}"
}
secs() { printf '%d.%02d' $(($1 / 100)) $(($1 % 100)); }
tenths() { printf '%d.%d' $(($1 / 10)) $(($1 % 10)); }  # per-mille → "19.8"

# ---- JSON and processes ----------------------------------------------------------------------------

# jget KEY < JSON: the value of the last "KEY": in one JSON line, quotes removed; empty if absent.
# Keys in runnel's status JSON are unique per object, so nested ones ("cpu_usec") are found directly.
jget() { sed -nE 's/.*"'"$1"'":("[^"]*"|[^,}]*).*/\1/p' | tr -d '"'; }

# How many processes run exactly "sleep N" (busybox ps joins argv with spaces).
count_sleeps() { ps -o args | grep -c "^sleep $1\$"; }

cgroup_dirs() { [ -d "$ROOT_CG" ] && find "$ROOT_CG" -mindepth 1 -type d | sed "s|^$ROOT_CG/||" | tr '\n' ' '; }

# ---- client ----------------------------------------------------------------------------------------

client() { timeout 60 "$R" client "$@"; }
status_json() { client status "$1" --json; }

# start_quiet [start flags] -- CMD...: sets JOB to the new job's id, or START_ERR and returns 1.
start_quiet() {
    JOB=$(client start --env "$JOB_PATH" "$@" 2>/tmp/start.err)
    START_ERR=$(tr '\n' ' ' </tmp/start.err | head -c 400)
    [ -n "$JOB" ]
}

# start CHECK [start flags] -- CMD...: start_quiet, reporting FAIL CHECK if the server refused.
start() {
    name=$1
    shift
    start_quiet "$@" && return 0
    fail "$name" "start refused: $START_ERR"
    return 1
}

# wait_job ID: waits for the end; WAIT_RC is `client wait`'s code (the job's, 128+signal, or 124 on timeout).
wait_job() {
    client wait "$1" >/dev/null 2>/tmp/wait.err
    WAIT_RC=$?
    JS=$(status_json "$1")
    echo "job $1: $JS"
}

# wait_for TRIES CMD...: retries CMD every 0.1 s until it succeeds.
wait_for() {
    tries=$1
    shift
    while [ "$tries" -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}
logs_contain() { client logs "$1" 2>&1 | grep -q "$2"; }
sleeps_are() { [ "$(count_sleeps "$1")" -eq "$2" ]; }
no_job_dirs() { [ -z "$(find "$ROOT_CG/jobs" -mindepth 1 -type d 2>/dev/null)" ]; }

# ---- server ----------------------------------------------------------------------------------------

# Flags of the contract that this runnel build knows (its --help names them); missing ones are reported.
server_limit_flags() {
    help=$("$R" server --help 2>&1)
    SERVER_FLAGS=""
    for flag in --cgroup-root --require-limits --require-isolation --io-device; do
        if echo "$help" | grep -q -- "$flag"; then
            case $flag in
                --cgroup-root) SERVER_FLAGS="$SERVER_FLAGS $flag $ROOT_CG" ;;
                --io-device) SERVER_FLAGS="$SERVER_FLAGS $flag $IO_DEV" ;;
                *) SERVER_FLAGS="$SERVER_FLAGS $flag" ;;
            esac
        else
            info "this runnel server has no $flag flag; starting it without (limit checks will fail)"
        fi
    done
}

# start_server NAME: starts a server logging to $LOGS/NAME.log, sets SERVER_PID, waits for "listening on".
start_server() {
    SERVER_LOG=$LOGS/$1.log
    # shellcheck disable=SC2086 # SERVER_FLAGS is a word list
    "$R" server --listen "$LISTEN" --cert /pki/server.crt --key /pki/server.key --client-ca /pki/ca.crt \
        --state-dir "$STATE" --shutdown-grace 1s $SERVER_FLAGS 2>"$SERVER_LOG" &
    SERVER_PID=$!
    if wait_for 300 grep -q 'listening on' "$SERVER_LOG"; then
        echo "server $1 (pid $SERVER_PID) started: $(head -c 300 "$SERVER_LOG")"
        return 0
    fi
    echo "server $1 did not start; its log:"
    cat "$SERVER_LOG"
    return 1
}

# signal_server SIG [SECONDS]: signals the server and reaps it; SERVER_RC is its exit status (137 if it had
# to be killed after SECONDS), SERVER_EXIT_CS how long it took.
signal_server() {
    t0=$(now_cs)
    kill "-$1" "$SERVER_PID"
    (sleep "${2:-30}" && kill -9 "$SERVER_PID" 2>/dev/null) &
    watchdog=$!
    wait "$SERVER_PID"
    SERVER_RC=$?
    kill "$watchdog" 2>/dev/null
    SERVER_EXIT_CS=$(($(now_cs) - t0))
}

# ---- checks ----------------------------------------------------------------------------------------

# A plain job round trip, so a failing limit check is not mistaken for a broken harness.
check_roundtrip() {
    start roundtrip -- sh -c 'echo "hello from $(id -u)"; exit 3' || return
    wait_job "$JOB"
    out=$(client logs "$JOB" 2>&1)
    if [ "$WAIT_RC" = 3 ] && [ "${out%% *}" = hello ]; then
        pass roundtrip "wait rc 3, output \"$out\""
    else
        fail roundtrip "wait rc $WAIT_RC, output \"$out\", status $JS"
    fi
}

# 9. The job's UTS namespace is named after its id, it runs as a user of its own from the default range
# (1879048192 on), it cannot gain privileges, and its cgroup namespace shows its own cgroup as the root.
check_isolation() {
    start isolation -- sh -c 'hostname; grep NoNewPrivs /proc/self/status; echo "cgroup $(cat /proc/self/cgroup)"; echo "uid $(id -u) pid $$"' || return
    wait_job "$JOB"
    out=$(client logs "$JOB" 2>&1)
    want=$(echo "$JOB" | tr -d '-' | head -c 8)
    host=$(echo "$out" | head -1)
    nnp=$(echo "$out" | sed -n 's/^NoNewPrivs:[[:space:]]*//p')
    # Its cgroup namespace is rooted at its own cgroup: no host path shows.
    cgroup=$(echo "$out" | sed -n 's/^cgroup //p')
    rest=$(echo "$out" | tail -1)
    uid=${rest#uid }
    uid=${uid%% pid*}
    if [ "$host" = "$want" ] && [ "$nnp" = 1 ] && [ "$cgroup" = "0::/" ] && [ "$uid" -ge 1879048192 ] \
        && [ "${rest#* pid }" = 2 ]; then
        pass isolation "hostname $host (id $JOB), NoNewPrivs $nnp, /proc/self/cgroup $cgroup, $rest, guest hostname $(hostname)"
    else
        fail isolation "hostname \"$host\" (want $want), NoNewPrivs \"$nnp\" (want 1), /proc/self/cgroup \"$cgroup\" (want 0::/), $rest (want a uid from 1879048192, pid 2); status $JS"
    fi
}

# The limits a job asked for show in its status and in its cgroup's control files.
check_limits() {
    start limits --memory 64M --cpu 0.5 --pids 20 --io-read-bps 2M --io-write-bps 1M -- sleep 1005 || return
    cg=$ROOT_CG/jobs/$JOB
    wait_for 50 test -d "$cg"
    files="memory.max=$(cat "$cg/memory.max" 2>&1) cpu.max=\"$(cat "$cg/cpu.max" 2>&1)\""
    files="$files pids.max=$(cat "$cg/pids.max" 2>&1) io.max=\"$(cat "$cg/io.max" 2>&1)\""
    js=$(status_json "$JOB")
    client stop --grace 1s "$JOB" >/dev/null 2>&1
    got="$(echo "$js" | jget memory_bytes) $(echo "$js" | jget cpu_millicores) $(echo "$js" | jget max_pids)"
    got="$got $(echo "$js" | jget io_read_bps) $(echo "$js" | jget io_write_bps)"
    want_io="$IO_DEV rbps=2097152 wbps=1048576 riops=max wiops=max"
    if [ "$got" = "67108864 500 20 2097152 1048576" ] && echo "$files" | grep -q "memory.max=67108864 " \
        && echo "$files" | grep -q 'cpu.max="50000 100000"' && echo "$files" | grep -q "pids.max=20 " \
        && echo "$files" | grep -q "io.max=\"$want_io\""; then
        pass limits "status memory/cpu/pids/rbps/wbps = $got; cgroup $files"
    else
        fail limits "status memory/cpu/pids/rbps/wbps = \"$got\" (want 67108864 500 20 2097152 1048576); cgroup $cg: $files; status $js"
    fi
}

# The server is in supervisor/ with ten times the CPU weight of jobs/, so jobs that keep every CPU busy do not
# delay its calls.
check_supervisor() {
    weights="supervisor/cpu.weight=$(cat "$ROOT_CG/supervisor/cpu.weight" 2>&1) jobs/cpu.weight=$(cat "$ROOT_CG/jobs/cpu.weight" 2>&1)"
    if grep -qx "$SERVER_PID" "$ROOT_CG/supervisor/cgroup.procs" \
        && [ "$weights" = "supervisor/cpu.weight=1000 jobs/cpu.weight=100" ]; then
        pass supervisor "server pid $SERVER_PID in supervisor/; $weights"
    else
        fail supervisor "server pid $SERVER_PID; supervisor/cgroup.procs \"$(cat "$ROOT_CG/supervisor/cgroup.procs" 2>&1 | tr '\n' ' ')\"; $weights (want 1000 and 100)"
    fi
}

# 1. A 100 MiB allocation under --memory 32M is OOM-killed and reported as such.
check_oom() {
    start oom --memory 32M -- dd if=/dev/zero of=/dev/null bs=100M count=1 || return
    wait_job "$JOB"
    out=$(client logs "$JOB" 2>&1 | tr '\n' ' ')
    state=$(echo "$JS" | jget state)
    reason=$(echo "$JS" | jget end_reason)
    sig=$(echo "$JS" | jget signal)
    peak=$(echo "$JS" | jget memory_peak_bytes)
    if [ "$state" = KILLED ] && [ "$reason" = OOM_KILLED ] && ! echo "$out" | grep -q 'records out'; then
        pass oom "state $state, end_reason $reason, signal $sig, wait rc $WAIT_RC, memory_peak_bytes $peak, dd output \"$out\""
    else
        fail oom "state $state, end_reason $reason, signal $sig, wait rc $WAIT_RC, memory_peak_bytes $peak, dd output \"$out\""
    fi
}

# 2. A busy loop under --cpu 0.2 gets 15-25 % of one CPU over ~8 s of wall time. Its first instants (the init's
# setup, then the command until the server has read the init's report) run before cpu.max is written (see
# docs/architecture.md); under emulation on a loaded host they took 0.1-0.3 s of CPU, so the run is long enough
# for that startup to stay a small part of the average.
check_cpu() {
    t0=$(now_cs)
    start cpu --cpu 0.2 -- sh -c 'while :; do :; done' || return
    t1=$(now_cs)
    cg=$ROOT_CG/jobs/$JOB
    # A cross-check from the cgroup's own counter, sampled over 2 s while the job runs.
    sleep 0.4
    u1=$(sed -n 's/^usage_usec //p' "$cg/cpu.stat" 2>/dev/null)
    s1=$(now_cs)
    sleep 2
    u2=$(sed -n 's/^usage_usec //p' "$cg/cpu.stat" 2>/dev/null)
    s2=$(now_cs)
    throttled=$(sed -n 's/^nr_throttled //p' "$cg/cpu.stat" 2>/dev/null)
    sampled="no cpu.stat at $cg"
    [ -n "$u1" ] && [ -n "$u2" ] && sampled="cpu.stat sampled $(tenths $(((u2 - u1) / ((s2 - s1) * 10))))%, nr_throttled $throttled"
    while [ $(($(now_cs) - t1)) -lt 800 ]; do sleep 0.1; done
    t2=$(now_cs)
    client stop --grace 1s "$JOB" >/dev/null 2>&1
    t3=$(now_cs)
    wait_job "$JOB"
    usec=$(echo "$JS" | jget cpu_usec)
    # The job started somewhere in [t0, t1] and ended somewhere in [t2, t3]: take the midpoints.
    wall=$(((t2 + t3) / 2 - (t0 + t1) / 2))
    case $usec in '' | null | *[!0-9]*)
        fail cpu "usage.cpu_usec is \"$usec\" after $(secs $wall) s; $sampled; status $JS"
        return ;;
    esac
    permille=$((usec / (wall * 10)))
    msg="$(tenths $permille)% of one CPU (cpu_usec $usec over $(secs $wall) s wall); $sampled"
    if [ "$permille" -ge 150 ] && [ "$permille" -le 250 ]; then pass cpu "$msg"; else fail cpu "$msg; status $JS"; fi
}

# 3. Under --pids 10 a shell starting 30 background sleeps gets at most ~9 of them.
check_pids() {
    start pids --pids 10 -- sh -c 'i=0; while [ $i -lt 30 ]; do sleep 1004 & echo started; i=$((i + 1)); done; echo loop done' || return
    wait_job "$JOB"
    out=$(client logs "$JOB" 2>&1)
    n=$(echo "$out" | grep -c '^started')
    err=$(echo "$out" | grep -v -e '^started' -e '^loop done' | head -1)
    msg="$n of 30 background sleeps started (err: \"$err\"), wait rc $WAIT_RC"
    if [ "$n" -ge 5 ] && [ "$n" -le 10 ]; then pass pids "$msg"; else fail pids "$msg; status $JS"; fi
}

# 3b. Two jobs at once, each under --pids 10: each runs as a user of its own, so RLIMIT_NPROC (which runnel sets
# to 9: the init joins the count once it drops root) counts only its own processes, and each still gets at most
# ~9 background sleeps.
check_user_pids() {
    script='id -u; grep "Max processes" /proc/self/limits; i=0; while [ $i -lt 30 ]; do sleep 1006 & echo started; i=$((i + 1)); done'
    start user_pids --pids 10 -- sh -c "$script" || return
    first=$JOB
    start user_pids --pids 10 -- sh -c "$script" || return
    second=$JOB
    msg=""
    ok=1
    uids=""
    for job in $first $second; do
        wait_job "$job"
        out=$(client logs "$job" 2>&1)
        uid=$(echo "$out" | head -1)
        nproc=$(echo "$out" | grep "Max processes" | tr -s ' ' | cut -d' ' -f3)
        n=$(echo "$out" | grep -c '^started')
        msg="$msg uid $uid, RLIMIT_NPROC $nproc, $n of 30 started;"
        uids="$uids $uid"
        if [ "$uid" -lt 1879048192 ] || [ "$nproc" != 9 ] || [ "$n" -lt 5 ] || [ "$n" -gt 10 ]; then ok=0; fi
    done
    set -- $uids
    if [ "$1" = "$2" ]; then ok=0; fi
    if [ "$ok" = 1 ]; then pass user_pids "$msg"; else fail user_pids "$msg"; fi
}

# io_write_job [start flags]: a 4 MiB O_DIRECT write to the NVMe disk, timed inside the job (this
# busybox's dd prints no timing line); sets IO_CS to its duration in centiseconds.
io_write_job() {
    IO_CS=""
    IO_OUT=""
    WAIT_RC=""
    start_quiet "$@" -- sh -c 'read a _ </proc/uptime; dd if=/dev/zero of=/dev/nvme0n1 bs=64k count=64 oflag=direct || exit; read b _ </proc/uptime; echo "uptime $a $b"' || return 1
    wait_job "$JOB"
    IO_OUT=$(client logs "$JOB" 2>&1 | tr '\n' ' ')
    times=$(echo "$IO_OUT" | sed -n 's/.*uptime \([0-9]*\)\.\([0-9]*\) \([0-9]*\)\.\([0-9]*\).*/\1\2 \3\4/p')
    [ "$WAIT_RC" = 0 ] && [ -n "$times" ] || return 1
    set -- $times
    IO_CS=$(($(strip0 "$2") - $(strip0 "$1")))
    [ "$IO_CS" -gt 0 ] || IO_CS=1
}

# 4. --io-write-bps 1M holds a 4 MiB direct write to 0.75-1.25 MiB/s; unlimited is shown for comparison.
check_io() {
    if ! io_write_job; then
        fail io "the unlimited write failed: $START_ERR rc $WAIT_RC, output \"$IO_OUT\""
        return
    fi
    free="unlimited $(secs "$IO_CS") s = $((4096 * 100 / IO_CS)) KiB/s"
    if ! io_write_job --io-write-bps 1M; then
        fail io "the limited write failed: $START_ERR rc $WAIT_RC, output \"$IO_OUT\"; $free"
        return
    fi
    kibs=$((4096 * 100 / IO_CS))
    written=$(echo "$JS" | jget io_write_bytes)
    msg="limited 4 MiB in $(secs "$IO_CS") s = $kibs KiB/s; $free; usage.io_write_bytes $written"
    if [ "$kibs" -ge 768 ] && [ "$kibs" -le 1280 ] && [ "$written" = 4194304 ]; then
        pass io "$msg"
    else
        fail io "$msg (want 768-1280 KiB/s and 4194304 bytes); status $JS"
    fi
}

# 5. Stopping a job kills all its descendants, even ones in their own sessions that ignore SIGTERM.
check_stop_descendants() {
    start stop-descendants -- sh -c 'trap "" TERM; i=0; while [ $i -lt 50 ]; do setsid sleep 1001 & i=$((i + 1)); done; echo spawned; while :; do sleep 1; done' || return
    wait_for 300 logs_contain "$JOB" spawned
    wait_for 50 sleeps_are 1001 50
    before=$(count_sleeps 1001)
    had_cgroup=no
    [ -d "$ROOT_CG/jobs/$JOB" ] && had_cgroup=yes
    t0=$(now_cs)
    client stop --grace 1s "$JOB" >/dev/null 2>/tmp/stop.err
    took=$(($(now_cs) - t0))
    wait_job "$JOB"
    wait_for 50 sleeps_are 1001 0
    wait_for 50 test ! -d "$ROOT_CG/jobs/$JOB"
    after=$(count_sleeps 1001)
    dir=removed
    [ -d "$ROOT_CG/jobs/$JOB" ] && dir="still there"
    state=$(echo "$JS" | jget state)
    reason=$(echo "$JS" | jget end_reason)
    msg="$before descendants before stop, $after after; stop took $(secs $took) s; state $state, end_reason $reason; runnel/jobs/$JOB existed while running: $had_cgroup, after: $dir"
    if [ "$before" -eq 50 ] && [ "$after" -eq 0 ] && [ "$had_cgroup" = yes ] && [ "$dir" = removed ]; then
        pass stop-descendants "$msg"
    else
        fail stop-descendants "$msg; stop: $(cat /tmp/stop.err)"
    fi
}

# 6. An ended job reports the CPU time and peak memory it used.
check_usage() {
    start usage -- sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i + 1)); done; dd if=/dev/zero of=/dev/null bs=8M count=4 2>/dev/null' || return
    wait_job "$JOB"
    usec=$(echo "$JS" | jget cpu_usec)
    peak=$(echo "$JS" | jget memory_peak_bytes)
    msg="cpu_usec $usec, memory_peak_bytes $peak, io_read_bytes $(echo "$JS" | jget io_read_bytes), io_write_bytes $(echo "$JS" | jget io_write_bytes)"
    case "$usec$peak" in
        *[!0-9]* | '') fail usage "$msg; status $JS" ;;
        *) if [ "$usec" -gt 0 ] && [ "$peak" -gt 0 ]; then pass usage "$msg"; else fail usage "$msg; status $JS"; fi ;;
    esac
}

# A job whose processes ignore SIGTERM, one of them in its own session: only a cgroup-wide kill ends it.
start_stubborn_job() {
    start "$1" -- sh -c "trap '' TERM; setsid sleep $2 & sleep $2" || return 1
    wait_for 100 sleeps_are "$2" 2 && return 0
    fail "$1" "the job's two \"sleep $2\" processes never showed up (saw $(count_sleeps "$2")); status $(status_json "$JOB")"
    return 1
}

# 7. SIGTERM to the server ends its jobs and leaves no cgroup behind.
check_shutdown() {
    if ! start_stubborn_job shutdown 1002; then
        signal_server TERM 30
        return
    fi
    before=$(count_sleeps 1002)
    signal_server TERM 30
    wait_for 50 sleeps_are 1002 0
    left=$(cgroup_dirs)
    after=$(count_sleeps 1002)
    msg="server exited $SERVER_RC after $(secs $SERVER_EXIT_CS) s; job processes $before before, $after after; cgroups left under runnel/: \"$left\""
    if [ "$SERVER_RC" = 0 ] && [ -z "$left" ] && [ "$after" = 0 ]; then
        pass shutdown "$msg"
    else
        fail shutdown "$msg; server log tail: $(tail -n 5 "$SERVER_LOG" | tr '\n' ' ')"
    fi
}

# 8. A server killed with SIGKILL leaves its jobs running; the next server on the same root cleans them up.
check_crash_cleanup() {
    mkdir -p "$ROOT_CG"
    if ! start_server crash-1; then
        fail crash-cleanup "first server did not start: $(tail -n 5 "$SERVER_LOG" | tr '\n' ' ')"
        return
    fi
    if ! start_stubborn_job crash-cleanup 1003; then
        signal_server KILL
        return
    fi
    before=$(count_sleeps 1003)
    signal_server KILL
    sleep 0.5
    left_dirs=$(cgroup_dirs)
    left_procs=$(count_sleeps 1003)
    info "crash-cleanup: job processes before kill -9: $before; after kill -9: job processes $left_procs, cgroups \"$left_dirs\", state dir: $(ls "$STATE" 2>&1 | tr '\n' ' ')"
    if ! start_server crash-2; then
        fail crash-cleanup "second server did not start on the same root and state dir: $(tail -n 5 "$SERVER_LOG" | tr '\n' ' ')"
        return
    fi
    wait_for 50 no_job_dirs
    wait_for 50 sleeps_are 1003 0
    dirs=$(cgroup_dirs)
    procs=$(count_sleeps 1003)
    signal_server TERM 30
    final=$(cgroup_dirs)
    msg="before kill -9: $before job processes; after: $left_procs job processes, cgroups \"$left_dirs\"; after restart: $procs job processes, cgroups \"$dirs\"; clean shutdown exit $SERVER_RC, cgroups left \"$final\""
    if [ "$procs" = 0 ] && no_job_dirs && [ "$SERVER_RC" = 0 ] && [ -z "$final" ]; then
        pass crash-cleanup "$msg"
    else
        fail crash-cleanup "$msg; restart log: $(grep -v 'listening on' "$LOGS/crash-2.log" | head -n 5 | tr '\n' ' ')"
    fi
}

# ---- setup and main --------------------------------------------------------------------------------

setup() {
    mkdir -p "$LOGS" /pki
    echo "+cpu +memory +io +pids" >/sys/fs/cgroup/cgroup.subtree_control
    mkdir -p "$ROOT_CG"
    if [ -b /dev/nvme0n1 ]; then
        chmod 666 /dev/nvme0n1
        IO_DEV=$(cat /sys/block/nvme0n1/dev)
    else
        info "no /dev/nvme0n1: the io check will fail"
        IO_DEV=0:0
    fi
    "$R" certs ca --out /pki/ca >/dev/null &&
        "$R" certs server --ca /pki/ca --out /pki/server --dns localhost --ip 127.0.0.1 >/dev/null &&
        "$R" certs client --ca /pki/ca --name alice --out /pki/alice >/dev/null
}

dump_logs() {
    for log in "$LOGS"/*.log; do
        [ -f "$log" ] || continue
        echo "==== $log"
        cat "$log"
    done
}

main() {
    BOOT_CS=$(now_cs)
    info "guest kernel $(uname -r), $(nproc) CPUs, $(sed -n 's/MemTotal: *//p' /proc/meminfo) RAM, cgroup controllers \"$(cat /sys/fs/cgroup/cgroup.controllers)\", boot to suite $(secs "$BOOT_CS") s"
    if ! setup; then
        fail setup "could not make the PKI or the cgroup root"
        say "SUITE DONE: $PASSES passed, $FAILS failed"
        return 1
    fi
    server_limit_flags
    info "server flags:$SERVER_FLAGS"
    if ! start_server main; then
        fail server "the server did not start: $(tail -n 5 "$SERVER_LOG" | tr '\n' ' ')"
        say "SUITE DONE: $PASSES passed, $FAILS failed"
        dump_logs
        return 1
    fi
    for check in roundtrip supervisor isolation limits oom cpu pids user_pids io stop_descendants usage shutdown crash_cleanup; do
        section "$check"
        "check_$check"
    done
    kill "$SERVER_PID" 2>/dev/null
    dump_logs
    end=$(now_cs)
    say "SUITE DONE: $PASSES passed, $FAILS failed; boot $(secs "$BOOT_CS") s, suite $(secs $((end - BOOT_CS))) s"
    [ "$FAILS" -eq 0 ]
}

main
