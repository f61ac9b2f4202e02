"""The worker's seccomp filter, built with libseccomp (Debian libseccomp2) through ctypes.

Installed by the worker after the VM is restored and before its vCPUs first run, with
SCMP_FLTATR_CTL_TSYNC so threads started earlier (the uffd handler) are covered too; vCPU and
device threads inherit it. The allow-list was found by running workers through launch, pause,
snapshot, suspend, resume and stop with the filter in log mode (`seccomp = "log"` in the
daemon's config: every call outside the list is logged to the kernel log as an audit record
"type=1326 ... syscall=N") and adding what a VMM worker legitimately needs; see docs/daemon.md.
Enforced, anything else kills the whole worker (SIGSYS), which the daemon reports.

Argument checks: clone only with CLONE_THREAD (threads, never new processes); clone3 answers
ENOSYS so glibc falls back to clone; socket only AF_UNIX (the vsock bridge and the daemon link).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

ACT_KILL_PROCESS = 0x80000000
ACT_TRAP = 0x00030000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000


def ACT_ERRNO(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


FLTATR_CTL_TSYNC = 4
CMP_EQ = 4
CMP_MASKED_EQ = 7
CLONE_THREAD = 0x00010000
AF_UNIX = 1

# What a VMM worker does: Python's own runtime, KVM ioctls, guest memory (mmap/madvise/
# userfaultfd), snapshot files (open/write/fsync/rename), threads, eventfd/epoll/poll, the
# daemon link (AF_UNIX accept/recv/send), time and signals for vCPU kicks. Snapshot files are
# opened with openat2 (no symlinks) and published with O_TMPFILE + linkat (docs/native-core.md).
ALLOW = """
read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 lseek close close_range
openat openat2 linkat open fstat newfstatat statx stat lstat fstatfs statfs getdents64 readlink readlinkat
access faccessat faccessat2 getcwd fcntl dup dup2 dup3 pipe pipe2 ioctl
mkdir mkdirat rename renameat renameat2 unlink unlinkat rmdir fsync fdatasync ftruncate fallocate
sync_file_range copy_file_range sendfile fadvise64 flock fchmod fchmodat umask
mmap munmap mprotect mremap madvise brk mincore mlock munlock membarrier userfaultfd memfd_create
rt_sigaction rt_sigprocmask rt_sigreturn rt_sigtimedwait sigaltstack tgkill tkill
futex futex_waitv set_robust_list get_robust_list rseq set_tid_address sched_yield
sched_getaffinity sched_setaffinity sched_getparam sched_getscheduler
exit exit_group gettid getpid getppid getuid geteuid getgid getegid getresuid getresgid getgroups
clock_gettime clock_getres clock_nanosleep nanosleep gettimeofday time getrusage sysinfo uname
prlimit64 getrlimit getrandom arch_prctl prctl
eventfd eventfd2 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2
poll ppoll select pselect6 timerfd_create timerfd_settime timerfd_gettime
accept accept4 bind listen connect recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg shutdown
getsockopt setsockopt getsockname getpeername socketpair
""".split()


class SeccompError(OSError):
    pass


@functools.lru_cache(maxsize=1)
def _lib():
    """Loaded once (the zygote does it at start): find_library runs ldconfig, ~10 ms."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompError(errno.ENOENT, f"cannot load libseccomp ({e}); install the Debian "
                           "package libseccomp2 (scripts/setup.sh does)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_void_p]
    return lib


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SeccompError(-rc, f"seccomp: {what}: {os.strerror(-rc)}")


def install(mode: str = "enforce", extra_allow: tuple[str, ...] = (),
            children: tuple[int, ...] = ()) -> int:
    """Loads the worker filter into this process (all threads). Returns the rules added.
    `children`: processes the worker started before the filter (its passt), which it may still
    signal and reap, and no other.

    mode "enforce": anything outside the list kills the process; "log": it is allowed and
    logged (how the list was found).
    """
    if mode == "off":
        return 0
    lib = _lib()
    default = ACT_KILL_PROCESS if mode == "enforce" else ACT_LOG
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompError(errno.ENOMEM, "seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, FLTATR_CTL_TSYNC, 1), "TSYNC")
        n = 0

        def rule(action: int, name: str, *cmps: _ArgCmp) -> None:
            nonlocal n
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                return     # not a syscall on this architecture (e.g. open on aarch64)
            arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr), f"rule {name}")
            n += 1

        for name in (*ALLOW, *extra_allow):
            rule(ACT_ALLOW, name)
        rule(ACT_ALLOW, "clone", _ArgCmp(0, CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
        rule(ACT_ERRNO(errno.ENOSYS), "clone3")
        rule(ACT_ALLOW, "socket", _ArgCmp(0, CMP_EQ, AF_UNIX, 0))
        # the core reads guest memory through the kernel (EFAULT, not SIGBUS): its own only
        rule(ACT_ALLOW, "process_vm_readv", _ArgCmp(0, CMP_EQ, os.getpid(), 0))
        for pid in children:
            rule(ACT_ALLOW, "kill", _ArgCmp(0, CMP_EQ, pid, 0))
            rule(ACT_ALLOW, "wait4", _ArgCmp(0, CMP_EQ, pid, 0))
        _check(lib.seccomp_load(ctx), "load")
        return n
    finally:
        lib.seccomp_release(ctx)
