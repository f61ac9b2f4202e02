"""Builds the freestanding test guests with the machine's gcc; cached by source hash."""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import struct
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
LOAD_GPA = 0x400000
STACK_TOP = 0x400000
STACK_SIZE = 0x10000
PARAMS = 0x8000
RESULTS = 0x9000
DATA = 0x1000000

COMMON = ["-ffreestanding", "-nostdlib", "-nostartfiles", "-static", "-fno-pic", "-no-pie",
          "-fno-stack-protector", "-O2", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none"]
# Where each architecture's guests live, how they are built, and where they are loaded.
ARCH = {
    "x86_64": dict(src=HERE, cc="gcc", objcopy="objcopy", load=LOAD_GPA, stack=STACK_TOP,
                   cflags=COMMON + ["-mno-red-zone", "-fcf-protection=none"]),
    "aarch64": dict(src=HERE / "aarch64", cc="aarch64-linux-gnu-gcc",
                    objcopy="aarch64-linux-gnu-objcopy", load=0x80400000, stack=0x80400000,
                    cflags=COMMON + ["-mgeneral-regs-only", "-mstrict-align"]),
}
CFLAGS = ARCH["x86_64"]["cflags"]


def cache_dir() -> pathlib.Path:
    root = os.environ.get("VMMD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vmmd")
    return pathlib.Path(root) / "guests"


def build_path(name: str, arch: str = "x86_64") -> pathlib.Path:
    """The flat image of the `arch` guest <name>.c, built once per source change."""
    a = ARCH[arch]
    h = hashlib.sha256()
    for f in ("guest.h", "guest.ld", f"{name}.c"):
        h.update((a["src"] / f).read_bytes())
    h.update(" ".join(a["cflags"]).encode())
    out = cache_dir() / f"{arch}-{h.hexdigest()[:16]}"
    binary = out / f"{name}.bin"
    if not binary.exists():   # an emulated host has no compiler: the machine built it already
        for tool in (a["cc"], a["objcopy"]):
            if shutil.which(tool) is None:
                raise RuntimeError(f"building {arch} test guests needs {tool} "
                                   "(scripts/setup.sh or hosts/provision.sh installs it)")
        out.mkdir(parents=True, exist_ok=True)
        elf = out / f"{name}.elf"
        subprocess.run([a["cc"], *a["cflags"], "-T", str(a["src"] / "guest.ld"), "-o", str(elf),
                        str(a["src"] / f"{name}.c")], check=True, capture_output=True, text=True)
        tmp = out / f".{name}.bin.{os.getpid()}"
        subprocess.run([a["objcopy"], "-O", "binary", str(elf), str(tmp)], check=True)
        os.replace(tmp, binary)
    return binary


def build(name: str, arch: str = "x86_64") -> bytes:
    return build_path(name, arch).read_bytes()


def machine_arch() -> str:
    import platform
    return {"arm64": "aarch64"}.get(platform.machine(), platform.machine())


def devices():
    """What every test guest expects: the debug port and the MMIO test device (first slot)."""
    from vmmd.native import Device, DeviceType
    return (Device(DeviceType.DEBUG), Device(DeviceType.TESTDEV))


def params(go=0, iterations=0, pages=0, stride=1, write=0, tick_mask=0) -> bytes:
    """The params block at PARAMS (struct params in guest.h)."""
    return struct.pack("<6Q", go, iterations, pages, stride, write, tick_mask)
