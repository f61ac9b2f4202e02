"""A Linux MicroVM in this process: the guest kernel, vmmd's initramfs and agent, a root disk
(read-only base + this VM's copy-on-write layer), virtio-vsock bridged to a Unix socket
(Firecracker's hybrid protocol) for the agent, virtio-rng, on x86_64 VMGenID, and with
`LinuxSpec.net` a virtio-net NIC behind its own passt (vmmd.net, docs/network.md).

    vm = MicroVM.boot(LinuxSpec(arch, kernel, initrd, rootfs), workdir)
    await vm.wait_ready(60)                       # the agent answers
    await vm.agent.run(["uname", "-m"])
    await vm.snapshot(snapdir)                    # freeze, pause, snapshot, thaw, resume
    copy = MicroVM.restore(snapdir, spec, otherdir)
    await copy.wait_ready(10); await copy.after_restore()    # clock, entropy, network

Workdir holds what belongs to one VM: `vsock.sock` (and `vsock.sock_<port>` listeners for
guest-initiated connections), `disk.overlay`, `console.log`, and with a network passt's
`net.sock` and `passt.log`. docs/microvm.md has the layout of
the guest and what a snapshot holds.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import select
import struct
import threading
import time

from vmmd import irqview, net
from vmmd.agent import Agent, AgentError, ProtocolError
from vmmd.native import VM, Backend, Device, DeviceType, VmmError

VSOCK_CID = 3
NET_ID = 0
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
    net: bool = False                # a NIC (DHCP from its passt at boot)

    def full_cmdline(self) -> str:
        root = " root=/dev/vda" if self.rootfs else ""
        nic = " vmmd.net=dhcp" if self.net else ""
        return f"{CONSOLE[self.arch]} {self.cmdline}{root}{nic}"


@dataclasses.dataclass(frozen=True)
class NetOptions:
    """One MicroVM's network, chosen at boot or restore (each copy its own): the egress policy
    and the guest TCP ports the host reaches on its loopback (`MicroVM.host_port`)."""
    policy: net.EgressPolicy = net.EgressPolicy()
    expose: tuple[int, ...] = ()


def linux_devices(arch: str, workdir: str | os.PathLike, rootfs: str | None = None,
                  disk_bytes: int = 0, mac: bytes | None = None) -> tuple[Device, ...]:
    """A Linux MicroVM's devices; its files live in `workdir`: the disk's writable layer
    (disk.overlay), the vsock socket (vsock.sock) the agent is reached through, and with a MAC
    the NIC's backend socket (net.sock, made by passt). A restore passes the same list with its
    own workdir and MAC."""
    w = pathlib.Path(workdir)
    devs = [Device(DeviceType.VIRTIO_VSOCK, path=str(w / "vsock.sock"), cid=VSOCK_CID),
            Device(DeviceType.VIRTIO_RNG)]
    if rootfs:
        devs.insert(0, Device(DeviceType.VIRTIO_BLK, path=rootfs,
                              overlay=str(w / "disk.overlay"), size=disk_bytes))
    if arch == "x86_64":
        devs.append(Device(DeviceType.VMGENID))
    if mac is not None:
        devs.append(Device(DeviceType.VIRTIO_NET, id=NET_ID, path=str(w / "net.sock"), mac=mac,
                           mtu=net.MTU))
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


def _wants(q: dict) -> str:
    """When the driver wants its next interrupt: `!` it wants none (avail flags), `@n` once the
    used index passes n (EVENT_IDX; Linux parks it at 0 while it keeps interrupts off)."""
    if q["used_event"] >= 0:
        return f"@{q['used_event']}"
    return "!" if q["avail_flags"] & 1 else ""


class MicroVM:
    """One Linux MicroVM. Made by `boot` or `restore`; `close()` ends it."""

    def __init__(self, vm: VM, spec: LinuxSpec, workdir: pathlib.Path, started: float,
                 network: "Network | None" = None):
        self.vm, self.spec, self.workdir, self.started = vm, spec, workdir, started
        self.network = network
        self.vsock_path = workdir / "vsock.sock"
        self.agent = Agent.hybrid(self.vsock_path)
        self.console_path = workdir / "console.log"
        self._console = Console(vm, self.console_path)
        self._console.start()

    @staticmethod
    def devices(spec: LinuxSpec, workdir: pathlib.Path,
                mac: bytes | None = None) -> tuple[Device, ...]:
        return linux_devices(spec.arch, workdir, spec.rootfs, spec.disk_bytes, mac)

    @staticmethod
    def _workdir(workdir) -> pathlib.Path:
        w = pathlib.Path(workdir)
        w.mkdir(parents=True, exist_ok=True)
        for stale in ("vsock.sock", "disk.overlay", "net.sock"):
            (w / stale).unlink(missing_ok=True)
        return w

    @classmethod
    def _make(cls, spec: LinuxSpec, workdir, options: "NetOptions | None", make_vm) -> "MicroVM":
        w = cls._workdir(workdir)
        t0 = time.monotonic()
        network = Network.start(w, options or NetOptions()) if spec.net else None
        try:
            vm = make_vm(cls.devices(spec, w, network.mac if network else None))
        except BaseException:
            if network:
                network.stop()
            raise
        try:
            if network:
                network.attach(vm)
            vm.start()
        except BaseException:
            vm.close()
            if network:
                network.stop()
            raise
        return cls(vm, spec, w, t0, network)

    @classmethod
    def boot(cls, spec: LinuxSpec, workdir: str | os.PathLike,
             network: "NetOptions | None" = None) -> "MicroVM":
        def make(devices):
            vm = VM.create(spec.vcpus, spec.mem_mib << 20, track_dirty=True, devices=devices)
            try:
                vm.load_linux(spec.kernel, spec.initrd, spec.full_cmdline())
            except BaseException:
                vm.close()
                raise
            return vm
        return cls._make(spec, workdir, network, make)

    @classmethod
    def restore(cls, snapshot: str | os.PathLike, spec: LinuxSpec, workdir: str | os.PathLike,
                backend: Backend = Backend.MMAP,
                network: "NetOptions | None" = None,
                working_set: str | os.PathLike | None = None) -> "MicroVM":
        """working_set (uffd only): the pages to install before the guest runs, as recorded
        by a validation run (vmmd/images/build.py)."""
        return cls._make(spec, workdir, network, lambda devices: VM.restore(
            snapshot, backend, track_dirty=True, devices=devices, working_set=working_set))

    async def after_restore(self) -> dict:
        """What a restored copy needs before it serves: the guest's clock and entropy, and its
        network (this copy's MAC, a new lease from its own passt)."""
        try:
            sync = await self.agent.sync_after_restore(reset_tcp=self.network is not None)
        except ProtocolError:
            # the guest's handling of the restore's TRANSPORT_RESET can land on this very
            # connection (vmmd.agent.Agent.hybrid); syncing twice is harmless
            await asyncio.sleep(0.1)
            sync = await self.agent.sync_after_restore(reset_tcp=self.network is not None)
        if self.network:
            r = await self.agent.run(["/run/vmmd/net", "restored", net.mac_text(self.network.mac)])
            if r.code != 0:
                raise AgentError(f"the guest could not bring its network back after the restore "
                                 f"({r.exit}): {(r.stdout + r.stderr).decode()[-2000:]}")
            sync["network"] = r.stdout.decode().strip()
        return sync

    def set_egress(self, policy: net.EgressPolicy) -> None:
        """Applies a new egress policy to the running VM; the next frame obeys it."""
        if not self.network:
            raise ValueError("this MicroVM has no network")
        self.network.set_policy(self.vm, policy)

    def host_port(self, guest_port: int) -> int:
        """The host loopback port that reaches `guest_port` in the guest (NetOptions.expose)."""
        if self.network:
            for h, g in self.network.passt.forwards.items():
                if g == guest_port:
                    return h
        raise KeyError(f"guest port {guest_port} is not exposed")

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

    def view(self, console_tail: int = 2000) -> str:
        """A VM that stopped answering, seen from the VMM (for an error message): whether it
        still runs (and why not), whether its vCPUs still exit (two readings 2 s apart), its
        virtio queues, the host's free memory and disk, its console's end. Blocks for 2 s."""
        try:
            state = self.vm.state.name
            if state not in ("RUNNING", "PAUSED"):
                state += f" ({self.vm.wait(0).message})"
            a = self.vm.stats()
            time.sleep(2)
            b = self.vm.stats()
            exits = {k: b[k] - a[k]
                     for k in ("exits_total", "exits_io", "exits_mmio", "exits_intr")}
            devices, lines = [], {}
            for t in (DeviceType.VIRTIO_BLK, DeviceType.VIRTIO_VSOCK, DeviceType.VIRTIO_NET):
                with contextlib.suppress(VmmError):      # a device this VM lacks
                    d = self.vm.virtio_info(t)
                    lines[t.name] = d["gsi"]
                    qs = " ".join(f"q{i}:{q['avail_idx']}/{q['last_avail']}/{q['used_idx']}"
                                  f"{_wants(q)}" for i, q in enumerate(d["queues"]) if q["ready"])
                    devices.append(f"{t.name}: status {d['status']:#x}"
                                   f"{' BROKEN: ' + d['why'] if d['broken'] else ''}, "
                                   f"passes {d['passes']}, interrupts {d['interrupts']}, "
                                   f"avail/taken/used@wanted {qs}")
            if self.spec.arch == "x86_64" and state == "RUNNING":
                devices.append(self._interrupts(lines))
        except Exception as e:  # noqa: BLE001 - a diagnosis must not hide the error it explains
            state, exits, devices = f"(unreadable: {e})", {}, []
        try:
            with open("/proc/meminfo") as f:
                mem = {ln.split(":")[0]: int(ln.split()[1]) >> 10 for ln in f}
            host = (f"this host: {mem.get('MemAvailable')} MiB available of "
                    f"{mem.get('MemTotal')}, shmem {mem.get('Shmem')} MiB; ")
            st = os.statvfs(self.console_path.parent)
            host += f"{st.f_bavail * st.f_frsize >> 20} MiB free beside the VM's files"
        except (OSError, ValueError, AttributeError) as e:
            host = f"this host: (unreadable: {e})"
        return (f"the VM: {state}; vCPU exits in 2 s: {exits}\n" + "\n".join(devices) +
                f"\n{host}\nits console ended with:\n{self.console_text()[-console_tail:]}")

    def _interrupts(self, lines: dict[str, int]) -> str:
        """The guest's interrupt state, read in a pause (the VM runs on after it)."""
        try:
            self.vm.pause()
        except VmmError as e:
            return f"interrupt state: cannot pause: {e}"
        try:
            return irqview.describe(self.vm.state_blob(), lines)
        except (VmmError, ValueError, KeyError, IndexError, struct.error) as e:
            return f"interrupt state: unreadable: {e}"
        finally:
            with contextlib.suppress(VmmError):
                self.vm.resume()

    def console_text(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        self.vm.close()
        self._console.stop()
        if self.network:
            self.network.stop()


class Network:
    """A MicroVM's NIC on the host side: its MAC, its passt, its policy."""

    def __init__(self, passt: net.Passt, mac: bytes, options: NetOptions):
        self.passt, self.mac, self.options = passt, mac, options

    @classmethod
    def start(cls, workdir: pathlib.Path, options: NetOptions) -> "Network":
        options.policy.validate()     # a bad policy fails before anything starts
        return cls(net.Passt(workdir, options.expose).start(), net.random_mac(), options)

    def attach(self, vm: VM) -> None:
        self.set_policy(vm, self.options.policy)

    def set_policy(self, vm: VM, policy: net.EgressPolicy) -> None:
        rules, default_allow = policy.compile(self.passt.host, tuple(self.passt.forwards.values()))
        vm.net_set_policy(NET_ID, rules, default_allow)
        self.options = dataclasses.replace(self.options, policy=policy)

    def stop(self) -> None:
        self.passt.stop()
