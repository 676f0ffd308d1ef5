#!/usr/bin/env bash
# Proves that the shipped systemd unit (deploy/runnel.service with deploy/runnel.env) works under a real systemd.
# The host has no systemd as PID 1 and its cgroups belong to the infrastructure, so this boots a minimal Debian 12
# root file system with systemd as init in QEMU (the Debian cloud kernel tests/vm/run.sh boots), installed as
# the README's "Deploying with systemd" says: the static runnel at the unit's ExecStart path, the unit in
# /etc/systemd/system, the environment file where EnvironmentFile= names it and a PKI (made here with
# `runnel certs`) at the paths that file names. A oneshot unit in the guest, runnel-vmtest.service, runs
# tests/vm/systemd-guest.sh after multi-user.target: it enables and starts runnel, uses it with `runnel client`
# as a root admin and as an ordinary user, checks that Delegate=yes gives jobs working cgroup v2 limits, reads
# the journal, stops the service and checks it stopped cleanly, writes PASS/FAIL lines to the second serial port
# and hands QEMU its verdict through isa-debug-exit. Nothing here touches the host's cgroups or runs systemd on
# the host; the root file system is built with mmdebstrap (root mode, /sys not mounted into the chroot) from the
# Debian mirror the host's apt uses, and cached in $VM_DIR/systemd. What this shares with tests/vm/run.sh (the
# kernel, the QEMU boot, the verdict) is in tests/vm/lib.sh.
#
#   bash tests/vm/systemd.sh target/x86_64-unknown-linux-musl/release/runnel
#
# Environment: VM_DIR (default target/vm), VM_TIMEOUT seconds for boot + test (default 900), VM_MEM (default
# 1536M), VM_CPUS (default 2), SYSTEMD_VM_REBUILD=1 to rebuild the cached root file system, RUNNEL_REQUIRE_VM=1 to
# say a missing VM is an error in CI.
# Exit status: 0 every check passed; 1 a check failed, the guest gave no verdict, or the VM could not be set up.
set -euo pipefail

TAG=systemd-vm
VM_TIMEOUT=${VM_TIMEOUT:-900}
# shellcheck source=tests/vm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$(cd "$HERE/../.." && pwd)
SD_DIR=$VM_DIR/systemd
OUT=$SD_DIR
SUITE=bookworm
# systemd as init (systemd-sysv: /sbin/init), procps (ps, pgrep); coreutils, util-linux (setpriv), hostname,
# login, bash are Essential. udev: without it no device unit ever appears, and the serial-getty on the console
# makes the boot wait 90 s for dev-ttyS0.device.
PACKAGES=systemd,systemd-sysv,udev,procps
GUEST_HOSTNAME=runnelvm
UNIT=$REPO/deploy/runnel.service
ENV_FILE=$REPO/deploy/runnel.env

# The host apt's Debian sources for $SUITE and its -updates/-security suites, as one-line "deb" entries.
mirror_lines() {
    apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(COMPONENT)' 'Created-By: Packages' 2>/dev/null \
        | awk -v s="$SUITE" '$2 == s || index($2, s "-") == 1 { print "deb " $1 " " $2 " " $3 }' | sort -u
}

# The cached Debian root file system ($SD_DIR/base), rebuilt when the suite, packages or sources change.
build_base() {
    local mirrors stamp
    mapfile -t mirrors < <(mirror_lines)
    [[ ${#mirrors[@]} -gt 0 ]] || mirrors=("deb http://deb.debian.org/debian $SUITE main")
    stamp="suite=$SUITE variant=essential include=$PACKAGES sources=${mirrors[*]}"
    if [[ ${SYSTEMD_VM_REBUILD:-0} != 1 && -x $SD_DIR/base/lib/systemd/systemd && -f $SD_DIR/base.stamp ]] \
        && [[ $(cat "$SD_DIR/base.stamp") == "$stamp" ]]; then
        echo "$TAG: using the cached root file system $SD_DIR/base"
        BUILD_SECS=0
        return
    fi
    apt_install mmdebstrap mmdebstrap
    echo "$TAG: building a Debian $SUITE root file system with $PACKAGES (mmdebstrap; the host's sources: $(printf '%s; ' "${mirrors[@]}"))"
    local start=$SECONDS
    rm -rf "$SD_DIR/base" "$SD_DIR/base.new" "$SD_DIR/base.stamp"
    # Root mode runs maintainer scripts in a chroot with /dev and /proc mounted (services are kept from starting);
    # /sys is not mounted into it, so nothing in there can reach the host's cgroups.
    if ! mmdebstrap --mode=root --variant=essential --include="$PACKAGES" --format=directory \
        --skip=chroot/mount/sys \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$SD_DIR/base.new" "${mirrors[@]}" >"$SD_DIR/mmdebstrap.log" 2>&1; then
        tail -n 30 "$SD_DIR/mmdebstrap.log" >&2
        setup_failed "mmdebstrap failed (log: $SD_DIR/mmdebstrap.log)"
    fi
    mv "$SD_DIR/base.new" "$SD_DIR/base"
    echo "$stamp" >"$SD_DIR/base.stamp"
    BUILD_SECS=$((SECONDS - start))
    echo "$TAG: root file system built in ${BUILD_SECS}s ($(du -sh "$SD_DIR/base" | cut -f1))"
}

# value_of KEY FILE: the value of the last KEY= line of a unit or environment file.
value_of() { sed -n "s/^$1=//p" "$2" | tail -1; }

# A fresh copy of the base with runnel installed as the README's systemd walkthrough says, then the test unit.
stage_root() {
    local stage=$SD_DIR/stage exec_path env_path etc
    rm -rf "$stage"
    cp -a "$SD_DIR/base" "$stage"

    exec_path=$(value_of ExecStart "$UNIT" | awk '{print $1}')
    env_path=$(value_of EnvironmentFile "$UNIT")
    env_path=${env_path#-}
    [[ $exec_path == /* && $env_path == /* ]] || setup_failed "cannot read ExecStart/EnvironmentFile from $UNIT"
    install -D -m 0755 "$RUNNEL" "$stage$exec_path"
    install -D -m 0644 "$UNIT" "$stage/etc/systemd/system/runnel.service"
    install -D -m 0600 "$ENV_FILE" "$stage$env_path"

    # The PKI, as the README makes it in /etc/runnel: a CA, the server's certificate for the guest's
    # `hostname -f`, and a client certificate for the first admin identity the environment file names.
    etc=$stage$(dirname "$env_path")
    local admin
    admin=$(value_of RUNNEL_SERVER_ADMIN "$ENV_FILE" | cut -d, -f1)
    [[ -n $admin ]] || setup_failed "$ENV_FILE names no RUNNEL_SERVER_ADMIN"
    "$RUNNEL" certs ca --out "$etc/ca" >/dev/null 2>&1 || setup_failed "runnel certs failed"
    "$RUNNEL" certs server --ca "$etc/ca" --out "$etc/server" --dns "$GUEST_HOSTNAME" >/dev/null 2>&1 || setup_failed "runnel certs failed"
    "$RUNNEL" certs client --ca "$etc/ca" --name "$admin" --out "$etc/$admin" >/dev/null 2>&1 || setup_failed "runnel certs failed"
    # Every certificate and key the environment file names must be where it says.
    local var path
    for var in RUNNEL_SERVER_CERT RUNNEL_SERVER_KEY RUNNEL_SERVER_CLIENT_CA; do
        path=$(value_of "$var" "$ENV_FILE")
        [[ -n $path && -f $stage$path ]] || setup_failed "$var=$path in $ENV_FILE: no such file after making the PKI as the README says"
    done

    # An ordinary user with a client certificate of her own, for the non-admin view.
    echo "alice:x:1000:1000:Alice:/home/alice:/bin/bash" >>"$stage/etc/passwd"
    echo "alice:x:1000:" >>"$stage/etc/group"
    echo "alice:!:20000:0:99999:7:::" >>"$stage/etc/shadow"
    mkdir -p "$stage/home/alice/.runnel"
    "$RUNNEL" certs client --ca "$etc/ca" --name alice --out "$stage/home/alice/.runnel/alice" >/dev/null 2>&1 || setup_failed "runnel certs failed"
    cp "$etc/ca.crt" "$stage/home/alice/.runnel/ca.crt"
    chown -R 1000:1000 "$stage/home/alice"
    chmod 0700 "$stage/home/alice"

    echo "$GUEST_HOSTNAME" >"$stage/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$GUEST_HOSTNAME" \
        >"$stage/etc/hosts"
    : >"$stage/etc/fstab"

    # The test: a oneshot unit after multi-user.target running tests/vm/systemd-guest.sh.
    local libexec=$stage/usr/local/libexec/runnel-vmtest
    install -D -m 0755 "$HERE/systemd-guest.sh" "$libexec/test.sh"
    install -D -m 0755 "$OUT/debug-exit" "$libexec/debug-exit"
    cat >"$stage/etc/systemd/system/runnel-vmtest.service" <<'EOF'
[Unit]
Description=runnel systemd VM test (tests/vm/systemd.sh)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/runnel-vmtest/test.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
    mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
    ln -sf /etc/systemd/system/runnel-vmtest.service "$stage/etc/systemd/system/multi-user.target.wants/"
    # runnel itself is installed but not enabled: the test runs `systemctl enable --now runnel` as the README.
    rm -f "$stage/etc/systemd/system/multi-user.target.wants/runnel.service"

    IMAGE=$SD_DIR/root.img
    rm -f "$IMAGE"
    truncate -s 2G "$IMAGE"
    mkfs.ext4 -q -F -L runnelroot -d "$stage" "$IMAGE" || setup_failed "mkfs.ext4 -d $stage failed"
}

main() {
    need_runnel "" "$@"
    [[ -f $UNIT && -f $ENV_FILE ]] || setup_failed "no $UNIT or $ENV_FILE"
    apt_install qemu-system-x86_64 qemu-system-x86
    apt_install mkfs.ext4 e2fsprogs
    fetch_kernel
    build_debug_exit
    build_base
    local start=$SECONDS
    stage_root
    IMAGE_SECS=$((SECONDS - start))
    echo "$TAG: image $IMAGE made in ${IMAGE_SECS}s"
    pick_accel
    boot_guest "systemd as init, " "$IMAGE" unsafe "root=/dev/nvme0n1 rootwait rw init=/lib/systemd/systemd"
    verdict "root file system build ${BUILD_SECS}s, image ${IMAGE_SECS}s, boot + test ${ELAPSED}s"
}

main "$@"
