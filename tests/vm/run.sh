#!/usr/bin/env bash
# Proves runnel's cgroup v2 limits hold on a real kernel. The host's cgroups belong to the infrastructure
# (hybrid mode, no v2 controllers), so this boots a Debian cloud kernel in QEMU with an initramfs holding
# busybox and the static runnel given as $1, runs tests/vm/guest.sh inside, and reports its PASS/FAIL lines.
# Nothing here writes to the host's /sys/fs/cgroup or /boot; downloads are cached in $VM_DIR/cache. What this
# shares with tests/vm/systemd.sh (the kernel, the QEMU boot, the verdict) is in tests/vm/lib.sh.
#
#   bash tests/vm/run.sh target/x86_64-unknown-linux-musl/release/runnel
#
# Environment: VM_DIR (default target/vm), VM_TIMEOUT seconds for the whole boot + suite (default 600),
# VM_MEM (default 1536M), VM_CPUS (default 2), RUNNEL_REQUIRE_VM=1 to say a missing VM is an error in CI.
# Exit status: 0 every check passed; 1 a check failed, the guest gave no verdict, or the VM could not be set up.
set -euo pipefail

TAG=vmtest
VM_TIMEOUT=${VM_TIMEOUT:-600}
# shellcheck source=tests/vm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=$VM_DIR

# BUSYBOX: busybox-static, unpacked into the cache: the guest's shell and tools.
fetch_busybox() {
    local bpkg
    bpkg=$(fetch_deb busybox-static)
    if [[ ! -x $CACHE/busybox/bin/busybox ]]; then
        rm -rf "$CACHE/busybox" && dpkg-deb -x "$bpkg" "$CACHE/busybox"
    fi
    BUSYBOX=$CACHE/busybox/bin/busybox
    [[ -x $BUSYBOX ]] || setup_failed "no busybox in $bpkg"
}

# One newc cpio: busybox, runnel, users, /init and the guest script. Device nodes are left to devtmpfs.
build_initramfs() {
    local root=$VM_DIR/root
    rm -rf "$root" && mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,pki}
    cp "$BUSYBOX" "$root/bin/busybox"
    cp "$RUNNEL" "$root/bin/runnel"
    cp "$OUT/debug-exit" "$root/bin/debug-exit"
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

main() {
    need_runnel "the guest has no libc" "$@"
    apt_install qemu-system-x86_64 qemu-system-x86
    fetch_kernel
    fetch_busybox
    build_debug_exit
    build_initramfs
    make_disk
    pick_accel
    boot_guest "" "$DISK" none "" -initrd "$INITRAMFS"
    verdict "${ELAPSED}s boot + suite"
}

main "$@"
