"""Snapshots: a restored VM continues exactly where it stopped, with either backend."""
import os

import pytest

from guests import DATA
from helpers import decode, page_hashes, run_more, run_then_snapshot
from vmmd.native import Backend, State, StopReason, VmmError, snapshot_info

pytestmark = pytest.mark.kvm
BACKENDS = [Backend.MMAP, Backend.UFFD]
MEM = 64 << 20
PAGE = 4096


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_restore_continues_counter(microvm_factory, tmp_path, backend):
    mask = (1 << 22) - 1
    vm, snap = run_then_snapshot(microvm_factory, tmp_path, pages=64, tick_mask=mask)
    at_snapshot = vm.result()
    before = vm.serial_all()          # may end inside a line: the snapshot can fall mid-print
    restored = microvm_factory.restore(snap, backend)
    assert restored.result() == at_snapshot
    restored.start()
    restored.wait_result_above((at_snapshot | mask) + (3 << 22))
    restored.pause()
    # Together the two outputs read as one run: consecutive ticks, none repeated, none missing.
    lines = (before + restored.serial_all()).split(b"\n")[:-1]
    assert lines == [b"tick %d" % (k << 22) for k in range(1, len(lines) + 1)]
    assert (len(lines) << 22) > at_snapshot + (2 << 22)   # and the copy printed ticks of its own


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_restored_memory_matches_every_page(microvm_factory, tmp_path, backend):
    vm, snap = run_then_snapshot(microvm_factory, tmp_path, pages=256)
    restored = microvm_factory.restore(snap, backend)
    assert page_hashes(restored) == page_hashes(vm)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_restored_run_ends_identical_to_original(microvm_factory, tmp_path, backend):
    """One vCPU is deterministic: original and copy, run to the same limit, end byte-equal."""
    vm, snap = run_then_snapshot(microvm_factory, tmp_path, pages=128, iterations=300_000_000)
    restored = microvm_factory.restore(snap, backend)
    vm.resume()
    restored.start()
    assert vm.wait(20).exit_code == 0
    assert restored.wait(20).exit_code == 0
    assert restored.result() == vm.result() == 300_000_000
    assert page_hashes(restored) == page_hashes(vm)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_two_restores_diverge(microvm_factory, tmp_path, backend):
    vm, snap = run_then_snapshot(microvm_factory, tmp_path, pages=16)
    memfile = (snap / "memory").read_bytes()
    a = microvm_factory.restore(snap, backend)
    b = microvm_factory.restore(snap, backend)
    page = DATA + 100 * PAGE
    before = a.mem_read(page, PAGE)
    a.mem_write(page, b"A" * PAGE)
    run_more(a)
    assert a.mem_read(page, PAGE) == b"A" * PAGE
    assert b.mem_read(page, PAGE) == before
    assert b.result() == vm.result()                 # b never ran: still at the snapshot
    assert (snap / "memory").read_bytes() == memfile # nothing reached the file


def test_diff_snapshot_holds_only_dirtied_pages(microvm_factory, tmp_path):
    vm, base = run_then_snapshot(microvm_factory, tmp_path, pages=16)
    run_more(vm)
    diff = tmp_path / "diff"
    vm.snapshot(diff, diff=True)
    info = snapshot_info(diff)
    assert info.diff and info.depth == 1
    # 16 data pages + the results page + a stack page or two, out of 16384
    assert 17 <= info.pages <= 24, info
    allocated = os.stat(diff / "memory").st_blocks * 512
    assert allocated <= (info.pages + 2) * PAGE
    assert info.pages * 500 < MEM // PAGE


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_diff_restores_on_top_of_parent(microvm_factory, tmp_path, backend):
    vm, base = run_then_snapshot(microvm_factory, tmp_path, pages=64)
    run_more(vm)
    diff = tmp_path / "diff"
    vm.snapshot(diff, diff=True)
    restored = microvm_factory.restore(diff, backend)
    assert restored.result() == vm.result()
    assert page_hashes(restored) == page_hashes(vm)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_diff_of_restored_vm_chains_three_layers(microvm_factory, tmp_path, backend):
    vm, base = run_then_snapshot(microvm_factory, tmp_path, pages=64)
    mid = microvm_factory.restore(base, backend, track_dirty=True)
    run_more(mid)
    mid.snapshot(tmp_path / "d1", diff=True)
    run_more(mid)
    mid.snapshot(tmp_path / "d2", diff=True)
    assert snapshot_info(tmp_path / "d2").depth == 2
    top = microvm_factory.restore(tmp_path / "d2", backend)
    assert top.result() == mid.result()
    assert page_hashes(top) == page_hashes(mid)


def test_discarded_page_is_zero_in_a_diff(microvm_factory, tmp_path):
    vm, base = run_then_snapshot(microvm_factory, tmp_path, pages=16)
    page = DATA + 3 * PAGE
    assert vm.mem_read(page, PAGE) != bytes(PAGE)
    vm.mem_discard(page, PAGE)
    vm.snapshot(tmp_path / "diff", diff=True)
    restored = microvm_factory.restore(tmp_path / "diff", Backend.MMAP)
    assert restored.mem_read(page, PAGE) == bytes(PAGE)


def test_diff_without_parent_is_refused(microvm_factory, tmp_path):
    vm = microvm_factory("counter")
    with pytest.raises(VmmError, match="needs a parent"):
        vm.snapshot(tmp_path / "d", diff=True)


def test_snapshot_of_running_vm_is_refused(microvm_factory, tmp_path):
    vm = microvm_factory("counter", start=True)
    with pytest.raises(VmmError, match="pause the VM first"):
        vm.snapshot(tmp_path / "s")
    assert vm.state == State.RUNNING


def test_snapshot_over_own_memory_source_is_refused(microvm_factory, tmp_path):
    vm, snap = run_then_snapshot(microvm_factory, tmp_path)
    restored = microvm_factory.restore(snap, Backend.MMAP)
    with pytest.raises(VmmError, match="another directory"):
        restored.snapshot(snap)
    assert page_hashes(restored) == page_hashes(vm)


def test_snapshot_never_overwrites_a_snapshot(microvm_factory, tmp_path):
    vm, snap = run_then_snapshot(microvm_factory, tmp_path)
    before = {f.name: f.read_bytes() for f in snap.iterdir()}
    vm.resume()
    vm.wait_result_above(vm.result() + 1000)
    vm.pause()
    with pytest.raises(VmmError, match="already holds a snapshot"):
        vm.snapshot(snap)
    assert {f.name: f.read_bytes() for f in snap.iterdir()} == before


def test_snapshot_then_resume_keeps_running(microvm_factory, tmp_path):
    vm, snap = run_then_snapshot(microvm_factory, tmp_path)
    v = vm.result()
    vm.resume()
    assert vm.wait_result_above(v) > v


def test_restored_guest_exit_is_reported(microvm_factory, tmp_path):
    vm, snap = run_then_snapshot(microvm_factory, tmp_path, iterations=300_000_000)
    restored = microvm_factory.restore(snap, Backend.UFFD)
    restored.start()
    info = restored.wait(20)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0


# The clock, the TSC and the PIT's load times are host time, which runs on while the VM is
# paused; everything else must come back equal.
PIT_CHANNEL = 24          # struct kvm_pit_channel_state; count_load_time is its last 8 bytes


def _without_time(body):
    body["vm"].pop("clock")
    pit = body["vm"].pop("pit")
    body["vm"]["pit_without_load_times"] = b"".join(
        pit[i * PIT_CHANNEL:i * PIT_CHANNEL + 16] for i in range(3)) + pit[3 * PIT_CHANNEL:]
    for cpu in body["vcpu"]:
        msrs = cpu.pop("msrs")
        entries = [msrs[i:i + 16] for i in range(0, len(msrs), 16)]
        cpu["msrs_without_tsc"] = [e for e in entries if int.from_bytes(e[:4], "little") != 0x10]
    return body


def test_state_round_trip_compares_equal(microvm_factory):
    vm = microvm_factory("counter", vcpus=2, start=True)
    vm.wait_result_above(100_000)
    vm.pause()
    first = vm.state_blob()
    vm.set_state_blob(first)
    second = vm.state_blob()
    h1, b1 = decode(first)
    h2, b2 = decode(second)
    assert h1 == h2
    assert set(b1) == {"config", "vm", "vcpu", "devices"}
    assert set(b1["vcpu"][0]) >= {"regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "msrs",
                                  "events", "mp_state", "cpuid"}
    assert set(b1["vm"]) >= {"pit", "pic_master", "pic_slave", "ioapic", "clock"}
    assert b2["vm"]["clock"] >= b1["vm"]["clock"]
    assert _without_time(b1) == _without_time(b2)
    vm.resume()
    assert vm.wait_result_above(vm.result()) > 0
