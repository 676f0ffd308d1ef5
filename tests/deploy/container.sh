#!/usr/bin/env bash
# The container image of deploy/Containerfile, built with podman from Debian's packages and run without a
# cgroup (nothing may create one on the host): `podman run --cgroups=disabled` where the host has cgroup v2,
# else the image's filesystem in new namespaces (see below). The static binary inside serves a job to the
# client on the host, configured by RUNNEL_SERVER_* variables alone, and stops cleanly on SIGTERM as the
# namespace's PID 1. Usage: container.sh STATIC_BINARY
set -euo pipefail
cd "$(dirname "$0")/../.."
static=$1
client=${2:-$static}
command -v podman >/dev/null || { echo "error: podman is needed (Debian package podman; make deps installs it)" >&2; exit 1; }
[ -x "$static" ] || { echo "error: no static binary at $static (make static)" >&2; exit 1; }
# vfs: works wherever podman does (no overlay module or fuse needed); the image is a few MB.
podman=(podman --storage-driver vfs --cgroup-manager cgroupfs)
name=runnel-test-$$
image=localhost/runnel-test:$$
work=$(mktemp -d)
unshare_pid=
cleanup() {
    if [ -n "$unshare_pid" ] && kill -0 "$unshare_pid" 2>/dev/null; then
        kill -KILL "$unshare_pid"   # --kill-child: the server goes with it
    fi
    "${podman[@]}" umount "$name" >/dev/null 2>&1 || true
    "${podman[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    "${podman[@]}" rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$client" certs ca --out "$work/pki/ca" 2>/dev/null
"$client" certs server --ca "$work/pki/ca" --out "$work/pki/server" --dns localhost --ip 127.0.0.1 2>/dev/null
"$client" certs client --ca "$work/pki/ca" --name alice --out "$work/pki/alice" 2>/dev/null
chmod 0644 "$work"/pki/*.key

# The build context holds only the binary where the Containerfile expects it.
mkdir -p "$work/context/target/x86_64-unknown-linux-musl/release"
cp "$static" "$work/context/target/x86_64-unknown-linux-musl/release/runnel"
"${podman[@]}" build -q -f deploy/Containerfile -t "$image" "$work/context" >/dev/null

port=$((40000 + RANDOM % 20000))
server_log=$work/server.log
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    # Host network: the client on the host reaches it on loopback. Privileged: to make jobs' namespaces. Limits
    # within ours: podman's defaults may be above what this process may set (crun then fails with EPERM).
    "${podman[@]}" run -d --name "$name" --cgroups=disabled --network host --privileged \
        --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=32768:32768 \
        -v "$work/pki:/etc/runnel:ro" -e RUNNEL_SERVER_LISTEN="127.0.0.1:$port" "$image" >/dev/null
    runtime="podman run --cgroups=disabled"
    server_output() { "${podman[@]}" logs "$name" 2>&1; }
    stop_server() { "${podman[@]}" stop -t 10 "$name" >/dev/null; }
else
    # Where the host's cgroups are in hybrid (or v1) mode, no OCI runtime here may start a container without
    # creating cgroups: crun refuses hybrid mode even with --cgroups=disabled, and runc cannot run without
    # cgroups. The equivalent: the image's own filesystem, entrypoint and environment, run in new mount, PID,
    # UTS and IPC namespaces on the host network (as --network host --privileged would), with no cgroup made.
    "${podman[@]}" create --name "$name" "$image" >/dev/null
    root=$("${podman[@]}" mount "$name")
    mkdir -p "$root/proc" "$root/dev" "$root/sys" "$root/etc/runnel"
    mapfile -t entrypoint < <("${podman[@]}" image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$image" | sed '/^$/d')
    mapfile -t environment < <("${podman[@]}" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --pid --uts --ipc --fork --kill-child --propagation private sh -c '
        root=$1 pki=$2; shift 2
        # The root a mount point of its own, as a runtime'"'"'s pivot_root makes it (jobs make their mounts private).
        # /proc, /dev and a read-only /sys, as a runtime gives a container (no cgroup filesystem under /sys).
        mount --bind "$root" "$root" && mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" &&
            mount -t sysfs -o ro sysfs "$root/sys" && mount --bind -o ro "$pki" "$root/etc/runnel"
        exec env -i "$@"' sh "$root" "$work/pki" "${environment[@]}" RUNNEL_SERVER_LISTEN="127.0.0.1:$port" \
        chroot "$root" "${entrypoint[@]}" >"$server_log" 2>&1 &
    unshare_pid=$!
    runtime="the image's root filesystem in new namespaces (no OCI runtime may run without cgroups on this host)"
    server_output() { cat "$server_log"; }
    stop_server() {
        # The server is the namespace's PID 1, the child of unshare: SIGTERM it as a runtime's stop would.
        local server
        server=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null | cut -d' ' -f1)
        [ -n "$server" ] && kill -TERM "$server"
        for _ in $(seq 100); do kill -0 "$unshare_pid" 2>/dev/null || return 0; sleep 0.1; done
        echo "container: the server did not stop within 10 s of SIGTERM" >&2
        return 1
    }
fi
for _ in $(seq 100); do
    server_output | grep -q 'listening on' && break
    sleep 0.1
done
server_output | grep -q 'listening on' || {
    echo "container: the server did not start:" >&2
    server_output >&2
    exit 1
}

export RUNNEL_SERVER="127.0.0.1:$port" RUNNEL_CERT="$work/pki/alice.crt" RUNNEL_KEY="$work/pki/alice.key" \
    RUNNEL_CA="$work/pki/ca.crt"
# The image holds nothing but runnel: the job runs it.
got=$("$client" client run -- /runnel version)
[ "$got" = "runnel $("$client" version | cut -d' ' -f2)" ] || { echo "container: the job printed '$got'" >&2; exit 1; }
"$client" client list -q | grep -q . || { echo "container: the job is not listed" >&2; exit 1; }
stop_server
server_output | grep -q 'server stopped' || { echo "container: no clean stop:" >&2; server_output >&2; exit 1; }
echo "container: image $(du -h "$static" | cut -f1) binary, FROM scratch, run by $runtime;" \
    "a job ran inside it and printed '$got'; SIGTERM stopped the server cleanly"
