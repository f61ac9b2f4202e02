"""cffi build script: the cdef is include/vmm.h itself, the sources are the .c files here.

VMMD_TARGET_ARCH=aarch64 selects the arm64 sources (hosts/cross_native.py cross-builds with it).
"""
import os
import pathlib
import platform

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
VERSION = "0.1.0"

ARCH_DIRS = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
TARGET = os.environ.get("VMMD_TARGET_ARCH") or platform.machine()
if TARGET not in ARCH_DIRS:
    raise RuntimeError(f"vmmd runs on x86_64 and aarch64 hosts, not {TARGET}")
ARCH = ARCH_DIRS[TARGET]


def _rel(paths):
    return sorted(str(p.relative_to(HERE.parent)) for p in paths)


SOURCES = (_rel(HERE.glob("*.c")) + _rel((HERE / "devices").glob("*.c"))
           + _rel((HERE / "arch" / ARCH).glob("*.c")))
INCLUDE_DIRS = [str(HERE.relative_to(HERE.parent))]
DEFINES = [("_GNU_SOURCE", None), ("VMM_NATIVE_VERSION", f'"{VERSION}"')]
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Wno-format-truncation", "-fno-strict-aliasing"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "include" / "vmm.h").read_text())
ffibuilder.set_source(
    "vmmd._native",
    '#include "include/vmm.h"\nconst char *vmmd_native_version(void) { return "%s"; }\n' % VERSION,
    sources=SOURCES,
    include_dirs=INCLUDE_DIRS,
    define_macros=DEFINES,
    extra_compile_args=CFLAGS,
    libraries=["pthread"],
)
ffibuilder.cdef("const char *vmmd_native_version(void);")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
