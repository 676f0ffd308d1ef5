# shellcheck shell=bash disable=SC2034 # RUNNEL, KERNEL, ELAPSED and the rest are set for the scripts sourcing this
# What tests/vm/run.sh (a busybox initramfs: the cgroup v2 limit suite) and tests/vm/systemd.sh (Debian with systemd
# as PID 1: the shipped unit) share on the host: checking the runnel binary, installing tools, the Debian cloud
# kernel, the guest's verdict helper, the QEMU boot and the verdict. A guest writes one line per check to its
# second serial port ("PASS name: ...", "FAIL name: ...", "INFO ...", "SUITE DONE ..." last) and hands QEMU its
# verdict through isa-debug-exit (tests/vm/debug-exit.c).
#
# The caller sets TAG (the prefix of its messages) and its VM_TIMEOUT default, then sources this file; it sets OUT
# (the folder for the verdict helper, the console log and the results) before build_debug_exit and boot_guest.
# Environment: VM_DIR (default target/vm), VM_MEM (default 1536M), VM_CPUS (default 2), RUNNEL_REQUIRE_VM=1 to
# say a missing VM is an error in CI.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_DIR=$(mkdir -p "${VM_DIR:-target/vm}" && cd "${VM_DIR:-target/vm}" && pwd)
VM_MEM=${VM_MEM:-1536M}
VM_CPUS=${VM_CPUS:-2}
CACHE=$VM_DIR/cache
KERNEL_META=linux-image-cloud-amd64

# Setup problems are failures either way: success is never printed when nothing ran.
setup_failed() {
    echo "$TAG: ERROR: cannot set up the QEMU guest: $*" >&2
    if [[ ${RUNNEL_REQUIRE_VM:-0} == 1 ]]; then
        echo "$TAG: RUNNEL_REQUIRE_VM=1: the VM test is required here; failing." >&2
    else
        echo "$TAG: nothing was tested; this is a failure, not a skip." >&2
    fi
    exit 1
}

# need_runnel WHY PATH: RUNNEL is PATH made absolute, once it is known to be a static executable; WHY, if not
# empty, says why a dynamically linked one will not do.
need_runnel() {
    local why=$1
    shift
    [[ $# -eq 1 ]] || { echo "usage: $0 PATH/TO/static/runnel" >&2; exit 2; }
    [[ -x $1 ]] || setup_failed "runnel binary $1 is missing or not executable (run make static)"
    if command -v readelf >/dev/null && readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; then
        setup_failed "$1 is dynamically linked${why:+; $why}: build it with make static"
    fi
    RUNNEL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
}

# apt_install COMMAND PACKAGE: installs PACKAGE unless COMMAND is already there.
apt_install() {
    command -v "$1" >/dev/null && return
    echo "$TAG: installing $2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2" >/dev/null; } \
        || setup_failed "apt-get install $2 failed"
    command -v "$1" >/dev/null || setup_failed "$1 not found after installing $2"
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

# KERNEL: the cloud kernel (NVMe, ext4 and every cgroup controller built in, LZ4: boots fastest under TCG), unpacked
# into the cache; nothing touches the host's /boot.
fetch_kernel() {
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
    if [[ ! -d $CACHE/kernel/boot || $kpkg -nt $CACHE/kernel/boot ]]; then
        rm -rf "$CACHE/kernel" && dpkg-deb -x "$kpkg" "$CACHE/kernel"
    fi
    KERNEL=$(ls "$CACHE"/kernel/boot/vmlinuz-* 2>/dev/null | head -1)
    [[ -f $KERNEL ]] || setup_failed "no vmlinuz in $kpkg"
}

# The guest's verdict helper, $OUT/debug-exit: a static binary doing the isa-debug-exit outb (see debug-exit.c).
build_debug_exit() {
    local cc
    mkdir -p "$OUT"
    for cc in x86_64-linux-musl-gcc "${CC:-cc}"; do
        command -v "$cc" >/dev/null || continue
        "$cc" -static -Os -o "$OUT/debug-exit" "$HERE/debug-exit.c" 2>"$OUT/debug-exit.err" && return
    done
    setup_failed "cannot build tests/vm/debug-exit.c as a static binary (need x86_64-linux-musl-gcc or cc with a static libc): $(cat "$OUT/debug-exit.err" 2>/dev/null)"
}

# KVM only when it can really run a guest here; the development machines have /dev/kvm without vmx/svm.
pick_accel() {
    if [[ -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        ACCEL=(-accel kvm -cpu host)
    else
        # shellcheck disable=SC2054 # the commas are QEMU's
        ACCEL=(-accel tcg,thread=multi -cpu max)
    fi
}

# boot_guest NOTE DISK CACHE CMDLINE [QEMU_ARGS...]: boots $KERNEL with QEMU_ARGS (an -initrd, say), CMDLINE
# before the console arguments on the kernel command line, and the raw image DISK as the NVMe namespace nvme0n1
# (host cache mode CACHE); NOTE goes into the "booting" line. The console (ttyS0) goes to $OUT/console.log, the
# results (ttyS1) to $OUT/results.txt, shown as they arrive. Sets QEMU_RC and ELAPSED (seconds).
boot_guest() {
    local note=$1 disk=$2 cache=$3 cmdline=$4
    shift 4
    CONSOLE=$OUT/console.log
    RESULTS=$OUT/results.txt
    : >"$CONSOLE"
    : >"$RESULTS"
    echo "$TAG: booting $(basename "$KERNEL") with $note${ACCEL[1]}, $VM_MEM, $VM_CPUS vCPUs (console: $CONSOLE)"
    local start=$SECONDS
    set +e
    timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
        "${ACCEL[@]}" -m "$VM_MEM" -smp "$VM_CPUS" \
        -nodefaults -display none -nic none -no-reboot \
        -kernel "$KERNEL" "$@" \
        -append "${cmdline:+$cmdline }console=ttyS0 panic=-1 loglevel=4" \
        -serial "file:$CONSOLE" -serial "file:$RESULTS" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -device nvme,id=nvme0,serial=runnelvm \
        -drive "file=$disk,if=none,id=d0,format=raw,cache=$cache" \
        -device nvme-ns,bus=nvme0,drive=d0,nsid=1 &
    local qemu=$!
    # shellcheck disable=SC2064 # this QEMU's pid, now; timeout passes the signal on to QEMU
    trap "kill $qemu 2>/dev/null" EXIT
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

# verdict TIMINGS: exits 1, with the console's tail, unless the guest said pass, finished its suite and passed
# every check; TIMINGS closes the last line.
verdict() {
    local fails passes why=""
    fails=$(tr -d '\r' <"$RESULTS" | grep -c '^FAIL ' || true)
    passes=$(tr -d '\r' <"$RESULTS" | grep -c '^PASS ' || true)
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
        echo "$TAG: ---- guest console ($CONSOLE) ----"
        tr -d '\r' <"$CONSOLE" | tail -n 300
        echo "$TAG: ---- end of console ----"
        echo "$TAG: FAILED: $why ($passes passed, $fails failed; $1)" >&2
        exit 1
    fi
    echo "$TAG: all $passes checks passed ($1)"
}
