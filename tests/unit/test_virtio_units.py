"""Runs the C unit tests of the virtio devices on synthetic rings (no KVM): the virtqueue walker,
the virtio-mmio transport, and each device behind it (tests/unit/c/test_virtio*.c), linked
against the whole core built under AddressSanitizer and UBSan."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
C_DIR = pathlib.Path(__file__).parent / "c"
SOURCES = sorted(p for p in [*NATIVE.glob("*.c"), *NATIVE.glob("devices/*.c"),
                             *NATIVE.glob("devices/test/*.c"), *NATIVE.glob("arch/x86_64/*.c")])
PROGRAMS = sorted(p.stem for p in C_DIR.glob("test_virtio*.c"))
CFLAGS = ["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Wno-unused-function", "-Wno-format-truncation",
          "-D_GNU_SOURCE", '-DVMM_NATIVE_VERSION="test"', "-DVMM_TEST_BUILD",
          "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(NATIVE),
          "-I", str(C_DIR)]


@pytest.fixture(scope="module")
def core_objects(tmp_path_factory):
    """The core compiled once for every test program."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed for the native unit tests (scripts/setup.sh installs it)")
    out = tmp_path_factory.mktemp("virtio-core")
    objs = []
    for i, src in enumerate(SOURCES):
        obj = out / f"{i}-{src.stem}.o"
        r = subprocess.run(["gcc", *CFLAGS, "-c", "-o", str(obj), str(src)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        objs.append(str(obj))
    return objs


@pytest.mark.timeout(600)                # building the core under ASan counts too
@pytest.mark.parametrize("name", PROGRAMS)
def test_virtio_c_units(core_objects, tmp_path, name):
    binary = tmp_path / name
    r = subprocess.run(["gcc", *CFLAGS, "-o", str(binary), str(C_DIR / f"{name}.c"), *core_objects,
                        "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([str(binary), str(work)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(" 0 failed"), r.stdout
