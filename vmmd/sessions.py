"""MicroVM sessions: the lifecycle state machine, workers, policy timers, recovery (DESIGN §6).

States: LAUNCHING -> RUNNING <-> PAUSED; RUNNING|PAUSED -> SUSPENDING -> SUSPENDED -> RESUMING
-> RUNNING; any -> TERMINATED. Every transition is committed to the store before it is
announced, and operations on one MicroVM are serialized by its lock. Terminate does not wait
for that lock to kill the worker: an operation it interrupts fails with ABORTED.

Timers: one policy loop scans the sessions every `tick` seconds against values that live in
the store (last activity, running time, time suspended), so after a restart they are re-armed
by construction.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .cgroups import Cgroups
from .digest import hash_file
from .errors import (Aborted, FailedPrecondition, Internal, InvalidArgument, NotFound,
                     Unavailable)
from .limits import Admission, Capacity, Config, Spec, check_labels
from .store import (Store, copy_sparse, drop_layer, fsync_dir, is_disk_only, remove_tree,
                    write_atomic)
from .supervisor import (WorkerError, WorkerLink, Zygote, connect_worker, describe_status,
                         watch_pid)

log = logging.getLogger("vmmd.sessions")

LAUNCHING, RUNNING, PAUSED = "LAUNCHING", "RUNNING", "PAUSED"
SUSPENDING, SUSPENDED, RESUMING, TERMINATED = "SUSPENDING", "SUSPENDED", "RESUMING", "TERMINATED"
STATES = (LAUNCHING, RUNNING, PAUSED, SUSPENDING, SUSPENDED, RESUMING, TERMINATED)
WITH_WORKER = {LAUNCHING, RUNNING, PAUSED, SUSPENDING, RESUMING}
CLOCKED = {RUNNING, PAUSED}          # time that counts toward max_runtime
SPAWN_TIMEOUT = 60.0
AGENT_SYNC_TIMEOUT = 30.0         # restore -> agent answering, in the emulated hosts ~1 s


@dataclass
class Session:
    id: str
    image_id: str
    spec: dict
    state: str = LAUNCHING
    reason: str = ""
    created: float = field(default_factory=time.time)
    state_since: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    running_s: float = 0.0
    running_since: float | None = None
    suspends: int = 0
    chain: list = field(default_factory=list)       # layer names under vms/<id>/layers
    worker_pid: int = 0
    request_id: str | None = None
    force_full: int = 0
    # not persisted
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    link: WorkerLink | None = field(default=None, repr=False)
    started: asyncio.Future | None = field(default=None, repr=False)
    exited: asyncio.Future | None = field(default=None, repr=False)
    unwatch: Any = field(default=None, repr=False)
    expect_exit: bool = False
    policy_busy: bool = False
    timings: dict = field(default_factory=dict)
    launched: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    net: dict | None = None       # the worker's NIC: {"mac": hex, "forwards": [[guest, host]]}
    early_stop: dict | None = None   # a "stopped" event that came while LAUNCHING/RESUMING

    def record(self) -> dict:
        return {"id": self.id, "image_id": self.image_id, "state": self.state,
                "reason": self.reason, "created": self.created, "state_since": self.state_since,
                "last_activity": self.last_activity, "running_s": self.running_s,
                "running_since": self.running_since, "suspends": self.suspends,
                "chain": self.chain, "worker_pid": self.worker_pid, "spec": self.spec,
                "request_id": self.request_id, "force_full": self.force_full}

    @classmethod
    def from_record(cls, r: dict) -> "Session":
        return cls(**{k: r[k] for k in ("id", "image_id", "spec", "state", "reason", "created",
                                        "state_since", "last_activity", "running_s",
                                        "running_since", "suspends", "chain", "worker_pid",
                                        "request_id", "force_full")})

    def running_time(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return self.running_s + (now - self.running_since if self.running_since else 0.0)

    @property
    def policy(self) -> dict:
        return self.spec["policy"]


class Manager:
    def __init__(self, cfg: Config, store: Store, cgroups: Cgroups | None):
        self.cfg = cfg
        self.store = store
        self.cgroups = cgroups
        self._build_lock = asyncio.Lock()
        self.capacity = Capacity.detect(cfg)
        self.admission = Admission(self.capacity, cfg.vcpu_overcommit, cfg.memory_overcommit)
        self.sessions: dict[str, Session] = {}
        self.by_pid: dict[int, Session] = {}
        self.by_request: dict[str, Session] = {}
        self.images: dict[str, dict] = {}
        self.zygote = Zygote(self._on_exit)
        self.subscribers: set[asyncio.Queue] = set()
        self.draining = False
        self.tasks: set[asyncio.Task] = set()
        self.policy_task: asyncio.Task | None = None
        self.tick = max(0.05, min(1.0, cfg.min_idle_s / 8))

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        for img in self.store.images():
            self.images[img["id"]] = img
        await self.zygote.start()
        await self.recover()
        self.policy_task = asyncio.get_running_loop().create_task(self._policy_loop())

    async def stop(self) -> None:
        """Leaves every worker running (a restarted daemon re-attaches); stops our own tasks."""
        if self.policy_task:
            self.policy_task.cancel()
        for t in list(self.tasks):
            t.cancel()
        for s in self.sessions.values():
            if s.link is not None:
                s.link.close()
            if s.unwatch:
                s.unwatch()
            if s.state in (RUNNING, PAUSED):
                self._persist(s)          # last activity, for the idle timer after restart
        await self.zygote.stop()

    def _spawn_task(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def check_serving(self) -> None:
        if self.draining:
            raise Unavailable("vmmd is draining for a stop: retry against this host once it is "
                              "back, or place the MicroVM on another host")

    # ------------------------------------------------------------------ events

    def _persist(self, s: Session) -> None:
        self.store.put_vm(s.record())

    def _event(self, s: Session, type_: str, from_state: str, to_state: str, reason: str,
               exit_code: int = 0) -> None:
        ts = time.time()
        seq = self.store.add_event(s.id, ts, type_, from_state, to_state, reason, exit_code)
        ev = {"seq": seq, "vm_id": s.id, "ts": ts, "type": type_, "from_state": from_state,
              "to_state": to_state, "reason": reason, "exit_code": exit_code,
              "labels": dict(s.spec.get("labels", {}))}
        for q in list(self.subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                q.put_nowait(None) if q.empty() else None   # a slow watcher is cut off
                self.subscribers.discard(q)
        log.info("event", extra={"vm": s.id, "type": type_, "from": from_state,
                                 "to": to_state, "reason": reason})

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self.subscribers.add(q)
        return q

    def drain(self) -> None:
        """New work answers UNAVAILABLE from now on; watchers are told to reconnect."""
        self.draining = True
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait("drain")

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def _set_state(self, s: Session, state: str, reason: str) -> None:
        if s.state == TERMINATED and state != TERMINATED:
            raise Aborted(f"MicroVM {s.id} was terminated while this call ran ({s.reason})")
        if s.state == state and state != TERMINATED:
            return
        prev, now = s.state, time.time()
        if prev in CLOCKED and state not in CLOCKED and s.running_since:
            s.running_s += now - s.running_since
            s.running_since = None
        if state in CLOCKED and prev not in CLOCKED:
            s.running_since = now
            s.last_activity = now             # a fresh run starts a fresh idle period
        s.state, s.reason, s.state_since = state, reason, now
        self._persist(s)
        self._event(s, "STATE_CHANGED", prev, state, reason)

    # ------------------------------------------------------------------ images

    def get_image(self, image_id: str) -> dict:
        img = self.images.get(image_id)
        if img is None:
            raise NotFound(f"image {image_id!r} does not exist; ListImages shows the "
                           "registered images")
        return img

    def image_users(self, image_id: str) -> list[Session]:
        return [s for s in self.sessions.values()
                if s.image_id == image_id and s.state != TERMINATED]

    def _new_image_tmp(self) -> str:
        d = os.path.join(self.store.dir, "images", f".tmp-{secrets.token_hex(6)}")
        os.makedirs(os.path.join(d, "snapshot"))
        return d

    async def _inspect(self, snapshot_dir: str) -> dict:
        """Asks a fresh worker (not this process: the snapshot is untrusted) what it holds."""
        from . import wire
        pid, sock = await self.zygote.spawn({"mode": "inspect", "vm_id": "inspect",
                                             "vm_dir": "", "snapshot": snapshot_dir})
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            msg = await asyncio.wait_for(wire.aread(reader), 30)
            writer.close()
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        if not msg.get("ok"):
            raise InvalidArgument(f"{snapshot_dir} is not a usable snapshot: {msg.get('error')}")
        return msg

    async def _commit_image(self, tmp: str, name: str, meta: dict, hasher) -> dict:
        digest = hasher.hexdigest()
        image_id = "img-" + digest[:32]
        final = self.store.image_dir(image_id)
        fsync_dir(os.path.join(tmp, "snapshot"))
        fsync_dir(tmp)
        if image_id in self.images:
            remove_tree(tmp)      # same content: the same image
            return self.images[image_id]
        if os.path.exists(final):                       # left by a crash before its row
            remove_tree(final)
        os.rename(tmp, final)
        fsync_dir(os.path.dirname(final))
        self.store.put_image(image_id, name, digest, meta)   # the image is visible from here
        img = next(i for i in self.store.images() if i["id"] == image_id)
        self.images[image_id] = img
        return img

    async def register_image_from_dir(self, name: str, src: dict, labels: dict) -> dict:
        self.check_serving()
        check_labels(labels)
        snap = src.get("snapshot_dir", "")
        if not snap or not os.path.isabs(snap):
            raise InvalidArgument(f"snapshot_dir {snap!r}: give the absolute path of a snapshot "
                                  "directory (vmstate + memory) on this host")
        for f in ("vmstate", "memory"):
            p = os.path.join(snap, f)
            if not os.path.isfile(p) or os.path.islink(p):
                raise InvalidArgument(f"{p} is not a regular file: snapshot_dir must hold a "
                                      "full snapshot's vmstate and memory")
        info = await self._inspect(snap)
        if info["diff"]:
            raise InvalidArgument(f"{snap} is a diff snapshot; register a full snapshot")
        for key in ("kernel", "initrd", "rootfs", "working_set"):
            p = src.get(key) or ""
            if p and (not os.path.isabs(p) or not os.path.isfile(p)):
                raise InvalidArgument(f"{key} {p!r}: give the absolute path of a regular file")
        tmp = self._new_image_tmp()
        try:
            hasher = hashlib.sha256()
            size = 0
            loop = asyncio.get_running_loop()
            # a Linux MicroVM's snapshot also holds the disk layer it sealed (docs/virtio.md)
            layers = sorted(f for f in os.listdir(snap) if f.endswith(".disk")
                            and os.path.isfile(os.path.join(snap, f))
                            and not os.path.islink(os.path.join(snap, f)))
            for f in ("vmstate", "memory", *layers):
                hasher.update(f.encode() + b"\0")
                size += await loop.run_in_executor(None, copy_sparse, os.path.join(snap, f),
                                                   os.path.join(tmp, "snapshot", f), hasher)
            for key in ("kernel", "initrd", "rootfs", "working_set"):
                p = src.get(key) or ""
                if p:
                    hasher.update(key.encode() + b"\0")
                    size += await loop.run_in_executor(None, copy_sparse, p,
                                                       os.path.join(tmp, key), hasher)
            meta = {"vcpus": info["vcpus"], "memory_mib": info["mem_size"] >> 20,
                    "size_bytes": size, "devices": dict(src.get("devices") or {}),
                    "agent": dict(src.get("agent") or {}), "labels": dict(labels),
                    "kernel": os.path.basename(src.get("kernel") or ""),
                    "initrd": os.path.basename(src.get("initrd") or ""),
                    "rootfs": os.path.basename(src.get("rootfs") or ""),
                    "working_set": bool(src.get("working_set")),
                    "source": src.get("source") or f"snapshot:{snap}",
                    "arch": os.uname().machine}
            if src.get("config"):
                meta["config"] = src["config"]
            hasher.update(repr(sorted(meta["devices"].items())).encode())
            return await self._commit_image(tmp, name or os.path.basename(snap.rstrip("/")),
                                            meta, hasher)
        except BaseException:
            remove_tree(tmp)
            raise

    async def build_image(self, name: str, dockerfile: str, context: bytes,
                          build_args: dict, labels: dict, progress) -> dict:
        """Builds an image from a Dockerfile and a context zip in a build process of its own
        (vmmd/images/build.py: RUN steps in a build MicroVM, the step cache under the state
        directory), then registers what it made. `progress(event)` sees every step and log
        line. One build at a time; a failed build leaves no image."""
        self.check_serving()
        check_labels(labels)
        if not dockerfile.strip():
            raise InvalidArgument("dockerfile is empty: give the Dockerfile's text")
        if len(dockerfile) > 1 << 20:
            raise InvalidArgument("dockerfile is over 1 MiB")
        from .images import dockerfile as dfmod
        dfmod.parse(dockerfile, build_args)      # its faults, by line, before any build starts
        async with self._build_lock:
            work = os.path.join(self.store.dir, "build-work")
            await asyncio.get_running_loop().run_in_executor(None, remove_tree, work)
            os.makedirs(work, mode=0o700)
            try:
                ctx = os.path.join(work, "context.zip")
                with open(ctx, "wb") as f:
                    f.write(context)
                spec = {"dockerfile": dockerfile, "context": ctx, "build_args": build_args,
                        "cache": os.path.join(self.store.dir, "build-cache"),
                        "work": os.path.join(work, "scratch"), "out": os.path.join(work, "out"),
                        "kernel": self.cfg.guest_kernel or None,
                        "initrd": self.cfg.guest_initrd or None,
                        "cache_max_bytes": self.cfg.build_cache_max_mib << 20}
                with open(os.path.join(work, "spec.json"), "w") as f:
                    json.dump(spec, f)
                result = await self._run_build(os.path.join(work, "spec.json"), progress)
                from .images import paths as ipaths
                kernel = spec["kernel"] or str(ipaths.guest_kernel(os.uname().machine).image)
                initrd = spec["initrd"]
                if not initrd:
                    from .images import initramfs
                    initrd = str(await asyncio.get_running_loop().run_in_executor(
                        None, initramfs.build, os.uname().machine))
                src = {"snapshot_dir": result["snapshot"], "kernel": kernel, "initrd": initrd,
                       "rootfs": result["rootfs"], "working_set": result["working_set"],
                       "devices": {"linux": True, "net": True}, "agent": {"present": True},
                       "config": {**result["config"], "digest": result["digest"],
                                  "base_digest": result["base_digest"],
                                  "build_timings": result["timings"]},
                       "source": f"dockerfile:{result['digest']}"}
                # the Dockerfile's LABELs, under the request's own (Docker's order)
                check_labels(result["config"].get("labels", {}), "Dockerfile LABEL")
                labels = {**result["config"].get("labels", {}), **labels}
                return await self.register_image_from_dir(name, src, labels)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, remove_tree, work)

    async def _run_build(self, spec_path: str, progress) -> dict:
        # stderr to a file, not a second pipe: nothing it writes can block the build while
        # stdout is being read
        log_path = os.path.join(os.path.dirname(spec_path), "build.log")
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vmmd.images.build", spec_path,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=1 << 22)
        result = error = None
        try:
            while line := await proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "progress" in msg:
                    await progress(msg["progress"])
                elif "result" in msg:
                    result = msg["result"]
                elif "error" in msg:
                    error = msg["error"]
            await proc.wait()
            with open(log_path, "rb") as f:
                stderr = f.read()[-4000:].decode(errors="replace")
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if error:
            if error.get("invalid"):
                raise InvalidArgument(error["message"])
            raise Internal(f"the build failed: {error['message']}")
        if result is None:
            raise Internal(f"the build process ended ({proc.returncode}) without a result: "
                           f"{stderr[-2000:]}")
        return result

    async def register_image_from_vm(self, name: str, vm_id: str, agent: dict | None,
                                     labels: dict) -> dict:
        self.check_serving()
        check_labels(labels)
        s = self.get(vm_id)
        async with s.lock:
            if s.state not in (RUNNING, PAUSED):
                raise FailedPrecondition(f"MicroVM {vm_id} is {s.state}; an image is taken from "
                                         "a RUNNING or PAUSED MicroVM (Resume it first)")
            base = self.get_image(s.image_id)
            if base["meta"].get("devices", {}).get("linux"):
                # its disk is a chain of layers in this MicroVM's directory and its image's:
                # an image must not depend on a MicroVM that can be terminated
                raise FailedPrecondition(
                    f"MicroVM {vm_id} has a disk whose layers live with the MicroVM; images "
                    "from Linux MicroVMs are not supported yet: snapshot the guest with "
                    "vmmd.microvm and register that directory")
            tmp = self._new_image_tmp()
            try:
                was_running = s.state == RUNNING
                if was_running:
                    await self._call(s, "pause")
                try:
                    await self._call(s, "snapshot", dir=os.path.join(tmp, "snapshot"), diff=False,
                                     timeout=600)
                finally:
                    # the VM's dirty log now starts at this snapshot: its next suspend is full
                    s.force_full = 1
                    self._persist(s)
                    if was_running:
                        await self._call(s, "resume")
                hasher = hashlib.sha256()
                size = 0
                for f in ("vmstate", "memory"):
                    hasher.update(f.encode() + b"\0")
                    p = os.path.join(tmp, "snapshot", f)
                    size += os.stat(p).st_blocks * 512
                    await asyncio.get_running_loop().run_in_executor(None, hash_file, p, hasher)
                meta = dict(base["meta"], size_bytes=size, labels=dict(labels),
                            source=f"microvm:{vm_id}",
                            agent=dict(agent) if agent else base["meta"].get("agent", {}))
                hasher.update(repr(sorted(meta["devices"].items())).encode())
                return await self._commit_image(tmp, name or f"from-{vm_id}", meta, hasher)
            except BaseException:
                remove_tree(tmp)
                raise

    async def delete_image(self, image_id: str, force: bool) -> int:
        self.check_serving()
        self.get_image(image_id)
        users = self.image_users(image_id)
        if users and not force:
            raise FailedPrecondition(
                f"image {image_id} is used by {len(users)} MicroVM(s) ({', '.join(s.id for s in users[:5])}); "
                "terminate them first or delete with force, which terminates them")
        for s in users:
            await self.terminate(s.id, f"image {image_id} deleted with force")
        self.store.delete_image(image_id)          # invisible first, then the files go
        self.images.pop(image_id, None)
        remove_tree(self.store.image_dir(image_id))
        return len(users)

    # ------------------------------------------------------------------ lookups

    def get(self, vm_id: str) -> Session:
        s = self.sessions.get(vm_id)
        if s is None:
            raise NotFound(f"MicroVM {vm_id!r} does not exist on this host; List shows the "
                           "MicroVMs it has")
        return s

    def list(self, labels: dict, states: list[str], include_terminated: bool) -> list[Session]:
        out = []
        for s in self.sessions.values():
            if states and s.state not in states:
                continue
            if not states and not include_terminated and s.state == TERMINATED:
                continue
            sl = s.spec.get("labels", {})
            if any(sl.get(k) != v for k, v in labels.items()):
                continue
            out.append(s)
        return out

    def has_agent(self, s: Session) -> bool:
        img = self.images.get(s.image_id)
        return bool(img and img["meta"].get("agent", {}).get("present"))

    # ------------------------------------------------------------------ workers

    async def _call(self, s: Session, op: str, timeout: float = 60.0, **args) -> dict:
        if s.link is None or s.link.closed:
            if s.state == TERMINATED:
                raise Aborted(f"MicroVM {s.id} was terminated while this call ran ({s.reason})")
            raise Internal(f"MicroVM {s.id} has no worker connection (state {s.state})")
        try:
            return await s.link.call(op, timeout=timeout, **args)
        except (WorkerError, asyncio.TimeoutError) as e:
            if s.state == TERMINATED:
                raise Aborted(f"MicroVM {s.id} was terminated while this call ran "
                              f"({s.reason})") from None
            raise Internal(f"worker of {s.id} failed {op}: {e or 'timed out'}") from None

    def _top_snapshot(self, s: Session) -> str:
        if s.chain:
            return os.path.join(self.store.vm_dir(s.id), "layers", s.chain[-1])
        return os.path.join(self.store.image_dir(s.image_id), "snapshot")

    def _memory_limit(self, s: Session) -> int:
        return max(64 << 20, (s.spec["memory_mib"] + self.cfg.worker_memory_overhead_mib) << 20)

    async def _spawn(self, s: Session) -> None:
        img = self.get_image(s.image_id)
        vm_dir = self.store.vm_dir(s.id)
        procs = []
        if self.cgroups is not None:
            g = self.cgroups.create(s.id, s.spec["vcpus"], self._memory_limit(s))
            procs = g.procs_files()
        ws = os.path.join(self.store.image_dir(s.image_id), "working_set")
        network = None
        if s.spec.get("network"):
            from . import net
            n = s.spec["network"]
            # every worker is a new NIC: a MAC of its own (the guest takes it in _sync_agent)
            network = {"mac": net.random_mac().hex(), "expose": n["expose"],
                       "rules": n["rules"], "default_allow": n["default_allow"]}
        conf = {"vm_id": s.id, "vm_dir": vm_dir, "snapshot": self._top_snapshot(s),
                "backend": self.cfg.restore_backend,
                "working_set": ws if (img["meta"].get("working_set") and not s.chain) else "",
                "devices": img["meta"].get("devices", {}), "seccomp": self.cfg.seccomp,
                "rootfs": (os.path.join(self.store.image_dir(s.image_id), "rootfs")
                           if img["meta"].get("rootfs") else ""),
                "cgroup_procs": procs, "rlimit_nofile": self.cfg.worker_rlimit_nofile,
                "rlimit_nproc": self.cfg.worker_rlimit_nproc, "fault": self.cfg.worker_fault,
                "root": self.store.dir, "spawned_at": time.time(), "network": network}
        loop = asyncio.get_running_loop()
        s.started = loop.create_future()
        s.exited = loop.create_future()
        s.expect_exit = False
        s.early_stop = None
        t0 = time.monotonic()
        pid, sock = await self.zygote.spawn(conf)
        t1 = time.monotonic()
        s.worker_pid = pid
        self.by_pid[pid] = s
        self._persist(s)                 # recovery must know the pid before anything else
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        s.link = WorkerLink(reader, writer, lambda ev, s=s: self._on_worker_event(s, ev))
        try:
            ev = await asyncio.wait_for(asyncio.shield(s.started), SPAWN_TIMEOUT)
        except asyncio.TimeoutError:
            raise Internal(f"worker of {s.id} did not start within {SPAWN_TIMEOUT:g} s") from None
        s.timings = dict(ev.get("timings", {}), fork_s=t1 - t0, ready_s=time.monotonic() - t1)
        s.net = ev.get("net")
        log.info("worker started", extra={"vm": s.id, "timings": s.timings})

    def _on_worker_event(self, s: Session, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "running":
            if s.started and not s.started.done():
                s.started.set_result(ev)
        elif kind == "failed":
            if s.started and not s.started.done():
                s.started.set_exception(Internal(f"restore of {s.id} failed: {ev.get('error')}"))
        elif kind == "stopped":
            if s.state in (LAUNCHING, RESUMING) and not s.expect_exit:
                s.early_stop = ev       # before RUNNING was committed: handled right after it
            elif s.state in (RUNNING, PAUSED) and not s.expect_exit:
                reason = ("guest exited with code %d" % ev.get("exit_code", 0)
                          if ev.get("reason") == "guest_exit" else
                          f"VM stopped ({ev.get('reason')}): {ev.get('message') or 'no message'}")
                self._event(s, "GUEST_EXITED", s.state, s.state, reason, int(ev.get("exit_code", 0)))
                self._spawn_task(self.terminate(s.id, reason))

    def _replay_early_stop(self, s: Session) -> None:
        """A guest that stopped before its MicroVM was RUNNING (it exited at once) ends it now;
        the event was kept rather than dropped (seen under load: a test guest that exits
        immediately stayed RUNNING forever)."""
        ev, s.early_stop = s.early_stop, None
        if ev is not None:
            self._on_worker_event(s, ev)

    def _on_exit(self, pid: int, status: int | None) -> None:
        s = self.by_pid.pop(pid, None)
        if s is None:
            return
        if s.unwatch:
            s.unwatch = None
        if s.worker_pid == pid:
            s.worker_pid = 0
        reason = describe_status(status)
        if self.cgroups is not None and self.cgroups.oom_kills(s.id) > 0:
            reason = (f"worker killed by the OOM killer: its cgroup memory limit of "
                      f"{self._memory_limit(s) >> 20} MiB (guest memory + overhead) was reached")
        if s.started and not s.started.done():
            s.started.set_exception(Internal(f"worker of {s.id} died while starting: {reason}"))
        if s.exited and not s.exited.done():
            s.exited.set_result(reason)
        if s.link is not None:
            s.link.close()
        if not s.expect_exit and s.state != TERMINATED:
            self._event(s, "WORKER_DIED", s.state, s.state, reason)
            self._spawn_task(self.terminate(s.id, reason))

    async def _stop_worker(self, s: Session, *, kill: bool = False) -> None:
        pid = s.worker_pid
        s.expect_exit = True
        if pid:
            if not kill and s.link is not None and not s.link.closed:
                with contextlib.suppress(WorkerError, asyncio.TimeoutError):
                    await s.link.call("stop", timeout=10)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            exited = s.exited
            if exited is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(exited), 10)
                except asyncio.TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(exited), 5)
        if s.link is not None:
            s.link.close()
            s.link = None
        if s.unwatch:
            s.unwatch()
            s.unwatch = None
        self.by_pid.pop(pid, None)
        s.worker_pid = 0
        if self.cgroups is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.cgroups.remove(s.id, kill=True))
        self.admission.release(s.id)

    # ------------------------------------------------------------------ lifecycle

    async def launch(self, spec: Spec, request_id: str = "") -> Session:
        self.check_serving()
        if request_id and request_id in self.by_request:
            s = self.by_request[request_id]
            await s.launched.wait()
            return s
        img = self.get_image(spec.image_id)
        network = await self._network_spec(img, spec.network)
        vm_id = "vm-" + secrets.token_hex(8)
        self.admission.check(vm_id, spec.vcpus, spec.memory_mib, spec.disk_mib)
        self.admission.commit(vm_id, spec.vcpus, spec.memory_mib, spec.disk_mib)
        spec_d = {"vcpus": spec.vcpus, "memory_mib": spec.memory_mib, "disk_mib": spec.disk_mib,
                  "policy": dataclasses.asdict(spec.policy),
                  "env": spec.env, "labels": spec.labels, "network": network}
        s = Session(vm_id, img["id"], spec_d, request_id=request_id or None)
        self.sessions[vm_id] = s
        if request_id:
            self.by_request[request_id] = s
        os.makedirs(os.path.join(self.store.vm_dir(vm_id), "layers"), mode=0o700)
        self._persist(s)
        self._event(s, "STATE_CHANGED", "UNSPECIFIED", LAUNCHING, "launch requested")
        try:
            async with s.lock:
                try:
                    await self._spawn(s)
                except Exception as e:
                    reason = f"launch failed: {e}"
                    tail = self._worker_log_tail(s)
                    if tail:
                        log.error("worker of %s failed to start", vm_id,
                                  extra={"worker_log": tail})
                        reason += f" (worker log: {tail.strip().splitlines()[-1][:300]})"
                    await self.terminate(vm_id, reason)
                    if isinstance(e, (Aborted,)):
                        raise
                    raise Internal(f"{reason}; the image's snapshot may not restore on this host "
                                   "(see the MicroVM's worker.log)") from None
                self._set_state(s, RUNNING, "launched")
                self._replay_early_stop(s)
                await self._sync_agent(s)
                await self._hook(s, "run")
        finally:
            s.launched.set()
        return s

    def _worker_log_tail(self, s: Session, size: int = 4096) -> str:
        try:
            with open(os.path.join(self.store.vm_dir(s.id), "worker.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def pause(self, vm_id: str) -> Session:
        s = self.get(vm_id)
        async with s.lock:
            if s.state == PAUSED:
                return s
            if s.state != RUNNING:
                raise FailedPrecondition(f"MicroVM {vm_id} is {s.state}; only a RUNNING "
                                         "MicroVM can be paused")
            await self._call(s, "pause")
            self._set_state(s, PAUSED, "paused by request")
        return s

    async def suspend(self, vm_id: str, reason: str = "suspended by request") -> Session:
        s = self.get(vm_id)
        async with s.lock:
            return await self._suspend_locked(s, reason)

    async def _suspend_locked(self, s: Session, reason: str) -> Session:
        if s.state == SUSPENDED:
            return s
        if s.state not in (RUNNING, PAUSED):
            raise FailedPrecondition(f"MicroVM {s.id} is {s.state}; only a RUNNING or PAUSED "
                                     "MicroVM can be suspended")
        prev = s.state
        self._set_state(s, SUSPENDING, reason)
        await self._hook(s, "suspend")
        layers = os.path.join(self.store.vm_dir(s.id), "layers")
        n = max([int(x) for x in s.chain] + [s.suspends]) + 1
        tmp = os.path.join(layers, f".tmp-{n}")
        diff = not s.force_full and len(s.chain) < self.cfg.max_chain_depth
        try:
            if prev == RUNNING:
                await self._call(s, "pause")
            remove_tree(tmp)
            os.makedirs(tmp)
            r = await self._call(s, "snapshot", dir=tmp, diff=diff, timeout=600)
            write_atomic(os.path.join(tmp, "kind"), b"diff" if diff else b"full")
            os.rename(tmp, os.path.join(layers, str(n)))
            fsync_dir(layers)
        except Exception as e:
            remove_tree(tmp)
            if isinstance(e, Aborted) or s.state == TERMINATED:
                raise Aborted(f"MicroVM {s.id} was terminated while suspending ({s.reason})") from None
            with contextlib.suppress(Exception):
                if prev == RUNNING:
                    await self._call(s, "resume")
            self._set_state(s, prev, f"suspend failed: {e}")
            raise Internal(f"suspend of {s.id} failed: {e}; it is {prev} again") from None
        old = list(s.chain)
        s.chain = (old if diff else []) + [str(n)]
        s.force_full = 0
        s.suspends += 1
        s.timings = dict(s.timings, snapshot_s=r.get("seconds", 0.0), snapshot_pages=r.get("pages", 0))
        self._set_state(s, SUSPENDED, reason)          # the chain is committed with it
        await self._stop_worker(s)
        if not diff:
            for x in old:
                drop_layer(os.path.join(layers, x))
        return s

    async def resume(self, vm_id: str, reason: str = "resumed by request") -> Session:
        s = self.get(vm_id)
        async with s.lock:
            return await self._resume_locked(s, reason)

    async def _resume_locked(self, s: Session, reason: str) -> Session:
        if s.state == RUNNING:
            return s
        if s.state == PAUSED:
            await self._call(s, "resume")
            self._set_state(s, RUNNING, reason)
            return s
        if s.state != SUSPENDED:
            raise FailedPrecondition(f"MicroVM {s.id} is {s.state}; only a PAUSED or SUSPENDED "
                                     "MicroVM can be resumed")
        self.check_serving()
        sp = s.spec
        self.admission.check(s.id, sp["vcpus"], sp["memory_mib"], sp["disk_mib"])
        self.admission.commit(s.id, sp["vcpus"], sp["memory_mib"], sp["disk_mib"])
        self._set_state(s, RESUMING, reason)
        try:
            await self._spawn(s)
        except Exception as e:
            await self._stop_worker(s, kill=True)
            if s.state == TERMINATED:
                raise Aborted(f"MicroVM {s.id} was terminated while resuming ({s.reason})") from None
            self._set_state(s, SUSPENDED, f"resume failed: {e}")
            raise Internal(f"resume of {s.id} failed: {e}; it stays SUSPENDED") from None
        self._set_state(s, RUNNING, reason)
        self._replay_early_stop(s)
        await self._sync_agent(s)
        await self._hook(s, "resume")
        return s

    async def terminate(self, vm_id: str, reason: str = "terminated by request") -> Session:
        s = self.get(vm_id)
        if s.state == TERMINATED:
            return s
        if s.state in (RUNNING, PAUSED) and not s.lock.locked():
            await self._hook(s, "terminate")
        self._set_state(s, TERMINATED, reason)          # the intent is durable first
        if s.started and not s.started.done():
            s.started.set_exception(Aborted(f"MicroVM {s.id} was terminated while starting"))
        await self._stop_worker(s, kill=True)
        async with s.lock:                               # in-flight calls have seen it by now
            await self._remove_files(s)
        if s.request_id:
            self.by_request.pop(s.request_id, None)
        return s

    async def _remove_files(self, s: Session) -> None:
        d = self.store.vm_dir(s.id)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: remove_tree(d))

    async def touch(self, vm_id: str, *, data_plane: bool) -> Session:
        """API traffic to a MicroVM: resets its idle timer, resumes it first when SUSPENDED and
        its policy says auto_resume. Data-plane calls (exec, files, connect) need an agent."""
        s = self.get(vm_id)
        if data_plane and not self.has_agent(s):
            raise FailedPrecondition(
                f"image {s.image_id} has no guest agent; exec, files and connect need one: "
                "launch from an image built with the agent")
        if s.state == TERMINATED:
            raise FailedPrecondition(f"MicroVM {vm_id} is TERMINATED ({s.reason}); launch a new one")
        s.last_activity = time.time()
        if s.state in (SUSPENDED, SUSPENDING, RESUMING):
            if not s.policy.get("auto_resume", True):
                raise FailedPrecondition(f"MicroVM {vm_id} is {s.state} and its idle policy has "
                                         "auto_resume off; call Resume first")
            async with s.lock:
                await self._resume_locked(s, "auto-resumed by a request")
        elif s.state == LAUNCHING:
            await s.launched.wait()
        s.last_activity = time.time()
        return s

    async def ping(self, vm_id: str) -> tuple[Session, dict]:
        s = await self.touch(vm_id, data_plane=False)
        stats: dict = {}
        if s.link is not None and s.state in (RUNNING, PAUSED):
            stats = await self._call(s, "stats", timeout=10)
        return s, stats

    # ------------------------------------------------------------------ hooks

    async def _hook(self, s: Session, event: str) -> None:
        """Lifecycle hooks go to the application through the guest agent; images without an
        agent (all test-guest images) have nothing to tell, so the call is skipped."""
        img = self.images.get(s.image_id)
        agent = (img or {}).get("meta", {}).get("agent", {})
        if not agent.get("present"):
            return
        hooks = [h for h in agent.get("hooks", []) if h.get("event") == event]
        if not hooks:
            return
        from .api import agent_bridge
        for h in hooks:
            try:
                await agent_bridge.run_hook(self.agent_socket(s), agent, h)
                self._event(s, "HOOK", s.state, s.state, f"{event} hook ran")
            except Exception as e:  # a hook never blocks the lifecycle; the event says why
                self._event(s, "HOOK", s.state, s.state, f"{event} hook failed: {e}")

    async def _network_spec(self, img: dict, want: dict | None) -> dict | None:
        """A launch's network, checked and resolved against its image (vmmd.net)."""
        from . import net
        has_net = bool(img["meta"].get("devices", {}).get("net"))
        if want is not None and not has_net:
            raise FailedPrecondition(f"image {img['id']} has no network (DeviceConfig.net); "
                                     "launch it without network options")
        if not has_net:
            return None
        want = want or {}
        try:
            policy = net.EgressPolicy.from_dict(want.get("egress") or {})
            expose = list(net.check_ports(want.get("expose", ())))
            rules = await asyncio.get_running_loop().run_in_executor(
                None, net.compiled, policy, tuple(expose))
        except net.PolicyError as e:
            raise InvalidArgument(str(e)) from None
        return {"egress": policy.to_dict(), "expose": expose, **rules}

    async def set_egress(self, vm_id: str, egress: dict) -> Session:
        """A new egress policy: stored, and applied now when the MicroVM has a worker."""
        from . import net
        s = self.get(vm_id)
        if not s.spec.get("network"):
            raise FailedPrecondition(f"MicroVM {vm_id} has no network: its image {s.image_id} "
                                     "was registered without DeviceConfig.net")
        if s.state == TERMINATED:
            raise FailedPrecondition(f"MicroVM {vm_id} is TERMINATED ({s.reason})")
        try:
            policy = net.EgressPolicy.from_dict(egress)
            rules = await asyncio.get_running_loop().run_in_executor(
                None, net.compiled, policy, tuple(s.spec["network"]["expose"]))
        except net.PolicyError as e:
            raise InvalidArgument(str(e)) from None
        async with s.lock:
            if s.state in (RUNNING, PAUSED) and s.link is not None:
                await self._call(s, "net_policy", **rules)
            s.spec["network"] = {**s.spec["network"], "egress": policy.to_dict(), **rules}
            self._persist(s)
        self._event(s, "NETWORK", s.state, s.state, "egress policy replaced")
        return s

    async def network_port(self, vm_id: str, guest_port: int) -> tuple[Session, int]:
        """The host loopback port that reaches `guest_port` of a MicroVM (waking it first)."""
        s = await self.touch(vm_id, data_plane=False)
        exposed = (s.spec.get("network") or {}).get("expose", [])
        if guest_port not in exposed:
            raise FailedPrecondition(
                f"guest port {guest_port} of {vm_id} is not exposed (exposed: {exposed or 'none'});"
                " launch with network.expose_ports, or connect without network")
        for g, h in (s.net or {}).get("forwards", []):
            if g == guest_port:
                return s, h
        raise Unavailable(f"MicroVM {vm_id} has no worker forwarding port {guest_port} now "
                          f"({s.state}); retry")

    async def _sync_agent(self, s: Session) -> None:
        """A restored guest's clock is the snapshot's and its entropy pool a copy: the agent
        sets the clock, reseeds and bumps the generation (docs/guest.md) before the MicroVM is
        handed back. A failure does not fail the launch; the event says so."""
        img = self.images.get(s.image_id)
        agent = (img or {}).get("meta", {}).get("agent", {})
        if not agent.get("present"):
            return
        from .api import agent_bridge
        try:
            client = await agent_bridge.connect(self.agent_socket(s), agent,
                                                timeout=AGENT_SYNC_TIMEOUT)
            r = await asyncio.wait_for(client.sync_after_restore(reset_tcp=bool(s.net)),
                                       AGENT_SYNC_TIMEOUT)
            log.info("agent synced", extra={"vm": s.id, "generation": r.get("generation")})
            if s.net:
                # the guest's NIC is a new one: its MAC, a lease from its new passt
                out = await asyncio.wait_for(client.run(["/run/vmmd/net", "restored",
                                                         s.net["mac"]]),
                                             AGENT_SYNC_TIMEOUT)
                if out.code != 0:
                    raise RuntimeError(f"the guest's network did not come back ({out.exit}): "
                                       f"{(out.stdout + out.stderr).decode()[-500:]}")
        except Exception as e:  # noqa: BLE001 - reported, the MicroVM runs on
            self._event(s, "WARNING", s.state, s.state,
                        f"the guest agent did not sync after restore ({e}): the guest clock "
                        "may lag and its random state is the snapshot's")

    def agent_socket(self, s: Session) -> str:
        return os.path.join(self.store.vm_dir(s.id), "vsock.sock")

    # ------------------------------------------------------------------ policy timers

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = time.time()
            for s in list(self.sessions.values()):
                if s.policy_busy or s.state == TERMINATED:
                    continue
                p = s.policy
                action = None
                if s.state in CLOCKED and s.running_time(now) >= p["max_runtime_s"]:
                    action = self.terminate(s.id, f"max_runtime of {p['max_runtime_s']:g} s "
                                                  "of running time reached")
                elif (s.state in CLOCKED and now - s.last_activity >= p["max_idle_s"]
                      and not s.lock.locked()):
                    action = self.suspend(s.id, f"idle for {p['max_idle_s']:g} s (max_idle)")
                elif s.state == SUSPENDED and now - s.state_since >= p["retention_s"]:
                    action = self.terminate(s.id, f"suspended longer than its retention of "
                                                  f"{p['retention_s']:g} s")
                if action is not None:
                    s.policy_busy = True
                    self._spawn_task(self._policy_run(s, action))

    async def _policy_run(self, s: Session, coro) -> None:
        try:
            await coro
        except Exception as e:  # logged; the next tick tries again
            log.warning("policy action on %s failed: %s", s.id, e)
        finally:
            s.policy_busy = False

    # ------------------------------------------------------------------ recovery

    def _scan_workers(self) -> dict[str, list[int]]:
        """Processes whose cwd is one of our vms/<id> directories: the workers, however their
        daemon ended (they are born there, see vmmd/zygote.py)."""
        root = os.path.realpath(os.path.join(self.store.dir, "vms")) + "/"
        out: dict[str, list[int]] = {}
        me = os.getpid()
        for e in os.scandir("/proc"):
            if not e.name.isdigit() or int(e.name) == me:
                continue
            try:
                cwd = os.readlink(f"/proc/{e.name}/cwd")
            except OSError:
                continue
            if cwd.startswith(root):
                vm_id = cwd[len(root):].split("/")[0].removesuffix(" (deleted)")
                out.setdefault(vm_id, []).append(int(e.name))
        return out

    async def recover(self) -> None:
        """Re-attaches to running workers, finishes or rolls back interrupted operations, and
        removes whatever no row accounts for."""
        live = self._scan_workers()
        rows = self.store.vms()
        for r in rows:
            s = Session.from_record(r)
            s.launched.set()
            self.sessions[s.id] = s
            if s.request_id and s.state != TERMINATED:
                self.by_request[s.request_id] = s
            pids = live.pop(s.id, [])
            if s.state == TERMINATED:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if self.cgroups is not None:
                    self.cgroups.remove(s.id, kill=True)
                remove_tree(self.store.vm_dir(s.id))
                continue
            hello = None
            if pids:
                try:
                    s.link, hello = await connect_worker(
                        os.path.join(self.store.vm_dir(s.id), "worker.sock"),
                        lambda ev, s=s: self._on_worker_event(s, ev))
                except (OSError, WorkerError, asyncio.TimeoutError) as e:
                    log.warning("cannot re-attach to the worker of %s: %s", s.id, e)
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
            await self._reconcile(s, hello)
        # processes in directories no row knows
        for vm_id, pids in live.items():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        known = {s.id for s in self.sessions.values() if s.state != TERMINATED}
        vms_dir = os.path.join(self.store.dir, "vms")
        for e in os.scandir(vms_dir):
            if e.name not in known:
                remove_tree(e.path)
        if self.cgroups is not None:
            for name in self.cgroups.names() - {s.id for s in self.sessions.values()
                                                 if s.worker_pid}:
                with contextlib.suppress(OSError):
                    self.cgroups.remove(name, kill=True)
        img_dir = os.path.join(self.store.dir, "images")
        for e in os.scandir(img_dir):
            if e.name not in self.images:
                remove_tree(e.path)    # half-registered
        self.store.prune_terminated()

    async def _reconcile(self, s: Session, hello: dict | None) -> None:
        layers = os.path.join(self.store.vm_dir(s.id), "layers")
        if hello is not None:
            pid = hello["pid"]
            s.worker_pid = pid
            s.expect_exit = False
            s.exited = asyncio.get_running_loop().create_future()
            self.by_pid[pid] = s
            s.unwatch = watch_pid(pid, self._on_exit)
            s.timings = hello.get("timings") or {}
            s.net = hello.get("net")                  # a re-attached worker's NIC
            sp = s.spec
            self.admission.commit(s.id, sp["vcpus"], sp["memory_mib"], sp["disk_mib"])
            wstate = hello.get("state")
            if hello.get("stopped") or wstate not in ("running", "paused"):
                st = hello.get("stopped") or {}
                await self.terminate(s.id, "VM stopped while the daemon was not running: "
                                           f"{st.get('reason', wstate)} {st.get('message', '')}".strip())
                return
            if s.state == SUSPENDED:
                await self._stop_worker(s, kill=True)        # its state is on disk already
            elif s.state in (LAUNCHING, RESUMING):
                self._set_state(s, RUNNING if wstate == "running" else PAUSED,
                                "re-attached after a daemon restart")
            elif s.state == SUSPENDING:
                self._set_state(s, RUNNING if wstate == "running" else PAUSED,
                                "re-attached after a daemon restart mid-suspend")
                self._clean_layers(s, layers)
                try:       # finished before the daemon serves: nobody sees it half done
                    await self.suspend(s.id, "suspend finished after a daemon restart")
                except Exception as e:  # it stays RUNNING/PAUSED; the reason says why
                    log.warning("could not finish the suspend of %s: %s", s.id, e)
                return
            elif s.state == RUNNING and wstate == "paused":
                self._set_state(s, PAUSED, "re-attached: the worker reports its VM paused")
            elif s.state == PAUSED and wstate == "running":
                self._set_state(s, RUNNING, "re-attached: the worker reports its VM running")
            for ev in hello.get("queued", []):
                self._on_worker_event(s, ev)
        else:
            s.worker_pid = 0
            if s.state == SUSPENDING:
                adopt = self._complete_layer(s, layers)
                if adopt is not None:
                    # a layer made durable before the crash is a consistent snapshot of the
                    # paused VM: finish the suspend with it
                    full = not self._is_diff(os.path.join(layers, adopt))
                    s.chain = ([] if full else s.chain) + [adopt]
                    s.suspends += 1
                    self._set_state(s, SUSPENDED, "suspend completed after a daemon restart")
                else:
                    await self.terminate(s.id, "worker ended during a suspend while the daemon "
                                               "was not running; its memory is lost")
                    return
            elif s.state == RESUMING:
                self._set_state(s, SUSPENDED, "resume interrupted by a daemon restart; "
                                              "it resumes on the next request")
            elif s.state in (LAUNCHING, RUNNING, PAUSED):
                why = ("the daemon restarted during its launch" if s.state == LAUNCHING else
                       "its worker ended while the daemon was not running")
                if self.cgroups is not None and self.cgroups.oom_kills(s.id) > 0:
                    why += " (the OOM killer acted in its cgroup)"
                await self.terminate(s.id, why)
                return
        self._clean_layers(s, layers)

    @staticmethod
    def _is_diff(layer: str) -> bool:
        with open(os.path.join(layer, "kind"), "rb") as f:
            return f.read() == b"diff"

    def _complete_layer(self, s: Session, layers: str) -> str | None:
        done = [x for x in os.listdir(layers) if x.isdigit() and x not in s.chain
                and os.path.exists(os.path.join(layers, x, "kind"))]
        top = max([int(x) for x in s.chain] + [0])
        done = [x for x in done if int(x) > top]
        return max(done, key=int) if done else None

    def _clean_layers(self, s: Session, layers: str) -> None:
        if not os.path.isdir(layers):
            return
        for x in os.listdir(layers):
            if x not in s.chain and not is_disk_only(os.path.join(layers, x)):
                remove_tree(os.path.join(layers, x))

    # ------------------------------------------------------------------ host

    def host_info(self) -> dict:
        import platform
        flags, model = [], ""
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("model name", "CPU part") and not model:
                    model = v.strip()
                elif k in ("flags", "Features") and not flags:
                    flags = v.split()
        by_state = {st: 0 for st in STATES}
        for s in self.sessions.values():
            by_state[s.state] += 1
        used_mem = 0
        used_vcpus = 0
        for s in self.sessions.values():
            if s.worker_pid:
                used_vcpus += s.spec["vcpus"] if s.state == RUNNING else 0
                if self.cgroups is not None:
                    used_mem += self.cgroups.memory_current(s.id)
        cv, cm, cd = self.admission.totals()
        fv, fm, fd = self.admission.free()
        try:
            from importlib.metadata import version
            native_version = version("vmmd")
        except Exception:  # metadata missing in odd installs
            native_version = __version__
        a = self.admission.allocatable
        return {"hostname": platform.node(), "arch": platform.machine(), "cpu_model": model,
                "cpu_flags": flags, "kernel": platform.release(),
                "daemon_version": __version__, "native_version": native_version,
                "capacity": (self.capacity.vcpus, self.capacity.memory_mib, self.capacity.disk_mib),
                "allocatable": (a.vcpus, a.memory_mib, a.disk_mib),
                "committed": (cv, cm, cd), "used": (used_vcpus, used_mem >> 20, 0),
                "free": (fv, fm, fd), "by_state": by_state,
                "images": sorted(self.images), "cgroup_version": self.cgroups.version
                if self.cgroups else 0, "draining": self.draining,
                "vcpu_overcommit": self.cfg.vcpu_overcommit,
                "memory_overcommit": self.cfg.memory_overcommit,
                "restore_backend": self.cfg.restore_backend}
