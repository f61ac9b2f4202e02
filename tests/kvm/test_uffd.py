"""uffd restore: pages arrive lazily, a recorded working set removes most faults, REMOVE works."""
import time

import pytest

from guests import DATA
from vmmd.native import Backend

pytestmark = pytest.mark.kvm
PAGE = 4096
PAGES = 4096     # 16 MiB of data pages the touch guest walks


def expected_sum(pages):
    return sum(int.from_bytes(p[:8], "little") for p in pages)


@pytest.fixture
def touch_snapshot(microvm_factory, tmp_path):
    """A touch guest waiting for `go`, its data pages filled, snapshotted."""
    vm = microvm_factory("touch", pages=PAGES, stride=17)
    fill = [(i * 0x9E3779B97F4A7C15 & (2**63 - 1)).to_bytes(8, "little") * (PAGE // 8)
            for i in range(1, PAGES + 1)]
    vm.mem_write(DATA, b"".join(fill))
    vm.start()
    vm.wait_mark(1)
    vm.pause()
    vm.snapshot(tmp_path / "snap")
    return tmp_path / "snap", expected_sum(fill) & (2**64 - 1)


def run_touch(vm):
    vm.go()
    vm.start()
    info = vm.wait(30)
    assert info.exit_code == 0, info
    return vm.result(), vm.stats()


def test_pages_arrive_lazily(microvm_factory, touch_snapshot):
    snap, want = touch_snapshot
    vm = microvm_factory.restore(snap, Backend.UFFD)
    assert vm.stats()["uffd_faults"] == 0
    total, st = run_touch(vm)
    assert total == want
    # every touched page arrived, the untouched rest of the 64 MiB did not
    assert PAGES <= st["uffd_pages"] < PAGES + 64
    assert st["uffd_pages"] < (64 << 20) // PAGE // 3
    assert st["uffd_fault_ns"] > 0


def test_fault_around_serves_a_block_per_fault(microvm_factory, touch_snapshot):
    snap, _ = touch_snapshot              # stride 17: every page of each 64 KiB block is wanted
    vm = microvm_factory.restore(snap, Backend.UFFD)
    _, st = run_touch(vm)
    assert st["uffd_faults"] * 8 < st["uffd_pages"], st


def test_fault_around_installs_no_zero_pages(microvm_factory, touch_snapshot):
    snap, _ = touch_snapshot
    vm = microvm_factory.restore(snap, Backend.UFFD)
    vm.set_params(pages=PAGES + 256, stride=1)   # 256 pages past the filled ones: never written
    _, st = run_touch(vm)
    # each never-written page is its own fault and its own zero page: none rides on fault-around
    # (a page or two of stack or results may be never-written too)
    assert 256 <= st["uffd_zero_pages"] <= 260, st


def test_working_set_cuts_faults_of_replay(microvm_factory, touch_snapshot, tmp_path):
    snap, want = touch_snapshot
    first = microvm_factory.restore(snap, Backend.UFFD)
    total1, st1 = run_touch(first)
    first.save_working_set(tmp_path / "ws")
    replay = microvm_factory.restore(snap, Backend.UFFD, working_set=tmp_path / "ws")
    assert replay.stats()["uffd_prefetched"] >= PAGES
    total2, st2 = run_touch(replay)
    assert total1 == total2 == want
    assert st2["uffd_faults"] <= st1["uffd_faults"] * 0.1, (st1, st2)


def test_host_reads_fault_in_nothing(microvm_factory, touch_snapshot):
    """A host read takes untouched pages from the layer files (or zero): the VM stays lazy."""
    snap, _ = touch_snapshot
    vm = microvm_factory.restore(snap, Backend.UFFD)
    high = 48 << 20                       # never written: not in the memory file
    assert vm.mem_read(high, PAGE) == bytes(PAGE)
    filled = vm.mem_read(DATA + 7 * PAGE, PAGE)
    assert filled == (8 * 0x9E3779B97F4A7C15 & (2**63 - 1)).to_bytes(8, "little") * (PAGE // 8)
    st = vm.stats()
    assert st["uffd_faults"] == 0 and st["uffd_pages"] == 0, st


@pytest.mark.parametrize("backend", [Backend.MMAP, Backend.UFFD], ids=lambda b: b.name.lower())
def test_discarded_pages_read_as_zero(microvm_factory, touch_snapshot, backend):
    snap, _ = touch_snapshot
    vm = microvm_factory.restore(snap, backend)
    page = DATA + 5 * PAGE
    assert vm.mem_read(page, PAGE) != bytes(PAGE)
    vm.mem_discard(page, 2 * PAGE)
    assert vm.mem_read(page, 2 * PAGE) == bytes(2 * PAGE)
    assert vm.mem_read(page + 2 * PAGE, PAGE) != bytes(PAGE)
    if backend == Backend.UFFD:       # the handler counts the REMOVE event after madvise returns
        deadline = time.monotonic() + 5
        while vm.stats()["uffd_removes"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert vm.stats()["uffd_removes"] >= 1
