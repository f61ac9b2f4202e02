"""virtio devices driven by a hand-written CPL3 driver (tests/guests/virtio.c) on the local KVM:
doorbells through KVM_IOEVENTFD, queue work on the event loop, garbage refused with
DEVICE_NEEDS_RESET, and a device's queues carried across pause, snapshot and restore."""
import struct
import time

import pytest

from guests import LOAD_GPA, PARAMS, RESULTS, STACK_SIZE, STACK_TOP, build, params
from vmmd.native import VM, Backend, Device, DeviceType, StopReason

pytestmark = pytest.mark.kvm

MODE_RNG, MODE_HOSTILE, MODE_BLK = 1, 2, 3
SLOT0 = 0xd0000000          # the first configured MMIO device (the debug port is PIO)
KINDS = 7                   # kinds of garbage the guest writes, plus rings outside RAM


def devices(*extra):
    return (Device(DeviceType.DEBUG), *extra)


def boot(vm, mode, n=0, base=SLOT0, seed=0):
    vm.mem_write(PARAMS, params())
    vm.mem_write(PARAMS + 0x80, struct.pack("<4Q", base, mode, n, seed))
    vm.load_flat(build("virtio"), LOAD_GPA, stack_top=STACK_TOP, stack_size=STACK_SIZE)
    vm.start()


def results(vm):
    return struct.unpack("<4Q", vm.mem_read(RESULTS, 32))


def wait_results(vm, index, above, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (r := results(vm)[index]) <= above:
        assert time.monotonic() < deadline, f"results[{index}] stuck at {r}: {vm.stats()}"
        time.sleep(0.002)
    return r


def test_rng_serves_a_polling_driver():
    with VM.create(1, 64 << 20, devices=devices(Device(DeviceType.VIRTIO_RNG))) as vm:
        boot(vm, MODE_RNG, n=500)
        info = vm.wait(60)
        out = vm.serial_read()
        done, zeros = results(vm)[:2]
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, (info, out)
    assert done == 500 and zeros == 0


def test_garbage_in_a_queue_gets_the_device_reset_and_the_vm_lives_on():
    with VM.create(1, 64 << 20, devices=devices(Device(DeviceType.VIRTIO_RNG))) as vm:
        boot(vm, MODE_HOSTILE)
        info = vm.wait(60)
        out = vm.serial_read()
        refused = results(vm)[2]
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, (info, out)
    assert refused == KINDS + 1, out


@pytest.mark.parametrize("backend", [Backend.MMAP, Backend.UFFD])
def test_rng_queue_carries_on_after_restore(tmp_path, backend):
    devs = devices(Device(DeviceType.VIRTIO_RNG))
    with VM.create(1, 64 << 20, devices=devs) as vm:
        boot(vm, MODE_RNG)
        wait_results(vm, 0, 1000)
        vm.pause()
        before = results(vm)[0]
        vm.snapshot(tmp_path / "s")
        vm.resume()
        wait_results(vm, 0, before + 1000)     # the original goes on too
    with VM.restore(tmp_path / "s", backend, devices=devs) as vm:
        vm.start()
        after = wait_results(vm, 0, before + 1000)
        assert vm.state.name == "RUNNING"
        assert results(vm)[1] == 0
    assert after > before + 1000


def test_pause_leaves_no_request_half_served():
    """Every pause lands between requests: the used index the guest sees equals the device's."""
    devs = devices(Device(DeviceType.VIRTIO_RNG))
    with VM.create(1, 64 << 20, devices=devs) as vm:
        boot(vm, MODE_RNG)
        for _ in range(50):
            time.sleep(0.005)
            vm.pause()
            ring = 0x1000000 + 0x100000
            avail_idx, = struct.unpack("<H", vm.mem_read(ring + 0x1000 + 2, 2))
            used_idx, = struct.unpack("<H", vm.mem_read(ring + 0x2000 + 2, 2))
            # at most the one request the guest published and has not rung for yet
            assert (avail_idx - used_idx) % 65536 in (0, 1), (avail_idx, used_idx)
            vm.resume()
        assert results(vm)[0] > 0
