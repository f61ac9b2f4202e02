"""A Linux MicroVM in this process: the guest kernel, vmmd's initramfs and agent, a root disk
(read-only base + this VM's copy-on-write layer), virtio-vsock bridged to a Unix socket
(Firecracker's hybrid protocol) for the agent, virtio-rng, and on x86_64 VMGenID.

    vm = MicroVM.boot(LinuxSpec(arch, kernel, initrd, rootfs), workdir)
    await vm.wait_ready(60)                       # the agent answers
    await vm.agent.run(["uname", "-m"])
    await vm.snapshot(snapdir)                    # freeze, pause, snapshot, thaw, resume
    copy = MicroVM.restore(snapdir, spec, otherdir)
    await copy.wait_ready(10); await copy.agent.sync_after_restore()

Workdir holds what belongs to one VM: `vsock.sock` (and `vsock.sock_<port>` listeners for
guest-initiated connections), `disk.overlay`, `console.log`. docs/microvm.md has the layout of
the guest and what a snapshot holds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import select
import threading
import time

from vmmd.agent import Agent, AgentError
from vmmd.native import VM, Backend, Device, DeviceType

VSOCK_CID = 3
CONSOLE = {"x86_64": "console=ttyS0 reboot=k pci=off", "aarch64": "console=ttyS0"}


@dataclasses.dataclass(frozen=True)
class LinuxSpec:
    """What a Linux MicroVM boots: everything here is shared by every VM of one image."""
    arch: str
    kernel: str                      # x86_64: ELF vmlinux; aarch64: Image
    initrd: str                      # vmmd.images.initramfs
    rootfs: str | None = None        # ext4 image, read-only base of each VM's disk
    vcpus: int = 2
    mem_mib: int = 256
    disk_bytes: int = 0              # 0: the base image's size
    cmdline: str = "quiet loglevel=4 panic=-1"

    def full_cmdline(self) -> str:
        root = " root=/dev/vda" if self.rootfs else ""
        return f"{CONSOLE[self.arch]} {self.cmdline}{root}"


def linux_devices(arch: str, workdir: str | os.PathLike, rootfs: str | None = None,
                  disk_bytes: int = 0) -> tuple[Device, ...]:
    """A Linux MicroVM's devices; its files live in `workdir`: the disk's writable layer
    (disk.overlay) and the vsock socket (vsock.sock) the agent is reached through. A restore
    passes the same list with its own workdir."""
    w = pathlib.Path(workdir)
    devs = [Device(DeviceType.VIRTIO_VSOCK, path=str(w / "vsock.sock"), cid=VSOCK_CID),
            Device(DeviceType.VIRTIO_RNG)]
    if rootfs:
        devs.insert(0, Device(DeviceType.VIRTIO_BLK, path=rootfs,
                              overlay=str(w / "disk.overlay"), size=disk_bytes))
    if arch == "x86_64":
        devs.append(Device(DeviceType.VMGENID))
    return tuple(devs)


class Console(threading.Thread):
    """Drains the guest's serial output into console.log, so it is never dropped and can be
    read after the VM is gone."""

    def __init__(self, vm: VM, path: pathlib.Path):
        super().__init__(daemon=True, name="console")
        self.vm, self.path, self.stopping = vm, path, False
        self.file = open(path, "ab", buffering=0)

    def run(self) -> None:
        fd = self.vm.serial_fd()
        while not self.stopping:
            select.select([fd], [], [], 0.2)
            try:
                data = self.vm.serial_read()
            except OSError:
                break
            if data:
                self.file.write(data)

    def stop(self) -> None:
        self.stopping = True
        self.join(5)
        self.file.close()


class MicroVM:
    """One Linux MicroVM. Made by `boot` or `restore`; `close()` ends it."""

    def __init__(self, vm: VM, spec: LinuxSpec, workdir: pathlib.Path, started: float):
        self.vm, self.spec, self.workdir, self.started = vm, spec, workdir, started
        self.vsock_path = workdir / "vsock.sock"
        self.agent = Agent.hybrid(self.vsock_path)
        self.console_path = workdir / "console.log"
        self._console = Console(vm, self.console_path)
        self._console.start()

    @staticmethod
    def devices(spec: LinuxSpec, workdir: pathlib.Path) -> tuple[Device, ...]:
        return linux_devices(spec.arch, workdir, spec.rootfs, spec.disk_bytes)

    @staticmethod
    def _workdir(workdir) -> pathlib.Path:
        w = pathlib.Path(workdir)
        w.mkdir(parents=True, exist_ok=True)
        for stale in ("vsock.sock", "disk.overlay"):
            (w / stale).unlink(missing_ok=True)
        return w

    @classmethod
    def boot(cls, spec: LinuxSpec, workdir: str | os.PathLike) -> "MicroVM":
        w = cls._workdir(workdir)
        t0 = time.monotonic()
        vm = VM.create(spec.vcpus, spec.mem_mib << 20, track_dirty=True,
                       devices=cls.devices(spec, w))
        try:
            vm.load_linux(spec.kernel, spec.initrd, spec.full_cmdline())
            vm.start()
        except BaseException:
            vm.close()
            raise
        return cls(vm, spec, w, t0)

    @classmethod
    def restore(cls, snapshot: str | os.PathLike, spec: LinuxSpec, workdir: str | os.PathLike,
                backend: Backend = Backend.MMAP) -> "MicroVM":
        w = cls._workdir(workdir)
        t0 = time.monotonic()
        vm = VM.restore(snapshot, backend, track_dirty=True, devices=cls.devices(spec, w))
        try:
            vm.start()
        except BaseException:
            vm.close()
            raise
        return cls(vm, spec, w, t0)

    def alive(self) -> bool:
        return self.vm.state.name in ("RUNNING", "PAUSED")

    async def wait_ready(self, timeout: float) -> dict:
        """Pings the agent until it answers; raises with the console's tail if the VM stops or
        the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.agent.ping()
            except (AgentError, OSError) as e:
                last = e
            if not self.alive() or time.monotonic() > deadline:
                info = self.vm.wait(0) if not self.alive() else None
                raise AgentError(f"no agent after {time.monotonic() - self.started:.1f} s "
                                 f"({last}); VM: {info or self.vm.state.name}; console:\n"
                                 f"{self.console_text()[-4000:]}")
            await asyncio.sleep(0.02)

    async def snapshot(self, directory: str | os.PathLike, *, keep_running: bool = True) -> None:
        """Freezes the guest's filesystems through the agent (so the disk layer holds what the
        guest wrote), pauses, snapshots, then resumes and thaws, or leaves the VM paused."""
        frozen = await self.agent.freeze(timeout=600)
        try:
            await asyncio.to_thread(self.vm.pause)
            await asyncio.to_thread(self.vm.snapshot, directory)
        finally:
            if keep_running and self.vm.state.name == "PAUSED":
                self.vm.resume()
                await frozen.thaw()
            await frozen.conn.aclose()

    def console_text(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        self.vm.close()
        self._console.stop()
