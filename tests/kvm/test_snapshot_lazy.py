"""A snapshot of a lazily restored VM stays lazy: pages the VM never touched are copied from the
layer files, not faulted in; and a deep chain of diffs maps a bounded number of regions."""

import pytest

from guests import DATA
from helpers import FILLED, decode, page_hashes, rewrite
from vmmd.native import Backend, VmmError


pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]
PAGE = 4096


@pytest.fixture
def filled(filled_snapshot):
    return filled_snapshot()


def mapping_rss(path) -> int:
    rss, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                cur = len(head) > 5 and head[5] == str(path)
            elif cur and head[0] == "Rss:":
                rss += int(head[1]) * 1024
    return rss


def test_full_snapshot_of_a_lazy_uffd_vm_faults_nothing(microvm_factory, filled, tmp_path):
    vm = microvm_factory.restore(filled, Backend.UFFD)
    vm.start()
    vm.wait_result_above(vm.result() + 100_000)
    vm.pause()
    before = vm.stats()
    vm.snapshot(tmp_path / "full")
    after = vm.stats()
    assert after["uffd_faults"] == before["uffd_faults"], (before, after)
    assert after["uffd_pages"] == before["uffd_pages"] < FILLED // 4
    copy = microvm_factory.restore(tmp_path / "full", Backend.MMAP)
    assert page_hashes(copy) == page_hashes(vm)


def test_full_snapshot_of_a_lazy_mmap_vm_maps_nothing_in(microvm_factory, filled, tmp_path):
    vm = microvm_factory.restore(filled, Backend.MMAP)
    vm.start()
    vm.wait_result_above(vm.result() + 100_000)
    vm.pause()
    rss = mapping_rss(filled / "memory")
    vm.snapshot(tmp_path / "full")
    assert mapping_rss(filled / "memory") == rss < FILLED * PAGE // 4
    copy = microvm_factory.restore(tmp_path / "full", Backend.UFFD)
    assert page_hashes(copy) == page_hashes(vm)


def map_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_deep_chain_maps_a_bounded_number_of_regions(microvm_factory, tmp_path):
    vm = microvm_factory("counter", pages=16)
    vm.snapshot(tmp_path / "l0")
    layers = 20
    for layer in range(1, layers + 1):
        for i in range(1000):                       # 1000 separate runs in every layer
            vm.mem_write(DATA + (2 * i + layer % 2) * PAGE, layer.to_bytes(8, "little") * 512)
        vm.snapshot(tmp_path / f"l{layer}", diff=True)
    before = map_count()
    copy = microvm_factory.restore(tmp_path / f"l{layers}", Backend.MMAP)
    grew = map_count() - before
    assert grew <= 8192 + 64, f"restoring a {layers}-layer chain added {grew} mappings"
    assert page_hashes(copy) == page_hashes(vm)


def test_restore_applies_the_snapshots_tsc_rate_or_refuses(microvm_factory, filled):
    rate = {}

    def faster(h, b):
        for cpu in b["vcpu"]:
            rate["want"] = cpu["tsc_khz"] = cpu["tsc_khz"] * 11 // 10
        return h, b
    rewrite(filled / "vmstate", faster)
    try:
        vm = microvm_factory.restore(filled, Backend.MMAP)
    except VmmError as e:          # this host cannot scale the TSC: say so, never ignore it
        assert "TSC" in str(e) and "cannot scale" in str(e), e
        return
    _, body = decode(vm.state_blob())
    assert body["vcpu"][0]["tsc_khz"] == rate["want"]
