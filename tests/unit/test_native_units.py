"""Runs the C unit tests of the native core's pure parts (no KVM): exit handling, buses, codec."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
# only the pure files: nothing here opens /dev/kvm
SOURCES = ["vcpu.c", "bus.c", "codec.c", "util.c"]


@pytest.fixture(scope="module")
def unit_binary(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed for the native unit tests (scripts/setup.sh installs it)")
    out = tmp_path_factory.mktemp("native") / "test_native"
    cmd = ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-D_GNU_SOURCE", '-DVMM_NATIVE_VERSION="test"',
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(NATIVE),
           "-o", str(out), str(pathlib.Path(__file__).parent / "c" / "test_native.c"),
           *[str(NATIVE / s) for s in SOURCES], "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def test_native_pure_parts(unit_binary):
    r = subprocess.run([str(unit_binary)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("0 failed")
