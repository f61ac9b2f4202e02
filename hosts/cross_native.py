"""Cross-builds vmmd/_native and vmmd/_native_test for aarch64 with aarch64-linux-gnu-gcc against Debian's arm64
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
    """Both modules: the production core and the test build (tests load the latter)."""
    os.environ["VMMD_TARGET_ARCH"] = "aarch64"
    spec = importlib.util.spec_from_file_location("vmmd_native_build", ROOT / "native" / "build.py")
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    out = None
    for name, builder, defines, sources in (
            ("_native", b.ffibuilder, b.DEFINES, b.SOURCES),
            ("_native_test", b.ffibuilder_test, b.TEST_DEFINES, b.TEST_SOURCES)):
        out = _build_one(userland, name, builder, defines, sources, b)
    return out


def _build_one(userland, name, builder, defines, sources, b) -> pathlib.Path:
    out = ROOT / "vmmd" / f"{name}{SUFFIX}"
    inputs = [p for p in (ROOT / "native").rglob("*") if p.suffix in (".c", ".h", ".py")]
    if out.exists() and all(p.stat().st_mtime <= out.stat().st_mtime for p in inputs):
        return out
    inc = userland / "usr" / "include"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = pathlib.Path(tmp) / f"{name}.c"
        builder.emit_c_code(str(c_file))
        cmd = ["aarch64-linux-gnu-gcc", "-shared", "-fPIC", *b.CFLAGS,
               *[f"-D{k}" if v is None else f"-D{k}={v}" for k, v in defines],
               *[f"-I{ROOT / d}" for d in b.INCLUDE_DIRS],
               f"-I{inc / 'python3.11'}", f"-I{inc}",
               "-o", str(out) + ".tmp", str(c_file), *[str(ROOT / s) for s in sources],
               "-lpthread"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"cross-building {name} failed:\n{r.stderr[-4000:]}")
    os.replace(str(out) + ".tmp", out)
    return out


if __name__ == "__main__":
    print(build(pathlib.Path(sys.argv[1])))
