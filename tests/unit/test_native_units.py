"""Runs the C unit tests of the native core's pure parts (no KVM): exit handling, buses, codec."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
# the whole core, built with sanitizers; the tests call only its pure parts (no /dev/kvm)
SOURCES = sorted(p.relative_to(NATIVE) for p in [*NATIVE.glob("*.c"), *NATIVE.glob("devices/*.c"),
                                                  *NATIVE.glob("devices/test/*.c"),
                                                  *NATIVE.glob("arch/x86_64/*.c")])


@pytest.fixture(scope="module")
def unit_binary(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed for the native unit tests (scripts/setup.sh installs it)")
    out = tmp_path_factory.mktemp("native") / "test_native"
    cmd = ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-D_GNU_SOURCE", '-DVMM_NATIVE_VERSION="test"',
           "-DVMM_TEST_BUILD",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(NATIVE),
           "-o", str(out), str(pathlib.Path(__file__).parent / "c" / "test_native.c"),
           *[str(NATIVE / s) for s in SOURCES], "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def test_native_pure_parts(unit_binary):
    r = subprocess.run([str(unit_binary)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("0 failed")
