"""Shared fixtures: the KVM gate and a factory for VMs running the test guests."""
from __future__ import annotations

import os
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("VMMD_NATIVE", "test")   # the test build: debug devices, fault injection

from guests import (LOAD_GPA, PARAMS, RESULTS, STACK_SIZE, STACK_TOP, build,  # noqa: E402
                    devices as guest_devices, machine_arch, params)

REQUIRE_KVM = os.environ.get("VMMD_REQUIRE_KVM") == "1"


def kvm_problem() -> str | None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm unusable: {e.strerror}"
    os.close(fd)
    try:
        import vmmd._native_test  # noqa: F401
    except ImportError as e:
        return f"native core not built: {e}"
    return None


def pytest_configure(config):
    # Registered here, not in pyproject.toml: the emulated aarch64 host's userland is rebuilt
    # whenever pyproject.toml changes (hosts/provision.sh), and its cache is shared.
    config.addinivalue_line("markers", "arm64: a KVM test with aarch64 guests: runs on aarch64 "
                            "machines only (the emulated aarch64 host)")


def pytest_collection_modifyitems(config, items):
    problem = None
    # The KVM tier's guests are x86_64 programs, except in tests marked arm64 (and the smoke).
    arch = machine_arch()
    for item in items:
        if "kvm" in item.keywords and "test_guest_smoke" not in item.nodeid:
            arm64 = item.get_closest_marker("arm64") is not None
            if arm64 != (arch == "aarch64"):
                item.add_marker(pytest.mark.skip(
                    reason=f"{'aarch64' if arm64 else 'x86_64'} test guest on an {arch} machine"))
    for item in items:
        if "kvm" not in item.keywords:
            continue
        problem = problem or kvm_problem()
        if problem is None:
            return
        if REQUIRE_KVM:
            item.fixturenames.insert(0, "_kvm_required")
        else:
            item.add_marker(pytest.mark.skip(reason=problem))


def pytest_sessionfinish(session):
    """Memory files of restored snapshots are immutable; let pytest delete its temp dirs."""
    release_snapshots(session.config._tmp_path_factory.getbasetemp()
                      if hasattr(session.config, "_tmp_path_factory") else None)


def release_snapshots(root) -> None:
    if root is None or not os.path.isdir(root):
        return
    from vmmd.native import VmmError, snapshot_release
    for dirpath, _, files in os.walk(root):
        if "memory" in files:
            try:
                snapshot_release(dirpath)
            except VmmError:
                pass


@pytest.fixture
def _kvm_required():
    pytest.fail(f"VMMD_REQUIRE_KVM=1 but {kvm_problem()}")


class GuestVM:
    """A native VM plus the conventions of the test guests (params, results, marks)."""

    def __init__(self, vm):
        self.vm = vm

    def __getattr__(self, name):
        return getattr(self.vm, name)

    def result(self, cpu: int = 0) -> int:
        return struct.unpack("<Q", self.vm.mem_read(RESULTS + cpu * 64, 8))[0]

    def set_params(self, **kw) -> None:
        self.vm.mem_write(PARAMS, params(**kw))

    def go(self) -> None:
        self.vm.mem_write(PARAMS, struct.pack("<Q", 1))

    def wait_mark(self, value: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.vm.stats()["debug_mark"] != value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest never posted mark {value}: {self.vm.stats()}")
            time.sleep(0.001)

    def wait_result_above(self, value: int, cpu: int = 0, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (r := self.result(cpu)) <= value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"result {r} of vCPU {cpu} never passed {value}")
            time.sleep(0.001)
        return r

    def serial_all(self) -> bytes:
        out = b""
        while chunk := self.vm.serial_read():
            out += chunk
        return out


@pytest.fixture
def microvm_factory():
    """`microvm_factory("counter", vcpus=2, pages=16)`: a created (not started) test VM."""
    from vmmd.native import VM

    made = []

    def make(guest: str, *, vcpus: int = 1, mem_size: int = 64 << 20, track_dirty: bool = True,
             start: bool = False, **guest_params) -> GuestVM:
        vm = VM.create(vcpus, mem_size, track_dirty=track_dirty, devices=guest_devices())
        made.append(vm)
        vm.mem_write(PARAMS, params(**guest_params))
        vm.load_flat(build(guest), LOAD_GPA, stack_top=STACK_TOP, stack_size=STACK_SIZE)
        if start:
            vm.start()
        return GuestVM(vm)

    def restore(directory, backend, **kw) -> GuestVM:
        kw.setdefault("devices", guest_devices())
        vm = VM.restore(directory, backend, **kw)
        made.append(vm)
        return GuestVM(vm)

    make.restore = restore
    yield make
    for vm in made:
        vm.close()
