"""One cgroup per worker with a CPU quota and a memory limit; cgroup v2 or v1, found at start.

Layout: a base directory per daemon (default: the daemon's own cgroup + "/vmmd-<tag>", the tag
derived from the state directory so daemons on one host never touch each other's groups), and
one child per MicroVM named after its id.

- v2 (Debian 12, systemd with Delegate=yes): a cgroup with processes cannot enable controllers
  for its children ("no internal processes"), so the daemon first moves itself into
  <own>/daemon, then enables +cpu +memory down to <own>/vmmd-<tag>/<vm>: cpu.max, memory.max,
  memory.swap.max = 0, memory.oom.group = 1, OOM kills counted in memory.events.
- v1 (our development machines): the cpu and memory hierarchies are mounted apart; the worker
  joins both: cpu.cfs_quota_us, memory.limit_in_bytes (+ memsw when swap accounting is on), OOM
  kills counted in memory.oom_control.
"""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from dataclasses import dataclass

CPU_PERIOD_US = 100_000


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                out.append((fields[4], rfields[0], set(rfields[2].split(","))))
    return out


def _own() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    return out


@dataclass
class Group:
    name: str
    dirs: list[str]          # one per hierarchy the worker joins

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]


class Cgroups:
    """Creates, limits, inspects and removes the per-worker cgroups of one daemon."""

    def __init__(self, version: int, bases: list[str]):
        self.version = version
        self.bases = bases       # v2: [base]; v1: [cpu base, memory base]

    @classmethod
    def detect(cls, state_dir: str, parent: str = "") -> "Cgroups":
        tag = "vmmd-" + hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:8]
        mounts = _mounts()
        own = _own()
        v1 = {}
        for point, fstype, opts in mounts:
            if fstype == "cgroup":
                for c in ("cpu", "memory"):
                    if c in opts:
                        v1[c] = point
        if "cpu" in v1 and "memory" in v1:
            bases = []
            for c in ("cpu", "memory"):
                rel = parent or os.path.join(own.get(c, "/"), tag)
                bases.append(os.path.join(v1[c], rel.lstrip("/")))
            for b in bases:
                os.makedirs(b, exist_ok=True)
            return cls(1, bases)
        unified = next((p for p, t, _ in mounts if t == "cgroup2"), None)
        if unified is None or "" not in own:
            raise OSError(errno.ENOENT, "no cgroup v2 mount and no v1 cpu+memory hierarchies; "
                          "run with cgroups = \"off\" or mount cgroups")
        own_dir = os.path.join(unified, own[""].lstrip("/"))
        if parent:
            base = os.path.join(unified, parent.lstrip("/"))
            os.makedirs(base, exist_ok=True)
        else:
            base = os.path.join(own_dir, tag)
            cls._leave_internal(own_dir)
            os.makedirs(base, exist_ok=True)
        enable_at = os.path.dirname(base)
        for d in (enable_at, base):
            avail = set(_read(os.path.join(d, "cgroup.controllers")).split())
            missing = {"cpu", "memory"} - avail
            if missing:
                raise OSError(errno.EPERM, f"cgroup {d} lacks the {', '.join(sorted(missing))} "
                              "controller(s): delegate them (systemd Delegate=yes) or set "
                              "cgroup_parent to a delegated cgroup")
            _write(os.path.join(d, "cgroup.subtree_control"), "+cpu +memory")
        return cls(2, [base])

    @staticmethod
    def _leave_internal(own_dir: str) -> None:
        """v2: moves this process out of its cgroup into <own>/daemon so children may be limited."""
        if os.path.basename(own_dir) == "daemon":
            return
        daemon = os.path.join(own_dir, "daemon")
        os.makedirs(daemon, exist_ok=True)
        _write(os.path.join(daemon, "cgroup.procs"), str(os.getpid()))

    # --- per worker ---

    def group(self, name: str) -> Group:
        return Group(name, [os.path.join(b, name) for b in self.bases])

    def create(self, name: str, vcpus: int, memory_bytes: int) -> Group:
        g = self.group(name)
        for d in g.dirs:
            os.makedirs(d, exist_ok=True)
        quota = vcpus * CPU_PERIOD_US
        if self.version == 2:
            d = g.dirs[0]
            _write(os.path.join(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            _write(os.path.join(d, "memory.max"), str(memory_bytes))
            for f, v in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if os.path.exists(os.path.join(d, f)):
                    _write(os.path.join(d, f), v)
        else:
            cpu, mem = g.dirs
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                try:
                    _write(memsw, str(memory_bytes))
                except OSError:
                    pass       # swap accounting present but not settable here: memory limit holds
        return g

    @staticmethod
    def join(group: Group, pid: int = 0) -> None:
        for f in group.procs_files():
            _write(f, str(pid or os.getpid()))

    def pids(self, name: str) -> set[int]:
        out = set()
        for d in self.group(name).dirs:
            try:
                out |= {int(x) for x in _read(os.path.join(d, "cgroup.procs")).split()}
            except FileNotFoundError:
                pass
        return out

    def oom_kills(self, name: str) -> int:
        d = self.group(name).dirs[-1]
        try:
            text = _read(os.path.join(d, "memory.events" if self.version == 2
                                      else "memory.oom_control"))
        except FileNotFoundError:
            return 0
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return 0

    def memory_current(self, name: str) -> int:
        d = self.group(name).dirs[-1]
        f = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int(_read(os.path.join(d, f)))
        except (FileNotFoundError, ValueError):
            return 0

    def memory_limit(self, name: str) -> int:
        d = self.group(name).dirs[-1]
        f = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        return int(_read(os.path.join(d, f)))

    def names(self) -> set[str]:
        out = set()
        for b in self.bases:
            try:
                out |= {e.name for e in os.scandir(b) if e.is_dir()}
            except FileNotFoundError:
                pass
        return out

    def remove(self, name: str, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Removes a worker's cgroup; with kill, first SIGKILLs whatever still runs in it."""
        deadline = time.monotonic() + timeout
        for d in self.group(name).dirs:
            while True:
                if kill:
                    for pid in self.pids(name):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
