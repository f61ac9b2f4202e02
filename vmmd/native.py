"""Python face of the native core: one `VM` per native handle, errors as `VmmError`.

Calls into C release the GIL (cffi does so by default), so a blocking call such as
`wait()` or `restore()` belongs on a worker thread when an event loop is involved.

The production module is `vmmd._native`. With VMMD_NATIVE=test in the environment (tests and
benches set it) the test build `vmmd._native_test` is loaded instead: the same core plus the
test devices, fault injection and bench floors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno as _errno
import importlib
import ipaddress
import os
import threading
import weakref

_mod = importlib.import_module(
    "vmmd._native_test" if os.environ.get("VMMD_NATIVE") == "test" else "vmmd._native")
ffi, lib = _mod.ffi, _mod.lib
TEST_BUILD = hasattr(lib, "vmm_inject")

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
    RESET = lib.VMM_STOP_RESET


class DeviceType(enum.IntEnum):
    VIRTIO_BLK = lib.VMM_DEV_VIRTIO_BLK
    VIRTIO_VSOCK = lib.VMM_DEV_VIRTIO_VSOCK
    VIRTIO_RNG = lib.VMM_DEV_VIRTIO_RNG
    VIRTIO_NET = lib.VMM_DEV_VIRTIO_NET
    VMGENID = lib.VMM_DEV_VMGENID
    DEBUG = lib.VMM_DEV_DEBUG        # test builds only
    TESTDEV = lib.VMM_DEV_TESTDEV    # test builds only


@dataclasses.dataclass(frozen=True)
class Device:
    """One configured device. Give restore the same list the VM was created with."""
    type: int
    id: int = 0
    path: str | None = None          # blk: read-only base image; vsock: host Unix socket
    overlay: str | None = None       # blk: the VM's writable copy-on-write layer
    size: int = 0                    # blk: size cap in bytes
    cid: int = 0                     # vsock: guest context id
    read_only: bool = False
    mac: bytes | None = None         # net: the guest's MAC, 6 bytes (a restore offers this one)
    mtu: int = 0                     # net: offered to the guest, 68..65535, 0 = 1500


_PROTOS = {0: "any", 1: "ICMP", 6: "TCP", 17: "UDP"}


@dataclasses.dataclass(frozen=True)
class NetRule:
    """One egress rule of a virtio-net device: the first rule matching a frame's destination
    decides (docs/virtio.md). `network` is a CIDR ("10.0.0.0/8", "192.0.2.7/32"); `proto` 0
    (any), 1 (ICMP), 6 (TCP) or 17 (UDP); `ports` an inclusive destination port range, (0, 0)
    for any (TCP and UDP only); `sports` the same for source ports; `replies` (TCP) matches
    only segments with ACK set: the guest's side of connections opened to it."""
    network: str
    proto: int = 0
    ports: tuple[int, int] = (0, 0)
    allow: bool = dataclasses.field(kw_only=True)
    sports: tuple[int, int] = dataclasses.field(default=(0, 0), kw_only=True)
    replies: bool = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self):
        try:
            net = ipaddress.IPv4Network(self.network, strict=True)
        except ValueError as e:
            raise ValueError(f"NetRule network {self.network!r}: {e}; give an IPv4 CIDR such "
                             "as '10.0.0.0/8' (host bits zero)") from None
        object.__setattr__(self, "_net", net)
        if self.proto not in _PROTOS:
            raise ValueError(f"NetRule proto {self.proto!r}: use 0 (any), 1 (ICMP), 6 (TCP) "
                             "or 17 (UDP)")
        if (not isinstance(self.ports, tuple) or len(self.ports) != 2
                or not all(isinstance(p, int) for p in self.ports)):
            raise ValueError(f"NetRule ports {self.ports!r}: give a tuple (lo, hi) of ints, "
                             "(0, 0) for any")
        lo, hi = self.ports
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"NetRule ports {self.ports!r}: use 0 <= lo <= hi <= 65535")
        if (not isinstance(self.sports, tuple) or len(self.sports) != 2
                or not 0 <= self.sports[0] <= self.sports[1] <= 65535):
            raise ValueError(f"NetRule sports {self.sports!r}: use (lo, hi) with "
                             "0 <= lo <= hi <= 65535, (0, 0) for any")
        if self.proto == 1 and (self.ports != (0, 0) or self.sports != (0, 0)):
            raise ValueError("NetRule: ICMP has no ports; give ports=(0, 0)")
        if self.replies and self.proto != 6:
            raise ValueError("NetRule: replies-only rules are for TCP (proto=6)")


@dataclasses.dataclass(frozen=True)
class NetStats:
    tx_frames: int           # sent to the backend
    tx_bytes: int
    rx_frames: int           # delivered to the guest
    rx_bytes: int
    tx_denied: int           # refused by the egress policy
    tx_dropped: int          # malformed, or the backend gone
    rx_dropped: int          # larger than the guest's rx buffer
    link_up: bool            # the backend is connected


@dataclasses.dataclass(frozen=True)
class ExitInfo:
    state: State
    reason: StopReason
    exit_code: int
    message: str


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    mem_size: int
    vcpus: int
    diff: bool
    pages: int
    depth: int
    id: bytes
    checksum: int


def _check(rc: int) -> int:
    if rc < 0:
        msg = ffi.string(lib.vmm_last_error()).decode(errors="replace")
        raise VmmError(-rc, msg or os.strerror(-rc))
    return rc


def _path(p: str | os.PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


def native_version() -> str:
    return ffi.string(lib.vmm_version()).decode()


def host_probe() -> None:
    """Probes the host's KVM capabilities now (a zygote does this once before forking)."""
    _check(lib.vmm_host_probe())


def snapshot_info(directory: str | os.PathLike) -> SnapshotInfo:
    info = ffi.new("struct vmm_snapshot_info *")
    _check(lib.vmm_snapshot_inspect(_path(directory), info))
    return SnapshotInfo(info.mem_size, info.vcpus, bool(info.diff), info.pages, info.depth,
                        bytes(ffi.buffer(info.id, 16)), info.checksum)


def snapshot_release(directory: str | os.PathLike) -> None:
    """Lets the owner delete a snapshot: its memory file is immutable while VMs may map it."""
    _check(lib.vmm_snapshot_release(_path(directory)))


def _devices(devices) -> tuple[object, list]:
    """A cffi array of device configs, and what must stay alive while the call uses it."""
    devices = list(devices)
    keep = []
    arr = ffi.new("struct vmm_device_config[]", max(len(devices), 1))
    for i, d in enumerate(devices):
        arr[i].type = int(d.type)
        arr[i].id = d.id
        arr[i].size = d.size
        arr[i].cid = d.cid
        arr[i].read_only = int(d.read_only)
        arr[i].mtu = d.mtu
        if d.mac is not None:
            if len(d.mac) != 6:
                raise ValueError(f"device {d.type}.{d.id}: mac must be 6 bytes, not {len(d.mac)}")
            arr[i].mac = list(d.mac)
        for field in ("path", "overlay"):
            if getattr(d, field) is not None:
                p = ffi.new("char[]", _path(getattr(d, field)))
                keep.append(p)
                setattr(arr[i], field, p)
    keep.append(arr)
    return arr, keep


def _net_policy(rules, default_allow: bool):
    """A cffi vmm_net_policy for NetRules, and what must stay alive while it is used."""
    rules = list(rules)
    if len(rules) > lib.VMM_NET_MAX_RULES:
        raise ValueError(f"{len(rules)} rules: at most {lib.VMM_NET_MAX_RULES}")
    arr = ffi.new("struct vmm_net_rule[]", max(len(rules), 1))
    for i, r in enumerate(rules):
        if not isinstance(r, NetRule):
            raise TypeError(f"rule {i} is a {type(r).__name__}, not a NetRule")
        arr[i].addr = int(r._net.network_address)
        arr[i].prefix = r._net.prefixlen
        arr[i].proto = r.proto
        arr[i].port_lo, arr[i].port_hi = r.ports
        arr[i].sport_lo, arr[i].sport_hi = r.sports
        arr[i].replies = int(r.replies)
        arr[i].allow = int(r.allow)
    pol = ffi.new("struct vmm_net_policy *", {
        "default_allow": int(default_allow), "nrules": len(rules), "rules": arr})
    return pol, arr


def net_filter_verdict(frame: bytes, rules, default_allow: bool) -> str:
    """Test build only: what virtio-net's egress filter makes of one frame under a policy,
    "allow", "deny" or "reset" (the filter itself, without a VM)."""
    pol, _keep = _net_policy(rules, default_allow)
    return ("allow", "deny", "reset")[_check(lib.vmm_test_net_filter(frame, len(frame), pol))]


_OWNER = object()
_owned: "weakref.WeakValueDictionary[int, VM]" = weakref.WeakValueDictionary()
_owned_lock = threading.Lock()


class VM:
    """One MicroVM owned by this process. Use as a context manager or call `close()`.

    Made only by `VM.create` and `VM.restore`: a native handle has exactly one owner. Methods
    may be called from several threads; `close()` ends the VM, makes blocked calls return, and
    frees the handle once no call is inside it.
    """

    def __init__(self, handle, *, _token=None):
        if _token is not _OWNER:
            raise TypeError("VMs are made by VM.create() or VM.restore(); a native handle has "
                            "exactly one owner")
        key = int(ffi.cast("uintptr_t", handle))
        with _owned_lock:
            if key in _owned:
                raise VmmError(_errno.EEXIST, "this native handle already has an owner")
            _owned[key] = self
        self._h = handle
        self._cv = threading.Condition()
        self._inflight = 0

    @classmethod
    def create(cls, vcpus: int = 1, mem_size: int = 64 << 20, *, track_dirty: bool = False,
               devices=()) -> "VM":
        arr, keep = _devices(devices)
        cfg = ffi.new("struct vmm_config *", {
            "vcpus": vcpus, "mem_size": mem_size, "track_dirty": int(track_dirty),
            "ndevices": len(devices), "devices": arr})
        out = ffi.new("struct vmm **")
        _check(lib.vmm_create(cfg, out))
        del keep
        return cls(out[0], _token=_OWNER)

    @classmethod
    def restore(cls, directory: str | os.PathLike, backend: Backend = Backend.MMAP, *,
                working_set: str | os.PathLike | None = None, track_dirty: bool = False,
                root: str | os.PathLike | None = None, devices=()) -> "VM":
        ws = ffi.new("char[]", _path(working_set)) if working_set is not None else ffi.NULL
        rt = ffi.new("char[]", _path(root)) if root is not None else ffi.NULL
        arr, keep = _devices(devices)
        opts = ffi.new("struct vmm_restore_opts *", {
            "backend": int(backend), "working_set": ws, "track_dirty": int(track_dirty),
            "root": rt, "ndevices": len(devices), "devices": arr})
        out = ffi.new("struct vmm **")
        _check(lib.vmm_restore(_path(directory), opts, out))
        del keep
        return cls(out[0], _token=_OWNER)

    @contextlib.contextmanager
    def _use(self):
        with self._cv:
            if self._h is None:
                raise VmmError(_errno.EBADF, "VM is closed")
            self._inflight += 1
            h = self._h
        try:
            yield h
        finally:
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            h, self._h = self._h, None
        if h is None:
            return
        lib.vmm_shutdown(h)          # blocked calls return, new ones are refused
        with self._cv:
            self._cv.wait_for(lambda: self._inflight == 0)
        lib.vmm_destroy(h)
        with _owned_lock:
            _owned.pop(int(ffi.cast("uintptr_t", h)), None)

    def __enter__(self) -> "VM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            self.close()

    def load_flat(self, image: bytes, load_gpa: int, entry: int | None = None, *,
                  stack_top: int, stack_size: int = 0x10000) -> None:
        boot = ffi.new("struct vmm_flat_boot *", {
            "load_gpa": load_gpa, "entry": load_gpa if entry is None else entry,
            "stack_top": stack_top, "stack_size": stack_size})
        with self._use() as h:
            _check(lib.vmm_load_flat(h, image, len(image), boot))

    def load_linux(self, kernel: str | os.PathLike, initrd: str | os.PathLike | None = None,
                   cmdline: str = "") -> None:
        """A stock kernel (x86_64: ELF vmlinux; aarch64: Image) into this new VM."""
        k = ffi.new("char[]", _path(kernel))
        i = ffi.new("char[]", _path(initrd)) if initrd is not None else ffi.NULL
        c = ffi.new("char[]", cmdline.encode())
        boot = ffi.new("struct vmm_linux_boot *", {"kernel": k, "initrd": i, "cmdline": c})
        with self._use() as h:
            _check(lib.vmm_load_linux(h, boot))

    def start(self) -> None:
        with self._use() as h:
            _check(lib.vmm_start(h))

    def pause(self) -> None:
        with self._use() as h:
            _check(lib.vmm_pause(h))

    def resume(self) -> None:
        with self._use() as h:
            _check(lib.vmm_resume(h))

    def stop(self) -> None:
        with self._use() as h:
            _check(lib.vmm_stop(h))

    def wait(self, timeout: float | None = None) -> ExitInfo:
        info = ffi.new("struct vmm_exit_info *")
        ms = -1 if timeout is None else int(timeout * 1000)
        with self._use() as h:
            _check(lib.vmm_wait(h, ms, info))
        return ExitInfo(State(info.state), StopReason(info.reason), info.exit_code,
                        ffi.string(info.message).decode(errors="replace"))

    @property
    def state(self) -> State:
        with self._use() as h:
            return State(_check(lib.vmm_get_state(h)))

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct vmm_stats *")
        with self._use() as h:
            _check(lib.vmm_get_stats(h, st))
        return {name: getattr(st, name) for name, _ in ffi.typeof("struct vmm_stats").fields}

    def serial_read(self, size: int = 65536) -> bytes:
        buf = ffi.new("char[]", size)
        with self._use() as h:
            n = _check(lib.vmm_serial_read(h, buf, size))
        return ffi.unpack(buf, n)

    def serial_write(self, data: bytes) -> int:
        with self._use() as h:
            return _check(lib.vmm_serial_write(h, data, len(data)))

    def serial_fd(self) -> int:
        """An eventfd, readable while serial output waits; owned by the VM (do not close)."""
        with self._use() as h:
            return _check(lib.vmm_serial_fd(h))

    def mem_read(self, gpa: int, size: int) -> bytes:
        buf = ffi.new("char[]", size)
        with self._use() as h:
            _check(lib.vmm_mem_read(h, gpa, buf, size))
        return ffi.unpack(buf, size)

    def mem_write(self, gpa: int, data: bytes) -> None:
        with self._use() as h:
            _check(lib.vmm_mem_write(h, gpa, data, len(data)))

    def mem_discard(self, gpa: int, size: int) -> None:
        with self._use() as h:
            _check(lib.vmm_mem_discard(h, gpa, size))

    def snapshot(self, directory: str | os.PathLike, *, diff: bool = False) -> None:
        os.makedirs(directory, exist_ok=True)
        opts = ffi.new("struct vmm_snapshot_opts *", {"diff": int(diff)})
        with self._use() as h:
            _check(lib.vmm_snapshot(h, _path(directory), opts))

    def state_blob(self) -> bytes:
        size = ffi.new("unsigned long long *")
        with self._use() as h:
            _check(lib.vmm_state_size(h, size))
            cap = size[0] + 4096   # the TSC and clock may grow an integer's encoding in between
            buf = ffi.new("char[]", cap)
            used = ffi.new("unsigned long long *")
            _check(lib.vmm_state_get(h, buf, cap, used))
        return ffi.unpack(buf, used[0])

    def set_state_blob(self, blob: bytes) -> None:
        with self._use() as h:
            _check(lib.vmm_state_set(h, blob, len(blob)))

    def save_working_set(self, path: str | os.PathLike) -> None:
        with self._use() as h:
            _check(lib.vmm_working_set_save(h, _path(path)))

    def net_set_policy(self, id: int, rules, default_allow: bool) -> None:
        """The egress policy of net device `id`: `rules` (NetRule) in order, the first match
        decides, none: `default_allow`. Takes effect for the guest's next frame. Until it is
        first set, a net device lets only ARP and DHCP out."""
        pol, _keep = _net_policy(rules, default_allow)
        with self._use() as h:
            _check(lib.vmm_net_set_policy(h, id, pol))

    def virtio_info(self, type: "DeviceType", id: int = 0) -> dict:
        """A virtio device's status and queues as the VMM sees them (vmm_virtio_info)."""
        o = ffi.new("struct vmm_virtio_info *")
        with self._use() as h:
            _check(lib.vmm_virtio_info(h, int(type), id, o))
        queues = [{k: getattr(o.q[i], k) for k in ("ready", "size", "avail_idx", "last_avail",
                                                     "used_idx", "avail_flags", "used_event")}
                  for i in range(o.nqueues)]
        return {"status": o.status, "broken": bool(o.broken),
                "why": ffi.string(o.why).decode(errors="replace"), "passes": o.passes,
                "interrupts": o.interrupts, "gsi": o.gsi, "queues": queues}

    def net_stats(self, id: int) -> NetStats:
        st = ffi.new("struct vmm_net_stats *")
        with self._use() as h:
            _check(lib.vmm_net_stats(h, id, st))
        return NetStats(st.tx_frames, st.tx_bytes, st.rx_frames, st.rx_bytes, st.tx_denied,
                        st.tx_dropped, st.rx_dropped, bool(st.link_up))

    def inject(self, what: int) -> None:
        """Test builds: provoke a failure (lib.VMM_INJECT_*)."""
        if not TEST_BUILD:
            raise VmmError(_errno.ENOTSUP, "fault injection exists only in the test build "
                           "(VMMD_NATIVE=test)")
        with self._use() as h:
            _check(lib.vmm_inject(h, what))
