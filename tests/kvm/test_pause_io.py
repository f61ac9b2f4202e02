"""A pause never leaves a vCPU mid-instruction: KVM finishes IN and MMIO reads (and, on arm64
and real hardware, writes) only on the next KVM_RUN, so a vCPU parked straight after an I/O exit
would expose registers from before the instruction and a restored copy would run it again."""
import random
import time

import pytest

from vmmd.native import Backend, StopReason

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]
ITERATIONS = 15_000          # four exits each, ~65 us an exit on our nested hosts


def read_results(vm):
    """The guest's (port reads, port writes, MMIO reads, MMIO writes, errors, iterations,
    port device mismatches, MMIO device mismatches): reads count up from the device's own
    numbers, so guest and device agree exactly iff there is no error and no mismatch."""
    return [int.from_bytes(vm.mem_read(0x9000 + 8 * i, 8), "little") for i in range(8)]


def assert_agree(vm, iterations):
    r = read_results(vm)
    assert r[4] == 0, f"the guest read a value twice or lost one: {r}"
    assert r[6] == r[7] == 0, f"a device saw a write twice or lost one: {r}"
    assert r[:4] == [iterations] * 4 and r[5] == iterations, r


def test_pause_completes_pending_in(microvm_factory, tmp_path):
    """200 pause/snapshot/restore cycles: every copy and the original agree with their devices."""
    vm = microvm_factory("iocount", iterations=ITERATIONS, start=True)
    copies = []
    for i in range(200):
        time.sleep(random.uniform(0, 0.002))
        vm.pause()
        snap = tmp_path / f"s{i}"
        vm.snapshot(snap)
        if i % 40 == 0:        # a few copies run to the end; restoring all 200 adds nothing
            copies.append(microvm_factory.restore(snap, Backend.MMAP))
        vm.resume()
    completions = vm.stats()["io_completions"]
    for c in [vm, *copies]:
        if c is not vm:
            c.start()
        info = c.wait(60)
        assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, info
        assert_agree(c, ITERATIONS)
    assert completions > 20     # pauses that landed mid-I/O: the case under test happened


def test_state_read_at_pause_is_after_the_instruction(microvm_factory):
    """Setting back the state read at a pause, over and over, never repeats an access."""
    vm = microvm_factory("iocount", iterations=ITERATIONS // 4, start=True)
    for _ in range(200):
        vm.pause()
        vm.set_state_blob(vm.state_blob())
        vm.resume()
    info = vm.wait(60)
    assert info.exit_code == 0, info
    assert_agree(vm, ITERATIONS // 4)
