"""Fixtures of the KVM tier beyond tests/conftest.py's factory."""
import pytest

from helpers import FILLED, fill


@pytest.fixture
def filled_snapshot(microvm_factory, tmp_path):
    """filled_snapshot(mem_size, pages): a counter guest whose first FILLED data pages hold
    distinct data, run a moment, snapshotted (full); the VM is gone, the directory returned."""
    def make(mem_size=64 << 20, pages=16):
        vm = microvm_factory("counter", mem_size=mem_size, pages=pages)
        fill(vm)
        vm.start()
        vm.wait_result_above(10_000)
        vm.pause()
        vm.snapshot(tmp_path / "base")
        vm.close()
        return tmp_path / "base"
    return make


@pytest.fixture
def big_snapshot(filled_snapshot):
    """256 MiB, the counter walking all FILLED pages: a page server is busy restoring it."""
    return filled_snapshot(256 << 20, FILLED)
