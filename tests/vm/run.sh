#!/usr/bin/env bash
# Proves runnel's cgroup v2 limits hold on a real kernel. The host's cgroups belong to the infrastructure
# (hybrid mode, no v2 controllers), so this boots a Debian cloud kernel in QEMU with an initramfs holding
# busybox and the static runnel given as $1, runs tests/vm/guest.sh inside, and reports its PASS/FAIL lines.
# Nothing here writes to the host's /sys/fs/cgroup or /boot; downloads are cached in $VM_DIR/cache.
#
#   bash tests/vm/run.sh target/x86_64-unknown-linux-musl/release/runnel
#
# Environment: VM_DIR (default target/vm), VM_TIMEOUT seconds for the whole boot + suite (default 600),
# VM_MEM (default 1536M), VM_CPUS (default 2), RUNNEL_REQUIRE_VM=1 to say a missing VM is an error in CI.
# Exit status: 0 every check passed; 1 a check failed, the guest gave no verdict, or the VM could not be set up.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_DIR=$(mkdir -p "${VM_DIR:-target/vm}" && cd "${VM_DIR:-target/vm}" && pwd)
VM_TIMEOUT=${VM_TIMEOUT:-600}
VM_MEM=${VM_MEM:-1536M}
VM_CPUS=${VM_CPUS:-2}
CACHE=$VM_DIR/cache
KERNEL_META=linux-image-cloud-amd64

# Setup problems are failures either way: success is never printed when nothing ran.
setup_failed() {
    echo "vmtest: ERROR: cannot set up the QEMU guest: $*" >&2
    if [[ ${RUNNEL_REQUIRE_VM:-0} == 1 ]]; then
        echo "vmtest: RUNNEL_REQUIRE_VM=1: the VM test is required here; failing." >&2
    else
        echo "vmtest: nothing was tested; this is a failure, not a skip." >&2
    fi
    exit 1
}

need_runnel() {
    [[ $# -eq 1 ]] || { echo "usage: $0 PATH/TO/static/runnel" >&2; exit 2; }
    RUNNEL=$1
    [[ -x $RUNNEL ]] || setup_failed "runnel binary $RUNNEL is missing or not executable (run make static)"
    if command -v readelf >/dev/null && readelf -l "$RUNNEL" 2>/dev/null | grep -q 'Requesting program interpreter'; then
        setup_failed "$RUNNEL is dynamically linked; the guest has no libc: build it with make static"
    fi
}

apt_install_qemu() {
    command -v qemu-system-x86_64 >/dev/null && return
    echo "vmtest: installing qemu-system-x86"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; } \
        || setup_failed "apt-get install qemu-system-x86 failed"
    command -v qemu-system-x86_64 >/dev/null || setup_failed "qemu-system-x86_64 not found after installing"
}

# apt-get download PKG into the cache unless a .deb of it is already there; prints the .deb path.
fetch_deb() {
    local pkg=$1 deb
    deb=$(ls "$CACHE"/"${pkg}"_*.deb 2>/dev/null | tail -1 || true)
    if [[ -z $deb ]]; then
        (cd "$CACHE" && { apt-get download -q "$pkg" >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get download -q "$pkg" >/dev/null; }; }) \
            || setup_failed "apt-get download $pkg failed"
        deb=$(ls "$CACHE"/"${pkg}"_*.deb | tail -1)
    fi
    echo "$deb"
}

# The cloud kernel (NVMe and every cgroup controller built in, LZ4: boots fastest under TCG) and busybox.
fetch_guest_parts() {
    mkdir -p "$CACHE"
    local kpkg
    kpkg=$(ls "$CACHE"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | grep -v "/${KERNEL_META}_" | tail -1 || true)
    if [[ -z $kpkg ]]; then
        local real
        real=$(apt-cache depends "$KERNEL_META" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1)
        [[ -n $real ]] || { apt-get update -qq || true
            real=$(apt-cache depends "$KERNEL_META" | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1); }
        [[ -n $real ]] || setup_failed "cannot resolve $KERNEL_META to a versioned kernel package"
        kpkg=$(fetch_deb "$real")
    fi
    local bpkg
    bpkg=$(fetch_deb busybox-static)
    if [[ ! -d $CACHE/kernel/boot || $kpkg -nt $CACHE/kernel/boot ]]; then
        rm -rf "$CACHE/kernel" && dpkg-deb -x "$kpkg" "$CACHE/kernel"
    fi
    if [[ ! -x $CACHE/busybox/bin/busybox ]]; then
        rm -rf "$CACHE/busybox" && dpkg-deb -x "$bpkg" "$CACHE/busybox"
    fi
    KERNEL=$(ls "$CACHE"/kernel/boot/vmlinuz-* 2>/dev/null | head -1)
    BUSYBOX=$CACHE/busybox/bin/busybox
    [[ -f $KERNEL ]] || setup_failed "no vmlinuz in $kpkg"
    [[ -x $BUSYBOX ]] || setup_failed "no busybox in $bpkg"
}

# The guest's verdict helper: a static binary doing the isa-debug-exit outb (see debug-exit.c).
build_debug_exit() {
    local cc
    for cc in x86_64-linux-musl-gcc "${CC:-cc}"; do
        command -v "$cc" >/dev/null || continue
        "$cc" -static -Os -o "$VM_DIR/debug-exit" "$HERE/debug-exit.c" 2>"$VM_DIR/debug-exit.err" && return
    done
    setup_failed "cannot build tests/vm/debug-exit.c as a static binary (need x86_64-linux-musl-gcc or cc with a static libc): $(cat "$VM_DIR/debug-exit.err" 2>/dev/null)"
}

# One newc cpio: busybox, runnel, users, /init and the guest script. Device nodes are left to devtmpfs.
build_initramfs() {
    local root=$VM_DIR/root
    rm -rf "$root" && mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,pki}
    cp "$BUSYBOX" "$root/bin/busybox"
    cp "$RUNNEL" "$root/bin/runnel"
    cp "$VM_DIR/debug-exit" "$root/bin/debug-exit"
    cp "$HERE/init" "$root/init"
    cp "$HERE/guest.sh" "$root/guest.sh"
    chmod 755 "$root/init" "$root/guest.sh" "$root/bin/busybox" "$root/bin/runnel" "$root/bin/debug-exit"
    chmod 1777 "$root/tmp"
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true  # so the kernel can open PID 1's console
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    INITRAMFS=$VM_DIR/initramfs.cpio
    (cd "$root" && find . | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) >"$INITRAMFS"
    truncate -s %4 "$INITRAMFS"
}

# A fresh 64 MiB raw disk for the NVMe namespace the io.max check writes to.
make_disk() {
    DISK=$VM_DIR/disk.img
    rm -f "$DISK" && truncate -s 64M "$DISK"
}

# KVM only when it can really run a guest here; the development machines have /dev/kvm without vmx/svm.
pick_accel() {
    if [[ -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        ACCEL=(-accel kvm -cpu host)
    else
        ACCEL=(-accel tcg,thread=multi -cpu max)
    fi
}

boot_guest() {
    CONSOLE=$VM_DIR/console.log
    RESULTS=$VM_DIR/results.txt
    : >"$CONSOLE"
    : >"$RESULTS"
    echo "vmtest: booting $(basename "$KERNEL") with ${ACCEL[1]}, $VM_MEM, $VM_CPUS vCPUs (console: $CONSOLE)"
    local start=$SECONDS
    set +e
    timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
        "${ACCEL[@]}" -m "$VM_MEM" -smp "$VM_CPUS" \
        -nodefaults -display none -nic none -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRAMFS" \
        -append "console=ttyS0 panic=-1 loglevel=4" \
        -serial "file:$CONSOLE" -serial "file:$RESULTS" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -device nvme,id=nvme0,serial=runnelvm \
        -drive "file=$DISK,if=none,id=d0,format=raw,cache=none" \
        -device nvme-ns,bus=nvme0,drive=d0,nsid=1 &
    local qemu=$!
    trap "kill $qemu 2>/dev/null" EXIT  # timeout passes the signal on to QEMU
    # Show the guest's report as it arrives; tail ends by itself once QEMU has exited.
    tail -n +1 -F --pid=$qemu "$RESULTS" 2>/dev/null | sed -u 's/\r$//; s/^/  /' &
    local tailer=$!
    wait $qemu
    QEMU_RC=$?
    wait $tailer
    trap - EXIT
    set -e
    ELAPSED=$((SECONDS - start))
}

verdict() {
    local fails passes
    fails=$(tr -d '\r' <"$RESULTS" | grep -c '^FAIL ' || true)
    passes=$(tr -d '\r' <"$RESULTS" | grep -c '^PASS ' || true)
    local why=""
    case $QEMU_RC in
        1) ;;                                   # the guest wrote 0 to isa-debug-exit: it says pass
        3) why="the guest reported failure" ;;
        0) why="the guest powered off without a verdict" ;;
        124|137) why="timed out after ${VM_TIMEOUT}s" ;;
        *) why="qemu exited $QEMU_RC" ;;
    esac
    if ! tr -d '\r' <"$RESULTS" | grep -q '^SUITE DONE'; then
        why="${why:+$why; }the suite did not finish"
    fi
    if [[ -z $why && ( $fails -ne 0 || $passes -eq 0 ) ]]; then
        why="$passes passed, $fails failed"
    fi
    if [[ -n $why ]]; then
        echo "vmtest: ---- guest console ($CONSOLE) ----"
        tr -d '\r' <"$CONSOLE" | tail -n 300
        echo "vmtest: ---- end of console ----"
        echo "vmtest: FAILED: $why ($passes passed, $fails failed; ${ELAPSED}s boot + suite)" >&2
        exit 1
    fi
    echo "vmtest: all $passes checks passed (${ELAPSED}s boot + suite)"
}

main() {
    need_runnel "$@"
    apt_install_qemu
    fetch_guest_parts
    build_debug_exit
    build_initramfs
    make_disk
    pick_accel
    boot_guest
    verdict
}

main "$@"
