"""cffi build script: the cdef is include/vmm.h itself, the sources are the .c files here."""
import pathlib
import platform

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
VERSION = "0.1.0"

ARCH_DIRS = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
arch = ARCH_DIRS.get(platform.machine())
if arch is None:
    raise RuntimeError(f"vmmd runs on x86_64 and aarch64 hosts, not {platform.machine()}")

sources = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))
sources += sorted(str(p.relative_to(HERE.parent)) for p in (HERE / "devices").glob("*.c"))
sources += sorted(str(p.relative_to(HERE.parent)) for p in (HERE / "arch" / arch).glob("*.c"))

ffibuilder = FFI()
ffibuilder.cdef((HERE / "include" / "vmm.h").read_text())
ffibuilder.set_source(
    "vmmd._native",
    '#include "include/vmm.h"\nconst char *vmmd_native_version(void) { return "%s"; }\n' % VERSION,
    sources=sources,
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    define_macros=[("_GNU_SOURCE", None), ("VMM_NATIVE_VERSION", f'"{VERSION}"')],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers",
                        "-Wno-format-truncation", "-fno-strict-aliasing"],
    libraries=["pthread"],
)
ffibuilder.cdef("const char *vmmd_native_version(void);")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
