#!/usr/bin/env bash
# The container image of deploy/Containerfile, built with podman from Debian's packages and run with
# --cgroups=disabled (nothing may create a cgroup on the host): the static binary inside serves a job to the
# client on the host, configured by RUNNEL_SERVER_* variables alone. Usage: container.sh STATIC_BINARY
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
cleanup() {
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
# Host network: the client on the host reaches it on loopback. Privileged: to make jobs' namespaces. Limits
# within ours: podman's defaults may be above what this process may set (crun then fails with EPERM).
# Not run by `make test`: on a host whose cgroups are in hybrid mode crun refuses to start any container
# ("cgroups in hybrid mode not supported"), even with --cgroups=disabled, and that host's cgroups are not
# ours to change. Run it by hand on a host with cgroup v2 (or none) and podman.
"${podman[@]}" run -d --name "$name" --cgroups=disabled --network host --privileged --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=32768:32768 \
    -v "$work/pki:/etc/runnel:ro" -e RUNNEL_SERVER_LISTEN="127.0.0.1:$port" "$image" >/dev/null
for _ in $(seq 100); do
    "${podman[@]}" logs "$name" 2>&1 | grep -q 'listening on' && break
    sleep 0.1
done
"${podman[@]}" logs "$name" 2>&1 | grep -q 'listening on' || {
    echo "container: the server did not start:" >&2
    "${podman[@]}" logs "$name" >&2
    exit 1
}

export RUNNEL_SERVER="127.0.0.1:$port" RUNNEL_CERT="$work/pki/alice.crt" RUNNEL_KEY="$work/pki/alice.key" \
    RUNNEL_CA="$work/pki/ca.crt"
# The image holds nothing but runnel: the job runs it.
got=$("$client" client run -- /runnel version)
[ "$got" = "runnel $("$client" version | cut -d' ' -f2)" ] || { echo "container: the job printed '$got'" >&2; exit 1; }
"$client" client list -q | grep -q . || { echo "container: the job is not listed" >&2; exit 1; }
echo "container: image $(du -h "$static" | cut -f1) binary, FROM scratch; a job ran inside it: $got"
