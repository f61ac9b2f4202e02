"""Builds a guest initramfs (docs/guest.md): busybox, the guest agent, only the kernel modules
the guest needs with their dependencies, and the init (vmmd/images/init.sh).

    /init                          init.sh
    /bin/busybox                   static busybox (applet links are made at boot)
    /sbin/vmmd-agent               the guest agent (vmmd.images.agentbuild)
    /sbin/vmmd-net                 the network's bring-up (net.sh, docs/network.md)
    /lib/modules/<release>/...     the modules, and /etc/vmmd/modules listing them in load order
    /etc/passwd, /etc/group        root and nobody, for exec's `user`
    /dev/console, /dev/null        device nodes, so the kernel can open the console for /init
    /proc /sys /dev /run /tmp /newroot

The archive is written here (newc, uid 0, mtime 0, sorted), so it needs no root and is the same
bytes for the same inputs; it is cached by the hash of those bytes:
$VMMD_CACHE/guest/initramfs/<arch>-<hash>.cpio.gz.

    python -m vmmd.images.initramfs [x86_64|aarch64]...      # prints the archives' paths
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import stat
import subprocess
import sys

from vmmd.images import agentbuild, paths

INIT = pathlib.Path(__file__).with_name("init.sh")
NET = pathlib.Path(__file__).with_name("net.sh")
# virtio_mmio: the transport (ACPI LNRO0005 on x86_64, FDT virtio,mmio on arm64); virtio_blk:
# the root disk; vmw_vsock_virtio_transport: AF_VSOCK for the agent; virtio_rng: host entropy;
# virtio_net: the NIC; tcp_diag: the agent ends stale TCP connections after a restore
# (docs/network.md).
# ext4, crc32c, the serial consoles and devtmpfs are built into the cloud kernels.
DEFAULT_MODULES = ("virtio_mmio", "virtio_blk", "vmw_vsock_virtio_transport", "virtio_rng",
                   "virtio_net", "tcp_diag")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"


def resolve_modules(kernel: paths.GuestKernel, names) -> list[pathlib.Path]:
    """The module files for `names` and their dependencies, each once, dependencies first."""
    out: list[pathlib.Path] = []
    for name in names:
        r = subprocess.run(["modprobe", "-d", str(kernel.modules), "-S", kernel.release,
                            "--show-depends", name], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"module {name} of {kernel.release}: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                p = pathlib.Path(parts[1])
                if p not in out:
                    out.append(p)
    return out


class Cpio:
    """A newc archive in memory."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
        self.buf.write(hdr + nb + b"\0" * (-(len(hdr) + len(nb)) % 4))
        self.buf.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755):
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600):
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def archive(arch: str, modules=DEFAULT_MODULES, agent: pathlib.Path | None = None) -> bytes:
    """The uncompressed archive."""
    kernel = paths.guest_kernel(arch)
    agent = agent or agentbuild.build(arch)
    mods = resolve_modules(kernel, modules)
    base = kernel.modules / "lib" / "modules" / kernel.release
    files: dict[str, tuple[bytes, int]] = {
        "init": (INIT.read_bytes(), 0o755),
        "bin/busybox": (paths.busybox(arch).read_bytes(), 0o755),
        "sbin/vmmd-agent": (agent.read_bytes(), 0o755),
        "sbin/vmmd-net": (NET.read_bytes(), 0o755),
        "etc/passwd": (PASSWD, 0o644),
        "etc/group": (GROUP, 0o644),
    }
    order = []                  # load order, as paths under /lib/modules
    for m in mods:
        rel = f"{kernel.release}/{m.relative_to(base).as_posix()}"
        order.append(rel)
        files[f"lib/modules/{rel}"] = (m.read_bytes(), 0o644)
    files["etc/vmmd/modules"] = ("".join(f"{r}\n" for r in order).encode(), 0o644)
    dirs = {"dev", "proc", "sys", "run", "tmp", "newroot", "root", "mnt"}
    for name in files:
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    c = Cpio()
    for d in sorted(dirs):
        c.dir(d, 0o1777 if d == "tmp" else 0o755)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    for name in sorted(files):
        data, mode = files[name]
        c.file(name, data, mode)
    return c.finish()


def build(arch: str = "x86_64", modules=DEFAULT_MODULES,
          agent: pathlib.Path | None = None) -> pathlib.Path:
    """The gzipped initramfs for `arch`, cached by the hash of its contents."""
    raw = archive(paths.check_arch(arch), modules, agent)
    out = paths.cache_root() / "guest" / "initramfs" / \
        f"{arch}-{hashlib.sha256(raw).hexdigest()[:16]}.cpio.gz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0,
                                                 compresslevel=6) as gz:
            gz.write(raw)
        os.replace(tmp, out)
    return out


if __name__ == "__main__":
    for a in sys.argv[1:] or ["x86_64"]:
        print(build(a))
