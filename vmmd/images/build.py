"""Builds a MicroVM image from a Dockerfile and a context (docs/images.md, "Building").

    base (oci.resolve + unpack) -> base.ext4 (mke2fs -d), cached by the base's digest
    build MicroVM on base.ext4 (vmmd's VMM, the agent, a NIC): each step that changes files
        runs in it (RUN through the agent; COPY/ADD as a tar unpacked by the guest's busybox;
        WORKDIR made), then the VM is snapshotted into the step cache: the snapshot seals the
        step's disk layer
    rootfs.ext4 = base.ext4 + every step's layer, flattened (images/flatten.py)
    init MicroVM on rootfs.ext4: ENTRYPOINT/CMD started under the agent, readiness (HEALTHCHECK,
        else the first EXPOSEd TCP port accepting, else the process staying up), freeze,
        snapshot: the image
    validation: one restore by uffd, readiness and a first request, the pages touched saved as
        the image's working set

The step cache: an entry per step, keyed like Docker's (stepcache.step_key: the parent's key,
the step's text, the digest of the files a COPY/ADD reads). An entry holds the VM's snapshot
after that step (steps that change no files share their parent's). A build restores the VM from
the last entry its steps hit and runs only the rest; when all hit, no VM runs at all.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import tarfile
import time
from typing import Callable

from vmmd.agent import AgentError
from vmmd.errors import InvalidArgument
from vmmd.images import context as ctxmod
from vmmd.images import dockerfile as dfmod
from vmmd.images import archive, cachegc, flatten, oci, paths, stepcache
from vmmd.microvm import LinuxSpec, MicroVM, NetOptions
from vmmd.native import Backend
from vmmd.net import EgressPolicy

MAX_DISK = 32 << 30
BB = "/run/vmmd/busybox"          # the initramfs's busybox, in every guest whatever its root
APP_LOG = "/run/vmmd/app.log"
LOG_TAIL = 4000


class BuildError(InvalidArgument):
    """The build failed for a reason the user can fix; the message says which step and why.
    Like the parser's, the context's and the base image's errors, an INVALID_ARGUMENT."""


@dataclasses.dataclass
class BuildSpec:
    dockerfile: str
    context: bytes | str | os.PathLike
    build_args: dict[str, str] = dataclasses.field(default_factory=dict)
    arch: str = os.uname().machine
    vcpus: int = 2
    mem_mib: int = 512
    disk_bytes: int = 4 << 30          # the root filesystem's size (sparse), <= 32 GiB
    ready_timeout: float = 300.0
    run_timeout: float = 1800.0
    context_limits: ctxmod.Limits = ctxmod.Limits()


@dataclasses.dataclass
class BuildResult:
    snapshot: pathlib.Path            # the image's snapshot (memory, vmstate, its disk layer)
    rootfs: pathlib.Path              # the flattened root filesystem, the base of every disk
    working_set: pathlib.Path | None
    config: dict                      # env, workdir, user, entrypoint, cmd, ports, labels, ...
    digest: str                       # the last step's cache key: the build's identity
    base_digest: str
    timings: dict


def _progress_nop(_: dict) -> None:
    pass


def _copy_tree(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Files keep their holes (an image's rootfs is mostly holes); directories are made."""
    from vmmd.store import copy_sparse
    for d, _, files in os.walk(src):
        rel = pathlib.Path(d).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            copy_sparse(os.path.join(d, f), str(dst / rel / f))
            os.chmod(dst / rel / f, os.stat(os.path.join(d, f)).st_mode & 0o7777)


def _file_id(path: str) -> str:
    """Which kernel (its size and first MiB): part of every step's cache key."""
    with open(path, "rb") as f:
        return f"{os.fstat(f.fileno()).st_size}-{hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]}"


def base_config(c: oci.ImageConfig) -> dfmod.ImageConfig:
    """The pulled image's config as the Dockerfile evaluator takes it."""
    env = tuple(tuple(e.split("=", 1)) if "=" in e else (e, "") for e in c.env)
    hc = None
    if c.healthcheck and c.healthcheck.get("Test"):
        ns = 1e9
        hc = dfmod.Healthcheck(tuple(c.healthcheck["Test"]),
                               interval=c.healthcheck.get("Interval", 30 * ns) / ns or 30.0,
                               timeout=c.healthcheck.get("Timeout", 30 * ns) / ns or 30.0,
                               start_period=c.healthcheck.get("StartPeriod", 0) / ns,
                               retries=int(c.healthcheck.get("Retries", 3) or 3))
    return dfmod.ImageConfig(env=env or dfmod.SCRATCH.env, workdir=c.working_dir or "/",
                             user=c.user, entrypoint=c.entrypoint, cmd=c.cmd,
                             exposed_ports=c.exposed_ports,
                             labels=tuple(sorted(c.labels.items())), healthcheck=hc)


def config_dict(c: dfmod.ImageConfig) -> dict:
    hc = c.healthcheck
    return {"env": dict(c.env), "workdir": c.workdir, "user": c.user,
            "entrypoint": list(c.entrypoint or ()), "cmd": list(c.cmd or ()),
            "exposed_ports": list(c.exposed_ports), "labels": dict(c.labels),
            "healthcheck": dataclasses.asdict(hc) if hc else None}


class Builder:
    """One build at a time per cache directory (the caller serializes builds)."""

    def __init__(self, cache: str | os.PathLike, work: str | os.PathLike,
                 progress: Callable[[dict], None] = _progress_nop, *,
                 kernel: str | None = None, initrd: str | None = None,
                 cache_max_bytes: int | None = None):
        """kernel, initrd: the guest's (default: the pinned cloud kernel and vmmd's initramfs).
        cache_max_bytes: after each build the cache's step and image entries are collected down
        to this (vmmd/images/cachegc.py); None keeps everything."""
        self.kernel, self.initrd = kernel, initrd
        self.cache_max_bytes = cache_max_bytes
        self.cache = pathlib.Path(os.path.realpath(cache))
        self.work = pathlib.Path(work)
        self.progress = progress
        for d in ("steps", "bases", "oci", "images"):
            (self.cache / d).mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)

    def say(self, **event) -> None:
        self.progress(event)

    # ---------- the base ----------

    def _base(self, spec: BuildSpec, df: dfmod.Dockerfile) -> tuple[oci.BaseImage, pathlib.Path]:
        t0 = time.monotonic()
        if df.base == "scratch":
            base = oci.scratch()
        else:
            base = oci.resolve(df.base, self.cache / "oci", arch=spec.arch)
        key = hashlib.sha256(f"{base.digest} {spec.arch} {spec.disk_bytes}".encode()).hexdigest()
        ext4 = self.cache / "bases" / f"{key[:32]}.ext4"
        if not ext4.exists():
            tree = self.work / "base-tree"
            shutil.rmtree(tree, ignore_errors=True)
            oci.unpack(base, tree)
            for d in ("proc", "sys", "dev", "run", "tmp"):
                (tree / d).mkdir(exist_ok=True)
            os.chmod(tree / "tmp", 0o1777)
            tmp = ext4.with_name(f".{ext4.name}.{os.getpid()}")
            r = subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), "-L", "vmmd-root",
                                "-E", "root_owner=0:0", str(tmp), str(spec.disk_bytes // 1024) + "k"],
                               capture_output=True, text=True)
            shutil.rmtree(tree, ignore_errors=True)
            if r.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise BuildError(f"FROM {df.base}: its files do not fit a root filesystem of "
                                 f"{spec.disk_bytes >> 20} MiB ({r.stderr.strip()[-300:]}); "
                                 "build with a larger disk")
            os.replace(tmp, ext4)
            self.say(step="FROM", log=f"{df.base}: {base.digest}, root filesystem made",
                     seconds=round(time.monotonic() - t0, 2))
        else:
            self.say(step="FROM", log=f"{df.base}: {base.digest} (cached)", cached=True,
                     seconds=round(time.monotonic() - t0, 2))
        return base, ext4

    # ---------- the steps ----------

    def _keys(self, df: dfmod.Dockerfile, ctx: ctxmod.Context, root_key: str) -> list[str]:
        keys, parent = [], root_key
        for st in df.steps:
            files = None
            if st.kind in ("COPY", "ADD"):
                files = ctx.digest(ctx.sources(list(st.op.sources), st.kind))
            parent = stepcache.step_key(parent, st, files)
            keys.append(parent)
        return keys

    def _entry(self, key: str) -> pathlib.Path:
        return self.cache / "steps" / key.split(":", 1)[1][:40]

    def _meta(self, key: str) -> dict | None:
        try:
            return json.loads((self._entry(key) / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def _commit(self, key: str, meta: dict, snap: pathlib.Path | None) -> None:
        entry = self._entry(key)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if snap is not None:
            os.rename(snap, tmp / "snap")
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, entry)

    async def _copy(self, vm: MicroVM, ctx: ctxmod.Context, st: dfmod.Step,
                    limits: ctxmod.Limits) -> None:
        """COPY/ADD: the placements as one tar, unpacked in the guest by its busybox."""
        op = st.op
        buf = io.BytesIO()
        owner = op.chown
        placements = ctx.placements(list(op.sources), op.dest, op.dest_is_dir, st.kind)
        with tarfile.open(fileobj=buf, mode="w") as tar:
            def add(path: pathlib.Path, arcname: str) -> None:
                info = tar.gettarinfo(str(path), arcname=arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if op.chmod is not None and not info.isdir():
                    info.mode = op.chmod
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
            owned = []                          # what --chown applies to
            for src, target in placements:
                if op.add and src.is_file() and not src.is_symlink() and \
                        ctxmod.archive_kind(src):
                    # unpacked into the destination, with the archive's own owners
                    try:
                        archive.add_extracted(tar, src, op.dest, limits)
                    except archive.ArchiveError as e:
                        raise BuildError(f"line {st.line}: ADD {src.name}: {e}") from None
                    continue
                owned.append(target)
                arc = target.lstrip("/")
                add(src, arc)
                if src.is_dir() and not src.is_symlink():
                    for sub in sorted(src.rglob("*")):
                        add(sub, f"{arc}/{sub.relative_to(src).as_posix()}")
        data = buf.getvalue()
        await vm.agent.write_file("/run/vmmd/copy.tar", data)
        script = f"{BB} tar -x -p -f /run/vmmd/copy.tar -C / && rm /run/vmmd/copy.tar"
        if owner and owned:
            names = " ".join(shlex.quote("/" + t.lstrip("/")) for t in owned)
            script += f" && {BB} chown -R {shlex.quote(owner)} {names}"
        r = await vm.agent.run([BB, "sh", "-c", script])
        if r.code != 0:
            raise BuildError(f"line {st.line}: {st.kind} failed in the build VM: "
                             f"{(r.stdout + r.stderr).decode(errors='replace')[-LOG_TAIL:]}")

    async def _run(self, vm: MicroVM, st: dfmod.Step, spec: BuildSpec, n: str) -> None:
        env = dict(st.env)
        p = await vm.agent.exec(list(st.op.argv), env=env, cwd=st.workdir or "/",
                                user=st.user or None, stdin=False)
        tail = bytearray()

        async def pump(stream):
            async for chunk in stream:
                tail.extend(chunk)
                del tail[:-LOG_TAIL]
                for line in chunk.decode(errors="replace").splitlines():
                    self.say(step=n, log=line)
        try:
            await asyncio.wait_for(asyncio.gather(pump(p.stdout), pump(p.stderr)),
                                   spec.run_timeout)
            status = await asyncio.wait_for(p.wait(), 60)
        except asyncio.TimeoutError:
            # what tells a command that runs on from a guest or an agent that stopped answering
            try:
                ps = await asyncio.wait_for(vm.agent.run([BB, "ps"]), 30)
                seen = (ps.stdout + ps.stderr).decode(errors="replace")[-LOG_TAIL // 2:]
            except (asyncio.TimeoutError, AgentError, OSError) as e:
                seen = f"(the agent did not answer: {e!r})"
            with contextlib.suppress(asyncio.TimeoutError, AgentError, OSError):
                await asyncio.wait_for(p.kill(), 30)
            raise BuildError(f"line {st.line}: RUN did not finish in {spec.run_timeout:g} s; "
                             f"its output ended with:\n{tail.decode(errors='replace')}\n"
                             f"the build VM's processes:\n{seen}\n"
                             f"{await asyncio.to_thread(vm.view, LOG_TAIL // 2)}") from None
        if status.code != 0:
            how = f"exit status {status.code}" if status.code is not None \
                else f"signal {status.signal}"
            raise BuildError(f"line {st.line}: RUN {st.text.split(None, 1)[-1][:200]} failed "
                             f"with {how}; its output ended with:\n"
                             f"{tail.decode(errors='replace')}")

    async def _steps(self, spec: BuildSpec, df: dfmod.Dockerfile, ctx: ctxmod.Context,
                     base_ext4: pathlib.Path, keys: list[str]) -> list[str]:
        """Runs what the cache does not hold; returns the final disk's layers, oldest first."""
        total = len(df.steps)
        hit = 0
        while hit < total and self._meta(keys[hit]) is not None:
            hit += 1
        for i in range(hit):
            st = df.steps[i]
            cachegc.touch(self._entry(keys[i]))
            self.say(step=f"{i + 1}/{total}", log=f"{st.kind} {st.text.split(None, 1)[-1][:120]}",
                     cached=True)
        meta = self._meta(keys[hit - 1]) if hit else {"layers": [], "snapshot": None}
        if hit == total:
            return meta["layers"]
        lspec = LinuxSpec(spec.arch, self._kernel(spec.arch),
                          str(self._initrd(spec.arch)), str(base_ext4), vcpus=spec.vcpus,
                          mem_mib=spec.mem_mib, net=True)
        vmdir = self.work / "build-vm"
        shutil.rmtree(vmdir, ignore_errors=True)
        t0 = time.monotonic()
        netopts = NetOptions(EgressPolicy())
        if meta["snapshot"]:
            vm = MicroVM.restore(meta["snapshot"], lspec, vmdir, network=netopts)
        else:
            vm = MicroVM.boot(lspec, vmdir, netopts)
        try:
            await vm.wait_ready(spec.ready_timeout)
            if meta["snapshot"]:
                await vm.after_restore()
            self.say(step="build VM", log=("restored from the step cache" if meta["snapshot"]
                                           else "booted"),
                     seconds=round(time.monotonic() - t0, 2))
            layers = list(meta["layers"])
            snapshot = meta["snapshot"]
            for i in range(hit, total):
                st, n = df.steps[i], f"{i + 1}/{total}"
                t1 = time.monotonic()
                self.say(step=n, log=f"{st.kind} {st.text.split(None, 1)[-1][:120]}")
                snap = None
                if st.kind == "RUN":
                    await self._run(vm, st, spec, n)
                elif st.kind in ("COPY", "ADD"):
                    await self._copy(vm, ctx, st, spec.context_limits)
                elif st.kind == "WORKDIR":
                    r = await vm.agent.run([BB, "mkdir", "-p", st.op.path])
                    if r.code != 0:
                        raise BuildError(f"line {st.line}: WORKDIR {st.op.path}: "
                                         f"{r.stderr.decode(errors='replace')}")
                if st.changes_files:
                    snap = self.work / f"snap-{i}"
                    shutil.rmtree(snap, ignore_errors=True)
                    try:
                        await asyncio.wait_for(vm.snapshot(snap, keep_running=True),
                                               spec.ready_timeout)
                    except asyncio.TimeoutError:
                        view = await asyncio.to_thread(vm.view, LOG_TAIL // 2)
                        raise BuildError(f"line {st.line}: snapshotting the build VM after "
                                         f"{st.kind} took over {spec.ready_timeout:g} s\n"
                                         f"{view}") from None
                    snapshot = str(self._entry(keys[i]) / "snap")
                    layer = snap / "virtio-blk.0.disk"
                    if layer.exists():
                        layers.append(str(self._entry(keys[i]) / "snap" / layer.name))
                self._commit(keys[i], {"layers": layers, "snapshot": snapshot,
                                       "line": st.line, "kind": st.kind}, snap)
                self.say(step=n, log="done", seconds=round(time.monotonic() - t1, 2))
            return layers
        except AgentError as e:
            raise BuildError(f"the build VM's agent failed: {e}; console:\n"
                             f"{vm.console_text()[-LOG_TAIL:]}") from None
        finally:
            vm.close()

    def _initrd(self, arch: str) -> pathlib.Path:
        if self.initrd:
            return pathlib.Path(self.initrd)
        from vmmd.images import initramfs
        return initramfs.build(arch)

    def _kernel(self, arch: str) -> str:
        return self.kernel or str(paths.guest_kernel(arch).image)

    # ---------- the image ----------

    async def _ready(self, vm: MicroVM, cfg: dfmod.ImageConfig, timeout: float) -> str:
        """Waits until the app is ready; returns how it was judged."""
        deadline = time.monotonic() + timeout
        hc = cfg.healthcheck
        tcp = [int(p.split("/")[0]) for p in cfg.exposed_ports if p.endswith("/tcp")]
        while True:
            if hc and hc.test and hc.test[0] != "NONE":
                argv = list(hc.test[1:]) if hc.test[0] == "CMD" else ["/bin/sh", "-c", hc.test[1]]
                try:
                    r = await asyncio.wait_for(vm.agent.run(argv, env=dict(cfg.env)),
                                               max(hc.timeout, 1.0))
                    if r.code == 0:
                        return "HEALTHCHECK passed"
                except (asyncio.TimeoutError, AgentError):
                    pass
            elif tcp:
                try:
                    reader, writer = await vm.agent.forward(tcp[0])
                    writer.close()
                    return f"port {tcp[0]} accepts"
                except (AgentError, OSError):
                    pass
            else:
                r = await vm.agent.run([BB, "sh", "-c", "kill -0 $(cat /run/vmmd/app.pid)"])
                if r.code == 0:
                    return "the process is running"
            if time.monotonic() > deadline:
                log = await self._app_log(vm)
                raise BuildError(f"the application was not ready within {timeout:g} s; its log "
                                 f"ends with:\n{log}")
            await asyncio.sleep(0.5)

    async def _app_log(self, vm: MicroVM) -> str:
        try:
            return (await vm.agent.read_bytes(APP_LOG))[-LOG_TAIL:].decode(errors="replace")
        except (AgentError, OSError) as e:
            return f"(no log: {e})"

    async def _start_app(self, vm: MicroVM, cfg: dfmod.ImageConfig) -> None:
        argv = list(cfg.entrypoint or ()) + list(cfg.cmd or ())
        if not argv:
            return
        script = (f'echo $$ > /run/vmmd/app.pid; exec "$@" > {APP_LOG} 2>&1 < /dev/null')
        r = await vm.agent.run(
            [BB, "sh", "-c", f'{BB} setsid {BB} sh -c \'{script}\' app "$@" & ', "start", *argv],
            env=dict(cfg.env), cwd=cfg.workdir or "/", user=cfg.user or None)
        if r.code != 0:
            raise BuildError(f"starting {argv}: {(r.stdout + r.stderr).decode()[-LOG_TAIL:]}")

    async def build(self, spec: BuildSpec, out: str | os.PathLike) -> BuildResult:
        """Builds into the new directory `out`: snapshot/, rootfs.ext4, working_set."""
        out = pathlib.Path(out)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        if not 0 < spec.disk_bytes <= MAX_DISK:
            raise BuildError(f"disk of {spec.disk_bytes} bytes: use 1 byte .. 32 GiB")
        df = dfmod.parse(spec.dockerfile, spec.build_args)
        for w in df.warnings:
            self.say(step="Dockerfile", log=f"warning: {w}")
        base, base_ext4 = self._base(spec, df)
        if not base.is_scratch:
            df = df.with_base(base_config(base.config))
        timings["base_s"] = time.monotonic() - t0
        with ctxmod.Context.from_zip(spec.context, spec.context_limits) as ctx:
            # the base file itself too: step layers are block deltas over exactly that file,
            # and one made again by mke2fs differs (UUID, hash seed), so its steps must miss
            root_key = "sha256:" + hashlib.sha256(json.dumps({
                "base": base.digest, "arch": spec.arch, "disk": spec.disk_bytes,
                "base_fs": _file_id(str(base_ext4)),
                "kernel": _file_id(self._kernel(spec.arch)),
                "initrd": self._initrd(spec.arch).name}).encode()).hexdigest()
            keys = self._keys(df, ctx, root_key)
            t1 = time.monotonic()
            layers = await self._steps(spec, df, ctx, base_ext4, keys)
            timings["steps_s"] = time.monotonic() - t1
        digest = keys[-1] if keys else root_key
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # the initialized image, cached by everything that makes it: an unchanged rebuild
        # runs no VM at all
        made = self.cache / "images" / hashlib.sha256(json.dumps(
            [digest, spec.vcpus, spec.mem_mib, _file_id(self._kernel(spec.arch)),
             self._initrd(spec.arch).name]).encode()).hexdigest()[:40]
        try:
            if (made / "done").exists():
                cachegc.touch(made)
                _copy_tree(made, tmp)
                (tmp / "done").unlink()
                result = (tmp / "working_set").exists()
                self.say(step="initialize", log="the initialized image is cached", cached=True)
            else:
                t1 = time.monotonic()
                flatten.flatten(base_ext4, layers, tmp / "rootfs.ext4")
                timings["flatten_s"] = time.monotonic() - t1
                result = await self._initialize(spec, df.config, tmp, timings)
                part = made.with_name(f".{made.name}.{os.getpid()}")
                shutil.rmtree(part, ignore_errors=True)
                _copy_tree(tmp, part)
                (part / "done").touch()
                shutil.rmtree(made, ignore_errors=True)
                os.rename(part, made)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.cache_max_bytes is not None:
            gone = cachegc.collect(self.cache, self.cache_max_bytes,
                                   keep={self._entry(k) for k in keys} | {made})
            if gone:
                self.say(step="cache", log=f"collected {len(gone)} least recently used "
                                           f"entries (the limit is {self.cache_max_bytes} bytes)")
        timings["total_s"] = time.monotonic() - t0
        return BuildResult(out / "snapshot", out / "rootfs.ext4",
                           out / "working_set" if result else None, config_dict(df.config),
                           digest, base.digest, {k: round(v, 3) for k, v in timings.items()})

    async def _initialize(self, spec: BuildSpec, cfg: dfmod.ImageConfig, tmp: pathlib.Path,
                          timings: dict) -> bool:
        """Boots the rootfs, starts the app, waits for it, snapshots; then the validation run.
        Returns whether a working set was recorded."""
        lspec = LinuxSpec(spec.arch, self._kernel(spec.arch),
                          str(self._initrd(spec.arch)), str(tmp / "rootfs.ext4"),
                          vcpus=spec.vcpus, mem_mib=spec.mem_mib, net=True)
        t0 = time.monotonic()
        vm = MicroVM.boot(lspec, tmp / "init-vm", NetOptions(EgressPolicy()))
        try:
            await vm.wait_ready(spec.ready_timeout)
            timings["init_boot_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            await self._start_app(vm, cfg)
            how = await self._ready(vm, cfg, spec.ready_timeout)
            timings["app_ready_s"] = time.monotonic() - t1
            self.say(step="initialize", log=f"ready: {how}",
                     seconds=round(time.monotonic() - t0, 2))
            t1 = time.monotonic()
            await asyncio.wait_for(vm.snapshot(tmp / "snapshot", keep_running=False),
                                   spec.ready_timeout)
            timings["snapshot_s"] = time.monotonic() - t1
        except (asyncio.TimeoutError, AgentError) as e:
            raise BuildError(f"initializing the image: the VM stopped answering ({e!r})\n"
                             f"{await asyncio.to_thread(vm.view, LOG_TAIL // 2)}") from None
        finally:
            vm.close()
        shutil.rmtree(tmp / "init-vm", ignore_errors=True)
        # validation: restore once, as a session would, and record what it touches
        t1 = time.monotonic()
        v = MicroVM.restore(tmp / "snapshot", lspec, tmp / "validate-vm", backend=Backend.UFFD,
                            network=NetOptions(EgressPolicy()))
        try:
            await v.wait_ready(spec.ready_timeout)
            await asyncio.wait_for(v.after_restore(), spec.ready_timeout)
            await self._ready(v, cfg, spec.ready_timeout)
            tcp = [int(p.split("/")[0]) for p in cfg.exposed_ports if p.endswith("/tcp")]
            if tcp:        # a first request, as a user's would be
                try:
                    reader, writer = await v.agent.forward(tcp[0])
                    writer.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    await writer.drain()
                    await asyncio.wait_for(reader.read(65536), 30)
                    writer.close()
                except (AgentError, OSError, asyncio.TimeoutError):
                    pass
            v.vm.save_working_set(tmp / "working_set")
            timings["validate_s"] = time.monotonic() - t1
            self.say(step="validate", log="restored, ready, working set recorded",
                     seconds=round(time.monotonic() - t1, 2))
        except (asyncio.TimeoutError, AgentError) as e:
            raise BuildError(f"validating the image: the restored VM stopped answering "
                             f"({e!r})\n{await asyncio.to_thread(v.view, LOG_TAIL // 2)}") from None
        finally:
            v.close()
        shutil.rmtree(tmp / "validate-vm", ignore_errors=True)
        return True


def main() -> int:
    """`python -m vmmd.images.build SPEC.json`: the daemon's build process. The spec names the
    Dockerfile text, the context zip's path, build args, arch, cache, work and output
    directories. Prints one JSON object per line: {"progress": {...}}, then {"result": {...}}
    or {"error": {"message": ..., "invalid": bool}}."""
    import sys
    spec = json.loads(open(sys.argv[1]).read())

    def emit(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    b = Builder(spec["cache"], spec["work"], lambda ev: emit({"progress": ev}),
                kernel=spec.get("kernel"), initrd=spec.get("initrd"),
                cache_max_bytes=spec.get("cache_max_bytes"))
    bs = BuildSpec(spec["dockerfile"], spec["context"], dict(spec.get("build_args") or {}),
                   arch=spec.get("arch") or os.uname().machine,
                   mem_mib=int(spec.get("mem_mib") or 512),
                   disk_bytes=int(spec.get("disk_bytes") or 4 << 30))
    try:
        r = asyncio.run(b.build(bs, spec["out"]))
    except (InvalidArgument, ValueError) as e:   # the user's to fix
        emit({"error": {"message": str(e), "invalid": True}})
        return 1
    except Exception as e:  # noqa: BLE001 - reported to the daemon, which says it failed
        emit({"error": {"message": f"{type(e).__name__}: {e}", "invalid": False}})
        return 2
    emit({"result": {"snapshot": str(r.snapshot), "rootfs": str(r.rootfs),
                     "working_set": str(r.working_set) if r.working_set else "",
                     "config": r.config, "digest": r.digest, "base_digest": r.base_digest,
                     "timings": r.timings}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
