"""Dirty tracking: pages written since the parent snapshot (by the guest, the host or a device)
stay marked until a snapshot holding them is durable, so a diff is never missing a page."""
import random
import time

import pytest

from guests import DATA
from helpers import decode, page_hashes, run_more, run_then_snapshot
from vmmd.native import Backend, VmmError, lib


pytestmark = pytest.mark.kvm
PAGE = 4096
DMA_PAGE = DATA + 5 * PAGE


def dirty_then_fail(vm, tmp_path, fail):
    run_more(vm)                                   # the guest dirties pages (KVM's log)
    vm.mem_write(DATA + 200 * PAGE, b"H" * PAGE)   # and the host one
    with pytest.raises(VmmError):
        fail()


def test_failed_snapshot_keeps_dirty_pages(microvm_factory, tmp_path):
    vm, _ = run_then_snapshot(microvm_factory, tmp_path, pages=64)
    bad = tmp_path / "bad"
    (bad / "memory").mkdir(parents=True)          # cannot be replaced: the diff fails (EISDIR)
    dirty_then_fail(vm, tmp_path, lambda: vm.snapshot(bad, diff=True))
    vm.snapshot(tmp_path / "b", diff=True)
    restored = microvm_factory.restore(tmp_path / "b", Backend.MMAP)
    assert restored.mem_read(DATA + 200 * PAGE, PAGE) == b"H" * PAGE
    assert page_hashes(restored) == page_hashes(vm)


def test_snapshot_failing_after_its_memory_leaves_nothing_and_keeps_dirty_pages(
        microvm_factory, tmp_path):
    vm, _ = run_then_snapshot(microvm_factory, tmp_path, pages=64)

    def fail():
        vm.inject(lib.VMM_INJECT_SNAPSHOT_FAIL_BEFORE_VMSTATE)
        vm.snapshot(tmp_path / "failed", diff=True)
    dirty_then_fail(vm, tmp_path, fail)
    assert list((tmp_path / "failed").iterdir()) == []     # no memory without its vmstate
    vm.snapshot(tmp_path / "b", diff=True)
    restored = microvm_factory.restore(tmp_path / "b", Backend.UFFD)
    assert page_hashes(restored) == page_hashes(vm)


def test_successful_diff_clears_only_what_it_holds(microvm_factory, tmp_path):
    vm, _ = run_then_snapshot(microvm_factory, tmp_path, pages=64)
    run_more(vm)
    vm.snapshot(tmp_path / "d1", diff=True)
    vm.mem_write(DATA + 300 * PAGE, b"Z" * PAGE)
    vm.snapshot(tmp_path / "d2", diff=True)
    d2 = microvm_factory.restore(tmp_path / "d2", Backend.MMAP)
    assert page_hashes(d2) == page_hashes(vm)


def dma_state(vm):
    _, body = decode(vm.state_blob())
    return body["devices"]["testdev.0"]["dma_count"]


def test_device_writes_are_in_the_next_diff(microvm_factory, tmp_path):
    """DMA by the device's event loop never passes KVM's dirty log: the gm layer marks it."""
    vm = microvm_factory("dma", start=True)
    vm.wait_result_above(100)
    vm.pause()
    vm.snapshot(tmp_path / "a")
    before = vm.mem_read(DMA_PAGE, PAGE)
    vm.resume()
    vm.wait_result_above(vm.result() + 500)
    vm.pause()
    assert vm.mem_read(DMA_PAGE, PAGE) != before
    vm.snapshot(tmp_path / "b", diff=True)
    restored = microvm_factory.restore(tmp_path / "b", Backend.MMAP)
    assert restored.mem_read(DMA_PAGE, PAGE) == vm.mem_read(DMA_PAGE, PAGE)
    assert page_hashes(restored) == page_hashes(vm)


def test_pause_drains_device_work_and_holds_it_still(microvm_factory):
    """Every doorbell rung before the pause is served before state is read, none after."""
    vm = microvm_factory("dma", start=True)
    for _ in range(50):
        time.sleep(random.uniform(0, 0.01))
        vm.pause()
        count, rings = dma_state(vm), vm.result()
        head = int.from_bytes(vm.mem_read(DMA_PAGE, 8), "little")
        assert head == count, (head, count)
        assert count in (rings, rings + 1), (count, rings)   # the vCPU may sit between the two
        time.sleep(0.005)
        assert dma_state(vm) == count and vm.mem_read(DMA_PAGE, 8) == head.to_bytes(8, "little")
        vm.resume()
