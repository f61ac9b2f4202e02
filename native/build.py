"""cffi build script: the cdef is include/vmm.h itself, the sources are the .c files here.

Two modules come out of the same sources: `vmmd._native`, the production core, and
`vmmd._native_test`, which adds the test devices (debug port, MMIO test device), fault injection
and the bench floors (include/vmm_test.h, devices/test/). Tests load the second one
(VMMD_NATIVE=test); nothing test-only is in the production ABI.

VMMD_TARGET_ARCH=aarch64 selects the arm64 sources (hosts/cross_native.py cross-builds with it).
"""
import os
import pathlib
import platform

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
VERSION = "0.2.0"

ARCH_DIRS = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
TARGET = os.environ.get("VMMD_TARGET_ARCH") or platform.machine()
if TARGET not in ARCH_DIRS:
    raise RuntimeError(f"vmmd runs on x86_64 and aarch64 hosts, not {TARGET}")
ARCH = ARCH_DIRS[TARGET]


def _rel(paths):
    return sorted(str(p.relative_to(HERE.parent)) for p in paths)


SOURCES = (_rel(HERE.glob("*.c")) + _rel((HERE / "devices").glob("*.c"))
           + _rel((HERE / "arch" / ARCH).glob("*.c")))
TEST_SOURCES = SOURCES + _rel((HERE / "devices" / "test").glob("*.c"))
INCLUDE_DIRS = [str(HERE.relative_to(HERE.parent))]
DEFINES = [("_GNU_SOURCE", None), ("VMM_NATIVE_VERSION", f'"{VERSION}"')]
TEST_DEFINES = DEFINES + [("VMM_TEST_BUILD", None)]
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Wno-format-truncation", "-fno-strict-aliasing"]
HEADER = (HERE / "include" / "vmm.h").read_text()
TEST_HEADER = (HERE / "include" / "vmm_test.h").read_text()


def _builder(name, cdef, sources, defines, includes):
    b = FFI()
    b.cdef(cdef)
    b.set_source(
        name,
        includes + 'const char *vmmd_native_version(void) { return "%s"; }\n' % VERSION,
        sources=sources,
        include_dirs=INCLUDE_DIRS,
        define_macros=defines,
        extra_compile_args=CFLAGS,
        libraries=["pthread"],
    )
    b.cdef("const char *vmmd_native_version(void);")
    return b


ffibuilder = _builder("vmmd._native", HEADER, SOURCES, DEFINES, '#include "include/vmm.h"\n')
ffibuilder_test = _builder("vmmd._native_test", HEADER + TEST_HEADER, TEST_SOURCES, TEST_DEFINES,
                           '#include "include/vmm.h"\n#include "include/vmm_test.h"\n')

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    ffibuilder_test.compile(verbose=True)
