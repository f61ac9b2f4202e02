"""Builds the freestanding test guests with the machine's gcc; cached by source hash."""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
LOAD_GPA = 0x400000
STACK_TOP = 0x400000
STACK_SIZE = 0x10000
PARAMS = 0x8000
RESULTS = 0x9000
DATA = 0x1000000

CFLAGS = ["-ffreestanding", "-nostdlib", "-nostartfiles", "-static", "-fno-pic", "-no-pie",
          "-mno-red-zone", "-fno-stack-protector", "-fcf-protection=none", "-O2",
          "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none"]


def cache_dir() -> pathlib.Path:
    root = os.environ.get("VMMD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vmmd")
    return pathlib.Path(root) / "guests"


def build(name: str) -> bytes:
    """The flat image of tests/guests/<name>.c, built once per source change."""
    if shutil.which("gcc") is None or shutil.which("objcopy") is None:
        raise RuntimeError("building test guests needs gcc and objcopy (scripts/setup.sh installs them)")
    h = hashlib.sha256()
    for f in ("guest.h", "guest.ld", f"{name}.c"):
        h.update((HERE / f).read_bytes())
    h.update(" ".join(CFLAGS).encode())
    out = cache_dir() / h.hexdigest()[:16]
    binary = out / f"{name}.bin"
    if not binary.exists():
        out.mkdir(parents=True, exist_ok=True)
        elf = out / f"{name}.elf"
        subprocess.run(["gcc", *CFLAGS, "-T", str(HERE / "guest.ld"), "-o", str(elf),
                        str(HERE / f"{name}.c")], check=True, capture_output=True, text=True)
        tmp = out / f".{name}.bin.{os.getpid()}"
        subprocess.run(["objcopy", "-O", "binary", str(elf), str(tmp)], check=True)
        os.replace(tmp, binary)
    return binary.read_bytes()
