"""Builds the guest agent (native/guest/agent) as a static binary for x86_64 or aarch64, linked
with Debian's msgpack-c (libmsgpackc.a, provisioned per arch). Cached by a hash of the sources,
flags and library: $VMMD_CACHE/guest/agent/<arch>-<hash>/vmmd-agent.

    python -m vmmd.images.agentbuild [x86_64|aarch64]...     # prints the binaries' paths
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys

from vmmd.images import paths

SRC = paths.ROOT / "native" / "guest" / "agent"
CROSS_CC = {"x86_64": "x86_64-linux-gnu-gcc", "aarch64": "aarch64-linux-gnu-gcc"}


def compiler(arch: str) -> str:
    """gcc for the machine's own arch, the Debian cross compiler otherwise."""
    return "gcc" if platform.machine() == arch else CROSS_CC[arch]
CFLAGS = ["-static", "-O2", "-s", "-std=gnu11", "-Wall", "-Wextra", "-D_GNU_SOURCE",
          "-fno-strict-aliasing"]


def sources() -> list[pathlib.Path]:
    return sorted(p for p in SRC.iterdir() if p.suffix in (".c", ".h"))


def build(arch: str = "x86_64") -> pathlib.Path:
    """The agent binary for `arch`, built once per change of its inputs."""
    paths.check_arch(arch)
    mp = paths.msgpack_root(arch)
    lib = mp / "usr" / "lib" / paths.TRIPLET[arch] / "libmsgpackc.a"
    h = hashlib.sha256()
    for p in sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    cc = compiler(arch)
    h.update(" ".join([cc, *CFLAGS]).encode())
    h.update(lib.read_bytes())
    out = paths.cache_root() / "guest" / "agent" / f"{arch}-{h.hexdigest()[:16]}"
    binary = out / "vmmd-agent"
    if binary.exists():
        return binary
    if shutil.which(cc) is None:
        raise RuntimeError(f"building the {arch} guest agent needs {cc} "
                           "(hosts/provision.sh installs it)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".vmmd-agent.{os.getpid()}"
    cmd = [cc, *CFLAGS, f"-I{mp / 'usr' / 'include'}", "-o", str(tmp),
           *[str(p) for p in sources() if p.suffix == ".c"], str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    # static glibc warns about getpwnam & co. only if they are linked; the agent avoids them
    if r.returncode:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building the {arch} guest agent failed:\n{r.stderr[-4000:]}")
    os.replace(tmp, binary)
    return binary


if __name__ == "__main__":
    for a in sys.argv[1:] or ["x86_64"]:
        print(build(a))
