//! The default seccomp filter of an isolated job's command, in the spirit of Docker's default profile.
//!
//! A job needs ordinary system calls only. A few it never needs, and each widens the kernel code an
//! unprivileged process can reach, the usual path of a container escape: creating user namespaces (where the
//! job would hold every capability over namespaces of its own, and with them netfilter, mounts and more), the
//! key retention service, eBPF, perf events, userfaultfd, io_uring, module and kexec loading, the mount family,
//! and file handles. Those fail with EPERM, as a kernel without the feature would say, so programs that probe
//! for them fall back. `clone` with any namespace flag fails the same way, and `clone3`, whose flags a filter
//! cannot read (they sit behind a pointer), fails with ENOSYS, which makes the C library fall back to `clone`.
//! System calls of other ABIs (32-bit `int 0x80`, x32) fail with ENOSYS: their numbers would slip past the list.
//!
//! It is a deny list, not an allow list: what a job runs is arbitrary, and an allow list would break programs
//! in ways that are hard to diagnose. The filter is built once at startup, as classic BPF by hand (a few dozen
//! instructions; no crate needed), and installed by the command's process just before its exec
//! (`spawn::child_main`), after `NO_NEW_PRIVS`.

/// `AUDIT_ARCH_X86_64` from `linux/audit.h`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// The x32 ABI's system calls have this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: the call's number, its ABI, and the low 32 bits of its first argument.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

/// `CLONE_NEW*`: every namespace flag of `clone`.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32
    | 0x80; // CLONE_NEWTIME

/// What the filter refuses with EPERM, by name for the documentation and the tests.
pub const DENIED: [(&str, libc::c_long); 33] = [
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
];

/// A seccomp filter program, ready to install.
pub struct SeccompFilter {
    instructions: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for SeccompFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeccompFilter({} instructions)", self.instructions.len())
    }
}

impl SeccompFilter {
    /// runnel's default filter (see the module documentation).
    pub fn default_for_jobs() -> SeccompFilter {
        let errno = |code: i32| libc::SECCOMP_RET_ERRNO | (code as u32 & libc::SECCOMP_RET_DATA);
        let mut program = vec![
            // Another ABI: its numbers mean other calls.
            load(ARCH),
            jump_if_equal(AUDIT_ARCH_X86_64, 1, 0),
            ret(errno(libc::ENOSYS)),
            load(NR),
            jump(libc::BPF_JGE, X32_SYSCALL_BIT, 0, 1),
            ret(errno(libc::ENOSYS)),
        ];
        for (_, number) in DENIED {
            program.push(jump_if_equal(number as u32, 0, 1));
            program.push(ret(errno(libc::EPERM)));
        }
        program.push(jump_if_equal(libc::SYS_clone3 as u32, 0, 1));
        program.push(ret(errno(libc::ENOSYS)));
        program.push(jump_if_equal(libc::SYS_clone as u32, 1, 0));
        program.push(ret(libc::SECCOMP_RET_ALLOW));
        program.push(load(ARG0_LOW));
        program.push(jump(libc::BPF_JSET, NAMESPACE_FLAGS, 0, 1));
        program.push(ret(errno(libc::EPERM)));
        program.push(ret(libc::SECCOMP_RET_ALLOW));
        SeccompFilter { instructions: program }
    }

    /// The `sock_fprog` that `PR_SET_SECCOMP` takes, pointing into this filter (which must outlive its use).
    pub fn program(&self) -> libc::sock_fprog {
        libc::sock_fprog {
            len: self.instructions.len() as u16,
            filter: self.instructions.as_ptr() as *mut libc::sock_filter,
        }
    }
}

fn load(offset: u32) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: offset }
}

fn jump(condition: u32, value: u32, if_true: u8, if_false: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | condition | libc::BPF_K) as u16, jt: if_true, jf: if_false, k: value }
}

fn jump_if_equal(value: u32, if_true: u8, if_false: u8) -> libc::sock_filter {
    jump(libc::BPF_JEQ, value, if_true, if_false)
}

fn ret(action: u32) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: action }
}

/// Installs `program` on this process (and what it execs): raw, for a spawn's child.
///
/// # Safety
/// `program` must point to a valid filter for the duration of the call; `NO_NEW_PRIVS` must be set.
pub(super) unsafe fn install(program: *const libc::sock_fprog) -> bool {
    // SAFETY: per the contract, `program` is a valid sock_fprog.
    unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, program) == 0 }
}
