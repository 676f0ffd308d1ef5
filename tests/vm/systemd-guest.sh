#!/bin/bash
# The guest half of tests/vm/systemd.sh: run by runnel-vmtest.service (Type=oneshot, after multi-user.target) in a
# Debian 12 guest booted with systemd as PID 1, where deploy/runnel.service, deploy/runnel.env and a PKI are
# installed as the README's "Deploying with systemd" says. It enables and starts the unit, uses the server with
# `runnel client` as an admin (root) and as an ordinary user (alice), checks that Delegate=yes gives jobs working
# cgroup v2 limits, reads the journal, stops the unit and checks it stopped cleanly, starts it again and checks
# Restart=on-failure after a crash; at each `systemctl enable --now` and `start` it checks what Type=notify
# promises: when the command returns, runnel listens and has logged so. Each check writes "PASS name: what was
# seen" or "FAIL name: why" to ttyS1; details go to the console. Then it hands QEMU the verdict through
# isa-debug-exit (0: pass, 1: fail).

set -u
RESULTS=/dev/ttyS1
LIBEXEC=/usr/local/libexec/runnel-vmtest
UNIT_FILE=/etc/systemd/system/runnel.service
PASSES=0
FAILS=0
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

stty -F "$RESULTS" raw -echo 2>/dev/null
say() { echo "$*"; echo "$*" >"$RESULTS"; }
pass() { say "PASS $1: $2"; PASSES=$((PASSES + 1)); }
fail() { say "FAIL $1: $2"; FAILS=$((FAILS + 1)); }
info() { say "INFO $*"; }
section() { echo; echo "==== $* (uptime $(cut -d' ' -f1 /proc/uptime) s)"; }
oneline() { tr '\n' ' ' | sed 's/  */ /g; s/ $//' | head -c "${1:-600}"; }
ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# The unit's own paths: the binary ExecStart runs and the environment file it reads.
R=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$UNIT_FILE" | tail -1)
ENV_FILE=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$UNIT_FILE" | tail -1)
envval() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -1; }
ETC=$(dirname "$ENV_FILE")
ADMIN=$(envval RUNNEL_SERVER_ADMIN | cut -d, -f1)
PORT=$(envval RUNNEL_SERVER_LISTEN | sed 's/.*://')
FQDN=$(hostname -f 2>/dev/null || hostname)
SERVER=$FQDN:${PORT:-50051}

# The client as its users would run it: settings from RUNNEL_* variables, nothing else in the environment.
as_admin() {
    env -i PATH="$PATH" HOME=/root RUNNEL_SERVER="$SERVER" RUNNEL_CERT="$ETC/$ADMIN.crt" RUNNEL_KEY="$ETC/$ADMIN.key" \
        RUNNEL_CA="$ETC/ca.crt" timeout 60 "$R" client "$@"
}
as_alice() {
    setpriv --reuid=1000 --regid=1000 --init-groups \
        env -i PATH="$PATH" HOME=/home/alice USER=alice RUNNEL_SERVER="$SERVER" \
        RUNNEL_CERT=/home/alice/.runnel/alice.crt RUNNEL_KEY=/home/alice/.runnel/alice.key \
        RUNNEL_CA=/home/alice/.runnel/ca.crt timeout 60 "$R" client "$@"
}
jget() { sed -nE 's/.*"'"$1"'":("[^"]*"|[^,}]*).*/\1/p' | tr -d '"'; }

# wait_for TRIES CMD...: retries CMD every 0.2 s.
wait_for() {
    local tries=$1
    shift
    while [ "$tries" -gt 0 ]; do
        "$@" && return 0
        sleep 0.2
        tries=$((tries - 1))
    done
    return 1
}
prop() { systemctl show runnel -p "$1" --value; }
# Seconds from runnel's last "listening on" to systemd's next "Started runnel.service" (Type=notify: runnel sends
# READY=1 after that line, and systemd logs "Started" on it). Journal times are when journald took each line in.
ready_gap() {
    journalctl -u runnel -o short-monotonic --no-pager 2>/dev/null | tr -d '[]' \
        | awk '/ listening on / { l = $1; s = "" } /systemd\[1\]|systemd1:/ && /Started runnel.service/ && l != "" && s == "" { s = $1 } END { if (s != "" && l != "") printf "%.3f", s - l; else print "?" }'
}
journal() { journalctl -u runnel -o cat --no-pager "$@" 2>/dev/null; }
listening_count() { journal | grep -c 'listening on'; }

# ready_at_once CHECK WHAT WANT: run as soon as WHAT (a `systemctl start` of the unit) has returned. Type=notify
# means systemd finished the start on runnel's READY=1, which runnel sends once it listens and has written its
# "listening on" line: so that line (the WANT-th) is in the journal and a client call succeeds, both without any
# wait. journald takes in runnel's stderr in its own time: `journalctl --sync` makes it take in what was written
# before the call (the count before it is shown too).
ready_at_once() {
    local check=$1 what=$2 want=$3 before after out rc msg
    before=$(listening_count)
    timeout 30 journalctl --sync
    after=$(listening_count)
    out=$(as_admin --timeout 5s list 2>&1)
    rc=$?
    msg="when $what returned: \"listening on\" lines in the journal $after (want $want; $before before journalctl --sync), a client call rc $rc \"$(echo "$out" | oneline 120)\"; Type=$(prop Type), \"listening on\" to \"Started\" $(ready_gap) s"
    if [ "$after" -ge "$want" ] && [ $rc = 0 ] && [ "$(prop Type)" = notify ]; then
        pass "$check" "$msg"
    else
        fail "$check" "$msg; journal: $(journal | tail -n 6 | oneline)"
    fi
}

# journal_cursor: where the journal ends now, for `journalctl --after-cursor` (runnel's lines so far taken in).
journal_cursor() {
    timeout 30 journalctl --sync
    journalctl -n 1 -o export --no-pager 2>/dev/null | sed -n 's/^__CURSOR=//p'
}
# stop_warnings CURSOR: runnel's WARN and ERROR lines after CURSOR (a clean stop logs none), but the loop's
# slow-turn lines: in a guest emulated by TCG (no KVM) a turn takes tens of times what it takes on a host, so
# those say how fast the emulator was, not what the stop did (the turns' figures are `make bench`'s).
stop_warnings() { journal --after-cursor "$1" | grep -E ' (WARN|ERROR) ' | grep -v ' a loop turn took ' | oneline; }
is_active() { [ "$(prop ActiveState)" = active ]; }
logs_contain() { as_alice logs "$1" 2>/dev/null | grep -q "$2"; }
count_procs() { pgrep -c -x -f "$1" 2>/dev/null || true; }
count_is() { [ "$(count_procs "$1")" -eq "$2" ]; }

# wait_job AS ID: waits for the job's end; WAIT_RC is `client wait`'s code, JS the status JSON.
wait_job() {
    "$1" wait "$2" >/dev/null 2>/tmp/wait.err
    WAIT_RC=$?
    JS=$("$1" status "$2" --json 2>&1)
    echo "job $2: $JS"
}

# ---- checks ----------------------------------------------------------------------------------------

check_boot() {
    local state failed
    state=$(timeout 30 systemctl is-system-running 2>&1)
    failed=$(systemctl --failed --no-legend --plain 2>&1 | awk '{print $1}' | oneline)
    local mu
    mu=$(systemctl show multi-user.target -p ActiveEnterTimestampMonotonic --value)
    info "guest: kernel $(uname -r), $(systemctl --version | head -1), PID 1 $(cat /proc/1/comm), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup) with \"$(cat /sys/fs/cgroup/cgroup.controllers)\", system $state (this test is part of the boot), failed units: \"$failed\", multi-user.target reached $(secs $((mu / 1000))) s after boot"
    info "runnel $("$R" --version 2>&1 | head -1) at $R, environment file $ENV_FILE, clients connect to $SERVER (hostname -f: $FQDN)"
}

check_verify() {
    local out rc
    out=$(systemd-analyze verify "$UNIT_FILE" 2>&1)
    rc=$?
    info "systemd-analyze security --offline=true: $(timeout 60 systemd-analyze security --offline=true "$UNIT_FILE" 2>&1 | tail -n 1 | sed 's/^→ *//')"
    if [ $rc = 0 ] && [ -z "$out" ]; then
        pass verify "systemd-analyze verify $UNIT_FILE: rc 0, no output (systemd $(systemctl --version | head -1 | cut -d' ' -f2))"
    else
        fail verify "systemd-analyze verify $UNIT_FILE: rc $rc: $(echo "$out" | oneline)"
    fi
}

check_enable() {
    local t0 out rc took enabled
    timeout 120 systemctl daemon-reload
    t0=$(ms)
    out=$(timeout 120 systemctl enable --now runnel 2>&1)
    rc=$?
    took=$(($(ms) - t0))
    ready_at_once ready "\`systemctl enable --now runnel\` (rc $rc, $(secs $took) s)" 1
    # Should the notification have failed, the checks after this one still get a running server.
    wait_for 300 is_active
    wait_for 300 eval '[ "$(listening_count)" -ge 1 ]'
    enabled=$(systemctl is-enabled runnel 2>&1)
    if [ $rc = 0 ] && [ "$enabled" = enabled ] && is_active && [ "$(listening_count)" -ge 1 ]; then
        pass enable "systemctl enable --now runnel: rc 0 in $(secs $took) s ($(echo "$out" | oneline 200)); is-enabled $enabled; ActiveState $(prop ActiveState), \"listening on\" lines $(listening_count)"
    else
        fail enable "systemctl enable --now runnel: rc $rc ($(echo "$out" | oneline 300)); is-enabled $enabled; ActiveState $(prop ActiveState); journal: $(journal | tail -n 8 | oneline)"
        return 1
    fi
}

has_controllers() {
    local c
    for c in cpu memory io pids; do echo " $1 " | grep -q " $c " || return 1; done
}

check_show() {
    local show cg main main_cg sub ctl kids
    show=$(systemctl show runnel -p ActiveState,SubState,ControlGroup,MainPID 2>&1)
    echo "$show"
    cg=$(prop ControlGroup)
    main=$(prop MainPID)
    main_cg=$(sed -n 's/^0:://p' "/proc/$main/cgroup" 2>/dev/null)
    sub=$(cat "/sys/fs/cgroup$cg/cgroup.subtree_control" 2>&1)
    ctl=$(cat "/sys/fs/cgroup$cg/cgroup.controllers" 2>&1)
    kids=$(cd "/sys/fs/cgroup$cg" 2>/dev/null && find . -mindepth 1 -maxdepth 1 -type d | sed 's|^\./||' | sort | oneline)
    UNIT_CG=$cg
    MAIN_PID=$main
    local sd_mount
    sd_mount=$(awk '$5 == "/var/lib/runnel" { print "mount " $4 " on " $5 " (" $6 ")" }' "/proc/$main/mountinfo" 2>/dev/null | oneline)
    info "the server's mount namespace: /var/lib/runnel is ${sd_mount:-not a mount point}; $(stat -c 'mode %a owner %U' /var/lib/runnel); OOMPolicy=$(prop OOMPolicy) KillMode=$(prop KillMode) TasksMax=$(prop TasksMax) LimitNOFILE=$(prop LimitNOFILE) NoNewPrivileges=$(prop NoNewPrivileges)"
    msg="$(echo "$show" | oneline); Delegate=$(prop Delegate) DelegateControllers=\"$(prop DelegateControllers)\"; main process in $main_cg; $cg: cgroup.controllers \"$ctl\", cgroup.subtree_control \"$sub\", children \"$kids\""
    if echo "$show" | grep -qx ActiveState=active && echo "$show" | grep -qx SubState=running \
        && [ "$cg" = /system.slice/runnel.service ] && [ "${main:-0}" -gt 0 ] && [ "$main_cg" = "$cg/supervisor" ] \
        && has_controllers "$sub"; then
        pass show "$msg"
    else
        fail show "$msg"
    fi
}

check_admin_run() {
    local out rc
    out=$(as_admin run -- sh -c 'echo "hello from $(hostname) as uid $(id -u)"; exit 3' 2>&1)
    rc=$?
    if [ $rc = 3 ] && echo "$out" | grep -q '^hello from .* as uid [0-9]'; then
        pass admin-run "client run as $ADMIN: exit 3 passed on, output \"$(echo "$out" | oneline)\""
    else
        fail admin-run "client run as $ADMIN: rc $rc (want 3), output \"$(echo "$out" | oneline)\"; journal: $(journal | tail -n 5 | oneline)"
    fi
}

check_user_jobs() {
    local id status mine all
    id=$(as_alice start -- sh -c 'echo hi from alice; sleep 1' 2>/tmp/start.err)
    if [ -z "$id" ]; then
        fail user-jobs "alice's start refused: $(oneline </tmp/start.err)"
        return
    fi
    wait_job as_alice "$id"
    status=$(as_alice status "$id" 2>&1)
    mine=$(as_alice list 2>&1)
    all=$(as_admin list 2>&1)
    echo "alice status:"; echo "$status"; echo "alice list:"; echo "$mine"; echo "admin list:"; echo "$all"
    local short=${id:0:8}
    if [ "$WAIT_RC" = 0 ] && [ "$(as_alice logs "$id" 2>&1)" = "hi from alice" ] && echo "$status" | grep -q "$short.*alice.*EXITED" \
        && echo "$mine" | grep -q "$short" && ! echo "$mine" | grep -q " $ADMIN " && echo "$all" | grep -q "$short.*alice" \
        && echo "$all" | grep -q " $ADMIN "; then
        pass user-jobs "alice's job $short: wait rc 0, logs \"hi from alice\"; status: $(echo "$status" | tail -1 | oneline); alice's list has $(($(echo "$mine" | wc -l) - 1)) job(s), all hers; $ADMIN's list has $(($(echo "$all" | wc -l) - 1)) (hers and $ADMIN's)"
    else
        fail user-jobs "wait rc $WAIT_RC; status \"$(echo "$status" | oneline)\"; alice's list \"$(echo "$mine" | oneline)\"; admin's list \"$(echo "$all" | oneline)\""
    fi
}

check_limits() {
    local id cg js pid pid_cg files got self
    id=$(as_alice start --memory 64M --pids 20 --cpu 0.5 -- sh -c 'echo "cgroup $(cat /proc/self/cgroup)"; c=$(sed -n "s/^0:://p" /proc/self/cgroup); for f in memory.max pids.max cpu.max; do echo "$f $(cat /sys/fs/cgroup$c/$f 2>&1)"; done; echo "mounts: $(grep -c . /proc/self/mountinfo), cgroup mounts: $(grep -c cgroup /proc/self/mountinfo), /sys/fs/cgroup has $(ls /sys/fs/cgroup 2>/dev/null | wc -l) entries"; echo ready; sleep 300' 2>/tmp/start.err)
    if [ -z "$id" ]; then
        fail limits "start refused: $(oneline </tmp/start.err)"
        return
    fi
    cg=/sys/fs/cgroup$UNIT_CG/jobs/$id
    wait_for 100 logs_contain "$id" ready
    js=$(as_alice status "$id" --json 2>&1)
    pid=$(echo "$js" | jget pid)
    pid_cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>/dev/null)
    files="memory.max=$(cat "$cg/memory.max" 2>&1) pids.max=$(cat "$cg/pids.max" 2>&1) cpu.max=\"$(cat "$cg/cpu.max" 2>&1)\" cgroup.procs=$(oneline <"$cg/cgroup.procs" 2>/dev/null)"
    self=$(as_alice logs "$id" 2>&1 | grep -v '^ready' | oneline)
    got="memory_bytes $(echo "$js" | jget memory_bytes), max_pids $(echo "$js" | jget max_pids), cpu_millicores $(echo "$js" | jget cpu_millicores)"
    echo "limits job: $js"
    as_alice stop --grace 1s "$id" >/dev/null 2>&1
    if [ "$got" = "memory_bytes 67108864, max_pids 20, cpu_millicores 500" ] && echo "$files" | grep -q 'memory.max=67108864 pids.max=20 cpu.max="50000 100000"' \
        && [ "$pid_cg" = "$UNIT_CG/jobs/$id" ]; then
        pass limits "status: $got; $cg: $files; job pid $pid in $pid_cg; the job itself says: \"$self\""
    else
        fail limits "status: $got (want 67108864, 20, 500); $cg: $files; job pid $pid in \"$pid_cg\"; the job says \"$self\"; status $js"
    fi
}

check_oom() {
    local id state reason peak out main_before
    main_before=$(prop MainPID)
    id=$(as_alice start --memory 32M -- dd if=/dev/zero of=/dev/null bs=100M count=1 2>/tmp/start.err)
    [ -n "$id" ] || { fail oom "start refused: $(oneline </tmp/start.err)"; return; }
    wait_job as_alice "$id"
    state=$(echo "$JS" | jget state)
    reason=$(echo "$JS" | jget end_reason)
    peak=$(echo "$JS" | jget memory_peak_bytes)
    out=$(as_alice logs "$id" 2>&1 | oneline)
    sleep 1
    local svc
    svc="service after the OOM kill: $(systemctl show runnel -p ActiveState,SubState,MainPID,OOMPolicy | oneline) (MainPID before $main_before)"
    local msg="--memory 32M, 100 MiB dd buffer: state $state, end_reason $reason, signal $(echo "$JS" | jget signal), wait rc $WAIT_RC, memory_peak_bytes $peak, output \"$out\"; $svc"
    if [ "$state" = KILLED ] && [ "$reason" = OOM_KILLED ] && is_active && [ "$(prop MainPID)" = "$main_before" ]; then pass oom "$msg"; else fail oom "$msg; status $JS"; fi
}

check_pids() {
    local id out n
    id=$(as_alice start --pids 10 -- sh -c 'i=0; while [ $i -lt 30 ]; do sleep 30 & echo started; i=$((i + 1)); done; echo loop done' 2>/tmp/start.err)
    [ -n "$id" ] || { fail pids "start refused: $(oneline </tmp/start.err)"; return; }
    wait_job as_alice "$id"
    out=$(as_alice logs "$id" 2>&1)
    n=$(echo "$out" | grep -c '^started')
    local msg="--pids 10: $n of 30 background sleeps started, then \"$(echo "$out" | grep -v '^started' | head -1)\"; max_pids $(echo "$JS" | jget max_pids)"
    if [ "$n" -ge 5 ] && [ "$n" -le 10 ]; then pass pids "$msg"; else fail pids "$msg; status $JS"; fi
}

check_journal() {
    local listen audit warn
    listen=$(journal | grep 'listening on' | head -1)
    audit=$(journal | grep 'rpc peer=' | grep 'identity="alice"' | grep 'method=StartJob' | head -1)
    warn=$(journal | grep -E '(WARN|ERROR) ' | head -5 | oneline 800)
    [ -z "$warn" ] || info "journal warnings/errors from runnel: $warn"
    if [ -n "$listen" ] && [ -n "$audit" ]; then
        pass journal "journalctl -u runnel: \"$listen\"; audit: \"$audit\""
    else
        fail journal "listening line \"$listen\", audit line \"$audit\"; journal tail: $(journal | tail -n 10 | oneline)"
    fi
}

# A running job and one that ignores SIGTERM, then `systemctl stop runnel`: the server must stop them itself
# (KillMode=mixed sends SIGTERM to it alone), leave only the jobs' history in its state directory (jobs/, and the
# lock file emptied) and exit 0, with no warning.
check_stop() {
    local id1 id2 before t0 took show left procs cg_left sd_kill state_dir cursor
    id1=$(as_alice start -- sleep 1000 2>/dev/null)
    id2=$(as_alice start -- sh -c 'trap "" TERM; sleep 1001 & wait; wait' 2>/dev/null)
    wait_for 100 count_is 'sleep 1000' 1
    wait_for 100 count_is 'sleep 1001' 1
    before="jobs running: sleep 1000 x$(count_procs 'sleep 1000'), sleep 1001 x$(count_procs 'sleep 1001'); /var/lib/runnel ($(stat -c %a /var/lib/runnel 2>&1)): $(ls -A /var/lib/runnel 2>&1 | oneline 200)"
    cursor=$(journal_cursor)
    t0=$(ms)
    timeout 120 systemctl stop runnel
    local rc=$?
    took=$(($(ms) - t0))
    show=$(systemctl show runnel -p ActiveState,SubState,Result,ExecMainCode,ExecMainStatus,MainPID 2>&1 | oneline)
    procs="sleep 1000 x$(count_procs 'sleep 1000'), sleep 1001 x$(count_procs 'sleep 1001')"
    if [ -e /var/lib/runnel ]; then state_dir="/var/lib/runnel holds \"$(ls -A /var/lib/runnel | oneline 200)\""; else state_dir="/var/lib/runnel removed"; fi
    cg_left=gone
    [ -d "/sys/fs/cgroup$UNIT_CG" ] && cg_left="still there: $(find "/sys/fs/cgroup$UNIT_CG" -mindepth 1 -type d | oneline)"
    sd_kill=$(journalctl -u runnel --after-cursor "$cursor" -o short --no-pager | grep -E 'systemd\[1\]: ' | grep -iE 'SIGKILL|Killing|timed out|Failed|left-over' | oneline)
    local warn
    warn=$(stop_warnings "$cursor")
    echo "journal since stop:"
    journalctl -u runnel --after-cursor "$cursor" -o short-monotonic --no-pager
    local msg="before: $before; systemctl stop rc $rc in $(secs $took) s; $show; after: $procs, $state_dir, unit cgroup $cg_left; systemd killing/failing: \"$sd_kill\"; runnel's warnings: \"$warn\""
    if [ $rc = 0 ] && echo "$show" | grep -q 'ActiveState=inactive' && echo "$show" | grep -q 'Result=success' \
        && echo " $show " | grep -q ' ExecMainCode=1 ' && echo " $show " | grep -q ' ExecMainStatus=0 ' \
        && [ "$procs" = "sleep 1000 x0, sleep 1001 x0" ] && [ "$(ls -A /var/lib/runnel | oneline)" = "jobs runnel.lock" ] \
        && [ ! -s /var/lib/runnel/runnel.lock ] \
        && [ "$cg_left" = gone ] && [ -z "$sd_kill" ] && [ -z "$warn" ]; then
        pass stop "$msg"
    else
        fail stop "$msg"
    fi
}

# Started again after a clean stop, then the server killed with SIGKILL: Restart=on-failure brings it back, the
# job it ran is listed lost (its processes died with it), and the jobs stopped at the clean stop are listed as
# ended by it.
check_restart() {
    local t0 mode out id main1 main2 cg show rc
    t0=$(ms)
    timeout 120 systemctl start runnel
    rc=$?
    ready_at_once ready-again "\`systemctl start runnel\` (rc $rc, $(secs $(($(ms) - t0))) s)" 2
    wait_for 300 eval '[ "$(listening_count)" -ge 2 ]'
    mode=$(stat -c '%a %U' /var/lib/runnel 2>&1)
    out=$(as_alice run -- echo again 2>&1)
    if [ $rc != 0 ] || [ "$out" != again ]; then
        fail restart "systemctl start after stop: rc $rc, ActiveState $(prop ActiveState), listening lines $(listening_count), state dir $mode, job output \"$out\"; journal: $(journal | tail -n 6 | oneline)"
        return
    fi
    local started="started again in $(secs $(($(ms) - t0))) s, state dir $mode, job output \"$out\""
    id=$(as_alice start -- sh -c 'trap "" TERM; sleep 1002' 2>/dev/null)
    wait_for 100 count_is 'sleep 1002' 1
    main1=$(prop MainPID)
    cg=$(prop ControlGroup)
    kill -9 "$main1"
    wait_for 150 eval '[ "$(prop NRestarts)" -ge 1 ] && [ "$(prop MainPID)" != "$main1" ] && [ "$(prop MainPID)" != 0 ]'
    wait_for 300 eval '[ "$(listening_count)" -ge 3 ]'
    wait_for 50 count_is 'sleep 1002' 0
    main2=$(prop MainPID)
    show=$(systemctl show runnel -p ActiveState,SubState,NRestarts,MainPID | oneline)
    out=$(as_alice run -- echo after crash 2>&1)
    local old history
    old=$(as_alice status "$id" 2>&1 | tail -1 | oneline 200)
    history=$(as_alice list --state killed 2>&1 | grep -c 'sleep 100[01]')
    local jobs
    jobs=$(find "/sys/fs/cgroup$cg/jobs" -mindepth 1 -type d 2>/dev/null | oneline)
    echo "journal around the crash:"
    journal | tail -n 20
    started="$started; after the crash \"listening on\" to \"Started\" $(ready_gap) s"
    local msg="$started; kill -9 of main pid $main1: $show, listening lines $(listening_count), the old job's sleep x$(count_procs 'sleep 1002'), leftover job cgroups \"$jobs\", old job now \"$old\", jobs of the clean stop listed: $history, new job output \"$out\""
    if [ "$main2" != "$main1" ] && is_active && [ "$(prop NRestarts)" -ge 1 ] && [ "$(count_procs 'sleep 1002')" = 0 ] \
        && [ "$out" = "after crash" ] && echo "$old" | grep -q ' lost ' && [ "$history" = 2 ]; then
        pass restart "$msg"
    else
        fail restart "$msg"
    fi
    # The last word: a clean stop again (the warnings about the crash's leftovers came before it).
    local cursor warn
    cursor=$(journal_cursor)
    timeout 120 systemctl stop runnel
    show=$(systemctl show runnel -p ActiveState,Result,ExecMainCode,ExecMainStatus | oneline)
    warn=$(stop_warnings "$cursor")
    if echo " $show " | grep -q ' ActiveState=inactive ' && echo " $show " | grep -q ' Result=success ' \
        && echo " $show " | grep -q ' ExecMainCode=1 ' && echo " $show " | grep -q ' ExecMainStatus=0 ' && [ -z "$warn" ]; then
        pass final-stop "$show; runnel's warnings: \"$warn\""
    else
        fail final-stop "$show; runnel's warnings: \"$warn\"; journal: $(journal | tail -n 6 | oneline)"
    fi
}

# Why the server cannot remove its state directory under the unit: with a mount namespace (which the Protect*
# options ask for), systemd bind-mounts StateDirectory= into it, so it is a mount point there. Two runtime oneshot
# units, StateDirectory= alone and with ProtectKernelModules=yes, each count the directory's mount entries and
# try `rmdir` on it. (systemctl reaches PID 1 without D-Bus; systemd-run does not, and the guest has no D-Bus.)
probe_unit() {
    cat >"/run/systemd/system/$1.service" <<EOF
[Service]
Type=oneshot
StateDirectory=runnel-probe
$2
ExecStart=/bin/sh -c 'echo "mount entries: \$\$(grep -c " /var/lib/runnel-probe " /proc/self/mountinfo)"; rmdir /var/lib/runnel-probe 2>&1 && echo rmdir: removed; true'
EOF
    systemctl daemon-reload
    timeout 60 systemctl start "$1"
    journalctl -u "$1" -o cat --no-pager | grep -E '^(mount entries|rmdir)' | oneline
    rm -f "/run/systemd/system/$1.service"
    rm -rf /var/lib/runnel-probe
}

diag_state_dir() {
    local plain ns
    plain=$(probe_unit runnel-probe-plain "")
    ns=$(probe_unit runnel-probe-ns ProtectKernelModules=yes)
    systemctl daemon-reload
    info "state directory diagnosis (runtime oneshot units): StateDirectory= alone: \"$plain\"; with ProtectKernelModules=yes: \"$ns\""
}

main() {
    section boot
    check_boot
    section verify
    check_verify
    section enable
    if check_enable; then
        for check in show admin_run user_jobs limits oom pids journal stop restart; do
            section "$check"
            "check_$check"
        done
        section diagnosis
        diag_state_dir
    fi
    echo "==== journalctl -u runnel"
    journalctl -u runnel -o short-monotonic --no-pager | tail -n 200
    say "SUITE DONE: $PASSES passed, $FAILS failed; uptime $(cut -d' ' -f1 /proc/uptime) s"
    [ "$FAILS" -eq 0 ]
}

main
rc=$?
sleep 0.5
if [ $rc -eq 0 ]; then "$LIBEXEC/debug-exit" 0; else "$LIBEXEC/debug-exit" 1; fi
echo "no isa-debug-exit device answered (rc $rc); powering off"
systemctl poweroff --force
