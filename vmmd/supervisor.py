"""Daemon side of the worker processes: the zygote link, worker connections, death detection.

- `Zygote` starts `python -m vmmd.zygote`, asks it to fork workers (passing each worker its end
  of a fresh socketpair by SCM_RIGHTS) and hears every worker exit with its wait status.
- `WorkerLink` is one daemon<->worker connection: requests with ids, replies matched to
  futures, events handed to a callback. A restarted daemon builds one by connecting to the
  worker's socket (<vm dir>/worker.sock); the worker answers with a "hello" carrying its state
  and the events it queued while no daemon listened.
- Workers that are not the current zygote's children (re-attached after a restart) are watched
  with a pidfd; their exit status is not knowable, so the event says so.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Callable

from . import wire

log = logging.getLogger("vmmd.supervisor")


class WorkerError(Exception):
    def __init__(self, message: str, errno_: int = 0):
        super().__init__(message)
        self.errno = errno_


def describe_status(status: int | None) -> str:
    if status is None:
        return "worker process ended (exit status unknown: it was re-attached after a daemon restart)"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGSYS:
            return ("worker killed by its seccomp filter (SIGSYS): it made a system call outside "
                    "the VMM allow-list")
        if sig == signal.SIGKILL:
            return "worker killed by SIGKILL"
        return f"worker killed by signal {name}"
    return f"worker exited with status {os.WEXITSTATUS(status)}"


class WorkerLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[dict], None]):
        self.reader, self.writer = reader, writer
        self.on_event = on_event
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await wire.aread(self.reader)
                fut = self.waiting.pop(msg.get("id"), None) if "id" in msg else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                elif "event" in msg:
                    self.on_event(msg)
        except (wire.WireError, OSError):
            pass
        finally:
            self.closed = True
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(WorkerError("worker connection closed"))
            self.waiting.clear()
            self.on_event({"event": "disconnected"})

    async def call(self, op: str, timeout: float = 60.0, **args) -> dict:
        if self.closed:
            raise WorkerError("worker connection is closed")
        n = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[n] = fut
        wire.awrite(self.writer, {"id": n, "op": op, **args})
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self.waiting.pop(n, None)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "worker failed"), reply.get("errno", 0))
        return reply

    def close(self) -> None:
        self.closed = True
        self.task.cancel()
        try:
            self.writer.close()
        except Exception:  # already closed by the peer
            pass


async def connect_worker(path: str, on_event: Callable[[dict], None],
                         timeout: float = 2.0) -> tuple[WorkerLink, dict]:
    """Re-attaches to a running worker through its socket; returns the link and its hello."""
    reader, writer = await asyncio.wait_for(wire.open_unix(path), timeout)
    hello = await asyncio.wait_for(wire.aread(reader), timeout)
    if hello.get("event") != "hello":
        writer.close()
        raise WorkerError(f"worker at {path} answered {hello!r}, not hello")
    return WorkerLink(reader, writer, on_event), hello


class Zygote:
    """The pre-forked process workers are forked from."""

    def __init__(self, on_exit: Callable[[int, int | None], None]):
        self.on_exit = on_exit
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None   # held: dropping it closes the socket
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.children: set[int] = set()
        self.task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # subprocess, not the loop's: uvloop's subprocess_exec does not pass extra fds
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmmd.zygote", str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.sock = mine
        self.reader, self.writer = await asyncio.open_unix_connection(sock=mine)
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await wire.aread(self.reader)
                if "exited" in msg:
                    pid = msg["exited"]
                    self.children.discard(pid)
                    self.on_exit(pid, msg["status"])
                    continue
                fut = self.waiting.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (wire.WireError, OSError) as e:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(WorkerError(f"zygote link lost: {e}"))
            if self.proc is not None and self.proc.poll() is None:
                log.error("zygote link lost: %s", e)

    async def spawn(self, conf: dict) -> tuple[int, socket.socket]:
        """Forks a worker; returns its pid and the daemon's end of its socketpair."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                log.error("zygote ended (status %s); starting another", self.proc.returncode)
            await self.start()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        n = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[n] = fut
        frame = wire.pack({"op": "spawn", "id": n, "conf": conf})
        async with self.lock:
            loop = asyncio.get_running_loop()
            # the fd travels with the first bytes; what sendmsg did not take follows as data
            sent = socket.send_fds(self.sock, [frame], [theirs.fileno()])
            if sent < len(frame):
                await loop.sock_sendall(self.sock, frame[sent:])
        theirs.close()
        reply = await asyncio.wait_for(fut, 10)
        if "error" in reply:
            mine.close()
            raise WorkerError(reply["error"])
        self.children.add(reply["pid"])
        return reply["pid"], mine

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)
        if self.sock is not None:
            self.sock.close()


def watch_pid(pid: int, on_exit: Callable[[int, int | None], None]) -> Callable[[], None] | None:
    """Calls on_exit(pid, None) when a process that is not our child ends; returns a canceller."""
    try:
        pfd = os.pidfd_open(pid)
    except ProcessLookupError:
        asyncio.get_running_loop().call_soon(on_exit, pid, None)
        return None
    loop = asyncio.get_running_loop()

    def fired() -> None:
        loop.remove_reader(pfd)
        os.close(pfd)
        on_exit(pid, None)

    loop.add_reader(pfd, fired)

    def cancel() -> None:
        try:
            loop.remove_reader(pfd)
            os.close(pfd)
        except (OSError, ValueError):
            pass
    return cancel
