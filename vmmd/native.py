"""Python face of the native core: one `VM` per native handle, errors as `VmmError`.

Calls into C release the GIL (cffi does so by default), so a blocking call such as
`wait()` or `restore()` belongs on a worker thread when an event loop is involved.
"""
from __future__ import annotations

import enum
import errno as _errno
import os
from dataclasses import dataclass

from ._native import ffi, lib

PAGE_SIZE = 4096


class VmmError(OSError):
    """A native call failed: `errno` is the code, the message says what to change."""


class Backend(enum.IntEnum):
    ANON = lib.VMM_MEM_ANON
    MMAP = lib.VMM_MEM_MMAP
    UFFD = lib.VMM_MEM_UFFD


class State(enum.IntEnum):
    CREATED = lib.VMM_STATE_CREATED
    RUNNING = lib.VMM_STATE_RUNNING
    PAUSED = lib.VMM_STATE_PAUSED
    STOPPED = lib.VMM_STATE_STOPPED
    FAILED = lib.VMM_STATE_FAILED


class StopReason(enum.IntEnum):
    NONE = lib.VMM_STOP_NONE
    HOST = lib.VMM_STOP_HOST
    GUEST_EXIT = lib.VMM_STOP_GUEST_EXIT
    SHUTDOWN = lib.VMM_STOP_SHUTDOWN
    ERROR = lib.VMM_STOP_ERROR


@dataclass(frozen=True)
class ExitInfo:
    state: State
    reason: StopReason
    exit_code: int
    message: str


@dataclass(frozen=True)
class SnapshotInfo:
    mem_size: int
    vcpus: int
    diff: bool
    pages: int
    depth: int


def _check(rc: int) -> int:
    if rc < 0:
        msg = ffi.string(lib.vmm_last_error()).decode(errors="replace")
        raise VmmError(-rc, msg or os.strerror(-rc))
    return rc


def _path(p: str | os.PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


def native_version() -> str:
    return ffi.string(lib.vmm_version()).decode()


def snapshot_info(directory: str | os.PathLike) -> SnapshotInfo:
    info = ffi.new("struct vmm_snapshot_info *")
    _check(lib.vmm_snapshot_inspect(_path(directory), info))
    return SnapshotInfo(info.mem_size, info.vcpus, bool(info.diff), info.pages, info.depth)


class VM:
    """One MicroVM owned by this process. Use as a context manager or call `close()`."""

    def __init__(self, handle):
        self._h = handle

    @classmethod
    def create(cls, vcpus: int = 1, mem_size: int = 64 << 20, *, track_dirty: bool = False,
               debug_devices: bool = False) -> "VM":
        cfg = ffi.new("struct vmm_config *", {
            "vcpus": vcpus, "mem_size": mem_size,
            "track_dirty": int(track_dirty), "debug_devices": int(debug_devices)})
        out = ffi.new("struct vmm **")
        _check(lib.vmm_create(cfg, out))
        return cls(out[0])

    @classmethod
    def restore(cls, directory: str | os.PathLike, backend: Backend = Backend.MMAP, *,
                working_set: str | os.PathLike | None = None,
                track_dirty: bool = False) -> "VM":
        ws = ffi.new("char[]", _path(working_set)) if working_set is not None else ffi.NULL
        opts = ffi.new("struct vmm_restore_opts *", {
            "backend": int(backend), "working_set": ws, "track_dirty": int(track_dirty)})
        out = ffi.new("struct vmm **")
        _check(lib.vmm_restore(_path(directory), opts, out))
        return cls(out[0])

    @property
    def handle(self):
        if self._h is None:
            raise VmmError(_errno.EBADF, "VM is closed")
        return self._h

    def close(self) -> None:
        if self._h is not None:
            lib.vmm_destroy(self._h)
            self._h = None

    def __enter__(self) -> "VM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def load_flat(self, image: bytes, load_gpa: int, entry: int | None = None, *,
                  stack_top: int, stack_size: int = 0x10000) -> None:
        boot = ffi.new("struct vmm_flat_boot *", {
            "load_gpa": load_gpa, "entry": load_gpa if entry is None else entry,
            "stack_top": stack_top, "stack_size": stack_size})
        _check(lib.vmm_load_flat(self.handle, image, len(image), boot))

    def start(self) -> None:
        _check(lib.vmm_start(self.handle))

    def pause(self) -> None:
        _check(lib.vmm_pause(self.handle))

    def resume(self) -> None:
        _check(lib.vmm_resume(self.handle))

    def stop(self) -> None:
        _check(lib.vmm_stop(self.handle))

    def wait(self, timeout: float | None = None) -> ExitInfo:
        info = ffi.new("struct vmm_exit_info *")
        ms = -1 if timeout is None else int(timeout * 1000)
        _check(lib.vmm_wait(self.handle, ms, info))
        return ExitInfo(State(info.state), StopReason(info.reason), info.exit_code,
                        ffi.string(info.message).decode(errors="replace"))

    @property
    def state(self) -> State:
        return State(_check(lib.vmm_get_state(self.handle)))

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct vmm_stats *")
        _check(lib.vmm_get_stats(self.handle, st))
        return {name: getattr(st, name) for name, _ in ffi.typeof("struct vmm_stats").fields}

    def serial_read(self, size: int = 65536) -> bytes:
        buf = ffi.new("char[]", size)
        n = _check(lib.vmm_serial_read(self.handle, buf, size))
        return ffi.unpack(buf, n)

    def serial_write(self, data: bytes) -> int:
        return _check(lib.vmm_serial_write(self.handle, data, len(data)))

    def mem_read(self, gpa: int, size: int) -> bytes:
        buf = ffi.new("char[]", size)
        _check(lib.vmm_mem_read(self.handle, gpa, buf, size))
        return ffi.unpack(buf, size)

    def mem_write(self, gpa: int, data: bytes) -> None:
        _check(lib.vmm_mem_write(self.handle, gpa, data, len(data)))

    def mem_discard(self, gpa: int, size: int) -> None:
        _check(lib.vmm_mem_discard(self.handle, gpa, size))

    def snapshot(self, directory: str | os.PathLike, *, diff: bool = False) -> None:
        os.makedirs(directory, exist_ok=True)
        opts = ffi.new("struct vmm_snapshot_opts *", {"diff": int(diff)})
        _check(lib.vmm_snapshot(self.handle, _path(directory), opts))

    def state_blob(self) -> bytes:
        size = ffi.new("unsigned long long *")
        _check(lib.vmm_state_size(self.handle, size))
        cap = size[0] + 4096   # the TSC and clock may grow an integer's encoding in between
        buf = ffi.new("char[]", cap)
        used = ffi.new("unsigned long long *")
        _check(lib.vmm_state_get(self.handle, buf, cap, used))
        return ffi.unpack(buf, used[0])

    def set_state_blob(self, blob: bytes) -> None:
        _check(lib.vmm_state_set(self.handle, blob, len(blob)))

    def save_working_set(self, path: str | os.PathLike) -> None:
        _check(lib.vmm_working_set_save(self.handle, _path(path)))

    def inject(self, what: int) -> None:
        _check(lib.vmm_inject(self.handle, what))
