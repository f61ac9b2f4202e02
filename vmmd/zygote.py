"""The zygote: a process that has imported the native core and the worker code once, and forks
a worker per MicroVM so a launch pays no interpreter start.

Started by the daemon with one end of a socketpair (fd given on the command line). It sets
PR_SET_PDEATHSIG so it never outlives the daemon; its workers do outlive it (they start their
own session, and a fork clears the parent-death signal), and a restarted daemon re-attaches to
them through their sockets. The zygote stays single-threaded, so fork() is safe.

Protocol (vmmd/wire.py frames; blocking on this side):
  daemon -> zygote  {"op": "spawn", "id": n, "conf": {...}}  + one fd by SCM_RIGHTS: the
                    worker's end of the socketpair the daemon made for it
  zygote -> daemon  {"id": n, "pid": pid}   or   {"id": n, "error": "..."}
                    {"exited": pid, "status": wait status}  whenever a worker ends
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import sys

from . import seccomp, wire
from . import worker  # noqa: F401  -- imports vmmd.native: paid once, here, not per launch

PR_SET_PDEATHSIG = 1


def _recv_with_fd(sock: socket.socket) -> tuple[dict, int | None]:
    """One frame and the fd that arrived with its first bytes."""
    buf, got = bytearray(), []
    while len(buf) < 4:
        data, fds, _, _ = socket.recv_fds(sock, 4 - len(buf), 1)
        if not data:
            raise wire.WireError("daemon closed the zygote link")
        buf += data
        got += fds
    n = int.from_bytes(buf, "big")
    if n > wire.MAX_FRAME:
        raise wire.WireError(f"{n}-byte frame")
    body = bytearray()
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise wire.WireError("daemon closed the zygote link")
        body += chunk
    for extra in got[1:]:
        os.close(extra)
    return wire.unpack(bytes(body)), (got[0] if got else None)


def run(fd: int, daemon_pid: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:           # the daemon died before the line above
        return 1
    ctl = socket.socket(fileno=fd)
    try:
        seccomp._lib()                       # paid here once, not in every worker
    except OSError:
        pass                                 # a worker with seccomp on will report it
    rpipe, wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wpipe)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            ready, _, _ = select.select([ctl, rpipe], [], [])
        except InterruptedError:
            continue
        if rpipe in ready:
            try:
                os.read(rpipe, 4096)
            except BlockingIOError:
                pass
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                wire.send(ctl, {"exited": pid, "status": status})
        if ctl in ready:
            try:
                msg, wfd = _recv_with_fd(ctl)
            except (OSError, wire.WireError):
                return 0
            if msg.get("op") != "spawn":
                wire.send(ctl, {"id": msg.get("id"), "error": f"unknown op {msg.get('op')!r}"})
                continue
            # born inside its VM directory: a worker is found by its cwd even if the daemon dies
            # before it has written anything (recovery scans /proc/*/cwd)
            vm_dir = msg["conf"].get("vm_dir")
            if vm_dir:
                os.chdir(vm_dir)
            pid = os.fork()
            if pid == 0:
                code = 2
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    os.close(rpipe)
                    os.close(wpipe)
                    ctl.close()
                    code = worker.main(msg["conf"], wfd)
                finally:
                    os._exit(code)
            os.chdir("/")
            if wfd is not None:
                os.close(wfd)
            wire.send(ctl, {"id": msg.get("id"), "pid": pid})


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]), int(sys.argv[2])))
