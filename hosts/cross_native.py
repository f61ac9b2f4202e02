"""Cross-builds vmmd/_native for aarch64 with aarch64-linux-gnu-gcc against Debian's arm64
Python headers (in the provisioned userland), so the aarch64 host needs no compiler.
Rebuilds only when a native source is newer than the module. Prints the module's path."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUFFIX = ".cpython-311-aarch64-linux-gnu.so"


def build(userland: pathlib.Path) -> pathlib.Path:
    out = ROOT / "vmmd" / f"_native{SUFFIX}"
    sources = [p for p in (ROOT / "native").rglob("*") if p.suffix in (".c", ".h", ".py")]
    if out.exists() and all(p.stat().st_mtime <= out.stat().st_mtime for p in sources):
        return out
    os.environ["VMMD_TARGET_ARCH"] = "aarch64"
    spec = importlib.util.spec_from_file_location("vmmd_native_build", ROOT / "native" / "build.py")
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    inc = userland / "usr" / "include"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = pathlib.Path(tmp) / "_native.c"
        b.ffibuilder.emit_c_code(str(c_file))
        cmd = ["aarch64-linux-gnu-gcc", "-shared", "-fPIC", *b.CFLAGS,
               *[f"-D{k}" if v is None else f"-D{k}={v}" for k, v in b.DEFINES],
               *[f"-I{ROOT / d}" for d in b.INCLUDE_DIRS],
               f"-I{inc / 'python3.11'}", f"-I{inc}",
               "-o", str(out) + ".tmp", str(c_file), *[str(ROOT / s) for s in b.SOURCES],
               "-lpthread"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"cross-building the native core failed:\n{r.stderr[-4000:]}")
    os.replace(str(out) + ".tmp", out)
    return out


if __name__ == "__main__":
    print(build(pathlib.Path(sys.argv[1])))
