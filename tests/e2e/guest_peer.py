"""A peer VMM for guest tests and benchmarks: Debian's QEMU booting the guest kernel, our
initramfs and agent, with vhost-vsock, virtio-blk and virtio-rng on virtio-mmio. Runs inside the
emulated KVM hosts (docs/guest.md says which flags work and what they cost).

    x86_64   qemu-system-x86_64 -M microvm,acpi=on (virtio-mmio listed in the DSDT as LNRO0005)
             booting vmlinux through its PVH entry
    aarch64  qemu-system-aarch64 -M virt,gic-version=3 -cpu host (virtio-mmio in the FDT)

The test root filesystem is vmmd.images.rootfs.busybox_rootfs.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

GUEST_CID = 3


def guest_from_env(disk: str = "/tmp/guest-root.ext4") -> tuple[str, str, str]:
    """The guest the testhost fixture built for this host (VMMD_GUEST_KERNEL, _INITRD, _DISK):
    its kernel, its initrd, and a copy of its disk at `disk` that the test may write to."""
    shutil.copyfile(os.environ["VMMD_GUEST_DISK"], disk)
    return os.environ["VMMD_GUEST_KERNEL"], os.environ["VMMD_GUEST_INITRD"], disk


def qemu_command(arch: str, kernel: str, initrd: str, *, cid: int = GUEST_CID, mem_mb: int = 256,
                 cpus: int = 2, disk: str | None = None, console: str, qmp: str | None = None,
                 append: str = "", incoming: str | None = None,
                 net_socket: str | None = None) -> list[str]:
    if arch == "x86_64":
        # no PIC/PIT: the guest uses the LAPIC timer and kvmclock; no PCI at all on microvm
        cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=on,pit=off,pic=off,rtc=on",
               "-cpu", "host"]
        tty = "ttyS0"
    elif arch == "aarch64":
        cmd = ["qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", "host"]
        tty = "ttyAMA0"
    else:
        raise ValueError(f"unknown arch {arch}")
    cmdline = f"console={tty} quiet loglevel=4 panic=-1 {append}"
    if disk:
        cmdline += " root=/dev/vda"
    if net_socket:
        cmdline += " vmmd.net=dhcp"
    cmd += ["-accel", "kvm", "-smp", str(cpus), "-m", str(mem_mb), "-nodefaults",
            "-no-user-config", "-nographic", "-no-reboot", "-serial", f"file:{console}",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline.strip(),
            "-device", f"vhost-vsock-device,guest-cid={cid}", "-device", "virtio-rng-device"]
    if disk:
        cmd += ["-drive", f"id=root,file={disk},format=raw,if=none",
                "-device", "virtio-blk-device,drive=root"]
    if net_socket:     # passt's socket, as vmmd's NIC uses it (docs/network.md)
        cmd += ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={net_socket}",
                "-device", "virtio-net-device,netdev=n0"]
    if qmp:
        cmd += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", incoming]
    return cmd


class QemuGuest:
    """One guest under QEMU. start(), then wait for the agent with vmmd.agent; stop() kills.
    save() snapshots (QEMU exits), restore() starts a new QEMU from such a snapshot."""
    vmm = "qemu"

    def __init__(self, arch: str, kernel: str, initrd: str, *, disk: str | None = None,
                 workdir: str | None = None, expose: tuple[int, ...] | None = None, **kw):
        """expose: a NIC behind a passt of its own (None: no NIC), these guest ports forwarded
        to the host's loopback (`host_port`)."""
        self.arch = arch
        self.expose = expose
        self.passt = None
        self.kernel, self.initrd, self.disk = kernel, initrd, disk
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="guest-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console = self.workdir / "console.log"
        self.qmp_path = self.workdir / "qmp.sock"
        self.kw = kw
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self, incoming: str | None = None) -> None:
        """Boots, or with `incoming` ("exec:cat FILE") restores what save() wrote."""
        self.qmp_path.unlink(missing_ok=True)
        net_socket = None
        if self.expose is not None:
            from vmmd.net import Passt
            self.passt = Passt(self.workdir, self.expose).start()
            net_socket = str(self.passt.socket)
        cmd = qemu_command(self.arch, self.kernel, self.initrd, disk=self.disk,
                           console=str(self.console), qmp=str(self.qmp_path), incoming=incoming,
                           net_socket=net_socket, **self.kw)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def restore(self, snapshot: str) -> None:
        """Starts from what save() wrote, on a copy of the disk saved with it."""
        if self.disk:
            shutil.copyfile(f"{snapshot}.disk", self.disk)
        self.start(incoming=f"exec:cat {snapshot}")

    @property
    def agent(self):
        from vmmd.agent import Agent
        return Agent.vsock(self.kw.get("cid", GUEST_CID))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory(self) -> dict[str, int]:
        """The QEMU process's resident and private memory, bytes (smaps_rollup)."""
        return smaps_rollup(self.proc.pid)

    def host_port(self, guest_port: int) -> int:
        return {g: h for h, g in self.passt.forwards.items()}[guest_port]

    def stop(self) -> str:
        """Kills QEMU (and its passt); returns what it printed."""
        if self.passt:
            self.passt.stop()
            self.passt = None
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.kill()
        out = self.proc.communicate()[0].decode(errors="replace")
        self.proc = None
        return out

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def qmp(self, *commands: dict, timeout: float = 30.0) -> list[dict]:
        """Runs QMP commands on a fresh connection; returns their replies."""
        deadline = time.monotonic() + timeout
        while not self.qmp_path.exists():
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError(f"no QMP socket: {self.stop()}")
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(str(self.qmp_path))
        f = s.makefile("rwb")

        def reply() -> dict:
            while True:
                msg = json.loads(f.readline())
                if "event" not in msg:
                    return msg
        reply()                                             # greeting
        out = []
        for cmd in [{"execute": "qmp_capabilities"}, *commands]:
            f.write(json.dumps(cmd).encode() + b"\n")
            f.flush()
            r = reply()
            if "error" in r:
                raise RuntimeError(f"QMP {cmd['execute']}: {r['error']}")
            out.append(r)
        s.close()
        return out[1:]

    def save(self, path: str, timeout: float = 300.0) -> float:
        """Migrates the running guest to a file (QEMU's snapshot-to-file); QEMU then exits.
        Returns the seconds it took."""
        t0 = time.monotonic()
        self.qmp({"execute": "migrate", "arguments": {"uri": f"exec:cat > {path}"}})
        deadline = t0 + timeout
        while True:
            st = self.qmp({"execute": "query-migrate"})[0]["return"].get("status")
            if st == "completed":
                break
            if st in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RuntimeError(f"migration to {path}: {st}")
            time.sleep(0.1)
        took = time.monotonic() - t0
        self.stop()
        if self.disk:           # the snapshot's disk: each restore writes a copy of its own
            shutil.copyfile(self.disk, f"{path}.disk")
        return took


class VmmdGuest:
    """The same guest in vmmd's VMM (vmmd.microvm, in this process): the same interface as
    QemuGuest. The disk is the image as a read-only base plus a copy-on-write layer per VM; a
    snapshot is a directory holding memory, vmstate and the sealed disk layer."""
    vmm = "vmmd"

    def __init__(self, arch: str, kernel: str, initrd: str, *, disk: str | None = None,
                 workdir: str | None = None, cpus: int = 2, mem_mb: int = 256,
                 expose: tuple[int, ...] | None = None, egress=None):
        """expose: a NIC (None: none) with these guest ports forwarded to the host; egress: its
        policy (default: allow all but the protected ranges)."""
        from vmmd.microvm import LinuxSpec, NetOptions
        from vmmd.net import EgressPolicy
        self.arch, self.kernel, self.initrd, self.disk = arch, kernel, initrd, disk
        self.spec = LinuxSpec(arch, kernel, initrd, disk, vcpus=cpus, mem_mib=mem_mb,
                              net=expose is not None)
        self.net = None if expose is None else NetOptions(egress or EgressPolicy(), tuple(expose))
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="guest-"))
        self.mvm = None
        self.started = 0.0

    def start(self) -> None:
        from vmmd.microvm import MicroVM
        self.mvm = MicroVM.boot(self.spec, self.workdir, self.net)
        self.started = self.mvm.started

    def restore(self, snapshot: str) -> None:
        from vmmd.microvm import MicroVM
        self.started = time.monotonic()
        self.mvm = MicroVM.restore(snapshot, self.spec, self.workdir, network=self.net)

    @property
    def agent(self):
        return self.mvm.agent

    def alive(self) -> bool:
        return self.mvm is not None and self.mvm.alive()

    def host_port(self, guest_port: int) -> int:
        return self.mvm.host_port(guest_port)

    def memory(self) -> dict[str, int]:
        """This process's resident and private memory (the caller takes a difference)."""
        return smaps_rollup(os.getpid())

    def stop(self) -> str:
        if self.mvm is None:
            return ""
        info = self.mvm.vm.wait(0) if not self.mvm.alive() else None
        self.mvm.close()
        self.mvm = None
        return f"vmmd VM: {info or 'stopped by the test'}"

    def console_text(self) -> str:
        p = self.workdir / "console.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def save(self, path: str, timeout: float = 300.0) -> float:
        """Pauses, snapshots to the directory `path`, ends the VM (as QEMU's save does)."""
        t0 = time.monotonic()
        self.mvm.vm.pause()
        self.mvm.vm.snapshot(path)
        took = time.monotonic() - t0
        self.stop()
        return took


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0]) * 1024
    return {"rss": out["Rss"], "private": out["Private_Clean"] + out["Private_Dirty"]}
