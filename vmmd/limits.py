"""Per-MicroVM limits, idle/runtime policy defaults, and host admission (DESIGN §6).

Everything here is pure: the API layer calls `validate_launch`, the session manager calls
`Admission.check`, and the worker enforces the same numbers with KVM and its cgroup.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

from .errors import InvalidArgument, ResourceExhausted

MIN_VCPUS, MAX_VCPUS = 1, 16
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 128, 32 << 10
MAX_DISK_MIB = 32 << 10
MIN_IDLE_S = 60
DEFAULT_IDLE_S = 15 * 60
MAX_RUNTIME_S = 8 * 3600
DEFAULT_RETENTION_S = 24 * 3600
MAX_RETENTION_S = 30 * 24 * 3600
MAX_LABELS = 32
MAX_LABEL_KEY, MAX_LABEL_VALUE = 63, 255
MAX_ENV = 256
MAX_ENV_BYTES = 64 << 10
MAX_NAME = 128


@dataclass
class Config:
    """The daemon's configuration: command-line flags over an optional TOML file."""
    state_dir: str = "/var/lib/vmmd"
    socket: str = ""                        # default: <state_dir>/vmmd.sock
    tcp: str = ""                           # host:port, empty = no TCP listener
    capacity_vcpus: int = 0                 # 0 = the host's CPUs
    capacity_memory_mib: int = 0            # 0 = MemTotal - reserved_memory_mib
    capacity_disk_mib: int = 0              # 0 = free space of the state dir's filesystem
    reserved_memory_mib: int = 1024         # kept for the host and the daemon
    vcpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    min_idle_s: float = MIN_IDLE_S          # tests lower it; the API refuses anything below
    max_runtime_s: float = MAX_RUNTIME_S    # host-wide cap, at most 8 h
    default_retention_s: float = DEFAULT_RETENTION_S
    restore_backend: str = "mmap"           # mmap | uffd
    worker_memory_overhead_mib: int = 64    # cgroup memory limit = guest memory + this
    cgroups: str = "auto"                   # auto | off
    cgroup_parent: str = ""                 # default: the daemon's own cgroup + "/vmmd"
    seccomp: str = "enforce"                # enforce | log | off
    max_chain_depth: int = 16               # a suspend deeper than this writes a full snapshot
    drain_grace_s: float = 10.0
    watchdog: bool = True
    log_level: str = "info"
    worker_rlimit_nofile: int = 4096
    worker_rlimit_nproc: int = 0            # 0 = inherit (threads count against RLIMIT_NPROC)
    worker_fault: str = ""                  # tests only: forbidden_syscall | crash
    guest_kernel: str = ""                  # BuildImage's guest kernel; "": the pinned cloud one
    guest_initrd: str = ""                  # BuildImage's initramfs; "": vmmd's, built here
    build_cache_max_mib: int = 20480        # BuildImage's step/image cache, collected LRU past it

    @property
    def socket_path(self) -> str:
        return self.socket or os.path.join(self.state_dir, "vmmd.sock")

    @classmethod
    def load(cls, path: str | None, **overrides) -> "Config":
        values: dict = {}
        if path:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise InvalidArgument(f"unknown setting(s) {', '.join(sorted(unknown))} in {path}; "
                                  f"valid ones: {', '.join(sorted(names))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.restore_backend not in ("mmap", "uffd"):
            raise InvalidArgument(f"restore_backend {self.restore_backend!r}: use mmap or uffd")
        if self.seccomp not in ("enforce", "log", "off"):
            raise InvalidArgument(f"seccomp {self.seccomp!r}: use enforce, log or off")
        if self.cgroups not in ("auto", "off"):
            raise InvalidArgument(f"cgroups {self.cgroups!r}: use auto or off")
        if not 0 < self.max_runtime_s <= MAX_RUNTIME_S:
            raise InvalidArgument(f"max_runtime_s {self.max_runtime_s}: at most {MAX_RUNTIME_S}")
        if self.min_idle_s <= 0:
            raise InvalidArgument(f"min_idle_s {self.min_idle_s}: must be positive")
        if self.vcpu_overcommit <= 0 or self.memory_overcommit <= 0:
            raise InvalidArgument("overcommit ratios must be positive")
        if self.build_cache_max_mib < 0:
            raise InvalidArgument(f"build_cache_max_mib {self.build_cache_max_mib}: use 0 or more")
        if not 1 <= self.max_chain_depth <= 60:
            raise InvalidArgument(f"max_chain_depth {self.max_chain_depth}: use 1..60")


@dataclass(frozen=True)
class Policy:
    max_idle_s: float
    auto_resume: bool
    retention_s: float
    max_runtime_s: float


@dataclass(frozen=True)
class Spec:
    """A validated launch request."""
    image_id: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    policy: Policy
    env: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    # {"egress": EgressPolicy.to_dict(), "expose": [ports]} (vmmd.net), None: the image's default
    network: dict | None = None


def check_labels(labels: dict, what: str = "label") -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(labels)} {what}s: at most {MAX_LABELS}; drop some")
    for k, v in labels.items():
        if not k or len(k.encode()) > MAX_LABEL_KEY:
            raise InvalidArgument(f"{what} key {k[:80]!r}: use 1..{MAX_LABEL_KEY} bytes")
        if len(v.encode()) > MAX_LABEL_VALUE:
            raise InvalidArgument(f"{what} {k!r} value of {len(v.encode())} bytes: "
                                  f"at most {MAX_LABEL_VALUE}")


def check_env(env: dict) -> None:
    if len(env) > MAX_ENV:
        raise InvalidArgument(f"{len(env)} environment variables: at most {MAX_ENV}")
    size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
    if size > MAX_ENV_BYTES:
        raise InvalidArgument(f"environment of {size} bytes: at most {MAX_ENV_BYTES}")
    for k in env:
        if not k or "=" in k or "\0" in k:
            raise InvalidArgument(f"environment variable name {k[:80]!r}: use a non-empty name "
                                  "without '=' or NUL")


def validate_launch(cfg: Config, *, image_id: str, image_vcpus: int, image_memory_mib: int,
                    vcpus: int, memory_mib: int, disk_mib: int, max_idle_s: float | None,
                    auto_resume: bool | None, retention_s: float | None,
                    max_runtime_s: float | None, env: dict, labels: dict) -> Spec:
    """Checks a launch against the per-VM limits and the image; fills in defaults."""
    if not image_id:
        raise InvalidArgument("image_id is empty: name an image from ListImages")
    vcpus = vcpus or image_vcpus
    memory_mib = memory_mib or image_memory_mib
    if not MIN_VCPUS <= vcpus <= MAX_VCPUS:
        raise InvalidArgument(f"vcpus {vcpus} is outside the per-MicroVM limit "
                              f"{MIN_VCPUS}..{MAX_VCPUS}; ask for {MIN_VCPUS} to {MAX_VCPUS}")
    if not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
        raise InvalidArgument(f"memory_mib {memory_mib} is outside the per-MicroVM limit "
                              f"{MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} MiB")
    if disk_mib < 0 or disk_mib > MAX_DISK_MIB:
        raise InvalidArgument(f"disk_mib {disk_mib} is over the per-MicroVM limit of "
                              f"{MAX_DISK_MIB} MiB")
    if vcpus != image_vcpus:
        raise InvalidArgument(f"vcpus {vcpus}: image {image_id} was snapshotted with "
                              f"{image_vcpus} vCPUs; launch with {image_vcpus} or leave it 0")
    if memory_mib != image_memory_mib:
        raise InvalidArgument(f"memory_mib {memory_mib}: image {image_id} was snapshotted with "
                              f"{image_memory_mib} MiB; launch with {image_memory_mib} or leave it 0")
    if max_idle_s is None:
        max_idle_s = max(DEFAULT_IDLE_S, cfg.min_idle_s)
    if max_idle_s < cfg.min_idle_s:
        raise InvalidArgument(f"idle.max_idle {max_idle_s:g} s is below the minimum of "
                              f"{cfg.min_idle_s:g} s; ask for at least {cfg.min_idle_s:g} s")
    if max_idle_s > MAX_RUNTIME_S:
        raise InvalidArgument(f"idle.max_idle {max_idle_s:g} s: at most {MAX_RUNTIME_S} s")
    if retention_s is None:
        retention_s = cfg.default_retention_s
    if not 0 < retention_s <= MAX_RETENTION_S:
        raise InvalidArgument(f"idle.suspended_retention {retention_s:g} s: use 1..{MAX_RETENTION_S} s")
    if max_runtime_s is None:
        max_runtime_s = cfg.max_runtime_s
    if not 0 < max_runtime_s <= cfg.max_runtime_s:
        raise InvalidArgument(f"max_runtime {max_runtime_s:g} s is over this host's limit of "
                              f"{cfg.max_runtime_s:g} s (at most 8 h); ask for less")
    check_labels(labels)
    check_env(env)
    return Spec(image_id, vcpus, memory_mib, disk_mib,
                Policy(float(max_idle_s), True if auto_resume is None else bool(auto_resume),
                       float(retention_s), float(max_runtime_s)), dict(env), dict(labels))


@dataclass(frozen=True)
class Capacity:
    vcpus: int
    memory_mib: int
    disk_mib: int

    @classmethod
    def detect(cls, cfg: Config) -> "Capacity":
        vcpus = cfg.capacity_vcpus or (os.cpu_count() or 1)
        mem = cfg.capacity_memory_mib
        if not mem:
            with open("/proc/meminfo") as f:
                total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
            mem = max(0, total_kib // 1024 - cfg.reserved_memory_mib)
        disk = cfg.capacity_disk_mib
        if not disk:
            st = os.statvfs(cfg.state_dir)
            disk = st.f_bavail * st.f_frsize >> 20
        return cls(vcpus, mem, disk)


class Admission:
    """Committed vCPU/memory/disk of MicroVMs holding a worker, against capacity × overcommit."""

    def __init__(self, capacity: Capacity, vcpu_overcommit: float, memory_overcommit: float):
        self.capacity = capacity
        self.allocatable = Capacity(int(capacity.vcpus * vcpu_overcommit),
                                    int(capacity.memory_mib * memory_overcommit),
                                    capacity.disk_mib)
        self.committed: dict[str, tuple[int, int, int]] = {}

    def totals(self) -> tuple[int, int, int]:
        v = m = d = 0
        for cv, cm, cd in self.committed.values():
            v, m, d = v + cv, m + cm, d + cd
        return v, m, d

    def free(self) -> tuple[int, int, int]:
        v, m, d = self.totals()
        a = self.allocatable
        return a.vcpus - v, a.memory_mib - m, a.disk_mib - d

    def check(self, vm_id: str, vcpus: int, memory_mib: int, disk_mib: int) -> None:
        fv, fm, fd = self.free()
        if vm_id in self.committed:
            cv, cm, cd = self.committed[vm_id]
            fv, fm, fd = fv + cv, fm + cm, fd + cd
        short = []
        if vcpus > fv:
            short.append(f"{vcpus} vCPUs asked, {fv} free")
        if memory_mib > fm:
            short.append(f"{memory_mib} MiB memory asked, {fm} MiB free")
        if disk_mib > fd:
            short.append(f"{disk_mib} MiB disk asked, {fd} MiB free")
        if short:
            raise ResourceExhausted(
                "host is full: " + "; ".join(short) + " (allocatable "
                f"{self.allocatable.vcpus} vCPUs / {self.allocatable.memory_mib} MiB with "
                "overcommit); suspend or terminate MicroVMs, or place this one on another host")

    def commit(self, vm_id: str, vcpus: int, memory_mib: int, disk_mib: int) -> None:
        self.committed[vm_id] = (vcpus, memory_mib, disk_mib)

    def release(self, vm_id: str) -> None:
        self.committed.pop(vm_id, None)
