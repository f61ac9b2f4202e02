"""A VM's life: guest output, exit codes, pause/resume, stop, several vCPUs, bad configs."""
import time

import pytest

from guests import devices as guest_devices

from vmmd.native import VM, State, StopReason, VmmError

pytestmark = pytest.mark.kvm


def test_guest_serial_output_reaches_host(microvm_factory):
    vm = microvm_factory("hello", start=True)
    info = vm.wait(10)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0
    assert vm.serial_all() == b"hello from the vmmd test guest\n"
    assert vm.stats()["first_serial_ns"] > 0
    assert vm.stats()["io_unhandled"] == 0


def test_guest_drives_mmio_device(microvm_factory):
    vm = microvm_factory("mmio", start=True)
    info = vm.wait(10)
    assert vm.serial_all() == b"mmio mismatches: 0\n"
    assert info.exit_code == 0
    assert vm.stats()["exits_mmio"] >= 19


def test_pause_stops_progress_and_resume_continues(microvm_factory):
    vm = microvm_factory("counter", start=True)
    vm.wait_result_above(1_000_000)
    vm.pause()
    assert vm.state == State.PAUSED
    frozen = vm.result()
    time.sleep(0.1)
    assert vm.result() == frozen
    vm.resume()
    assert vm.wait_result_above(frozen) > frozen


def test_all_vcpus_run(microvm_factory):
    vm = microvm_factory("counter", vcpus=4, start=True)
    for cpu in range(4):
        vm.wait_result_above(1000, cpu=cpu)
    vm.pause()
    counts = [vm.result(cpu) for cpu in range(4)]
    time.sleep(0.05)
    assert [vm.result(cpu) for cpu in range(4)] == counts


def test_counter_ticks_on_serial_until_its_limit(microvm_factory):
    vm = microvm_factory("counter", iterations=1 << 20, tick_mask=(1 << 18) - 1, start=True)
    info = vm.wait(10)
    assert info.exit_code == 0
    assert vm.serial_all() == b"".join(b"tick %d\n" % (k << 18) for k in range(1, 5))
    assert vm.result() == 1 << 20


def test_stop_ends_a_running_vm(microvm_factory):
    vm = microvm_factory("counter", start=True)
    vm.wait_result_above(1000)
    vm.stop()
    info = vm.wait(5)
    assert info.state == State.STOPPED and info.reason == StopReason.HOST


def test_wait_times_out_while_guest_runs(microvm_factory):
    vm = microvm_factory("counter", start=True)
    with pytest.raises(VmmError) as e:
        vm.wait(0.05)
    assert "still running" in str(e.value)
    assert vm.state == State.RUNNING


def test_start_twice_is_refused(microvm_factory):
    vm = microvm_factory("counter", start=True)
    with pytest.raises(VmmError, match="start it once"):
        vm.start()


def test_pause_of_stopped_vm_is_refused(microvm_factory):
    vm = microvm_factory("hello", start=True)
    vm.wait(10)
    with pytest.raises(VmmError, match="not running"):
        vm.pause()


@pytest.mark.parametrize("vcpus,mem,what", [
    (0, 64 << 20, "vcpus=0"),
    (17, 64 << 20, "vcpus=17"),
    (1, (32 << 30) + 4096, "32 GiB"),
    (1, (64 << 20) + 1, "multiple of 4 KiB"),
])
def test_out_of_range_config_is_refused(vcpus, mem, what):
    with pytest.raises(VmmError) as e:
        VM.create(vcpus, mem)
    assert e.value.errno == 22 and what in str(e.value)


def test_sixteen_vcpus_and_32_gib_are_accepted():
    with VM.create(16, 32 << 30) as vm:
        assert vm.state == State.CREATED


def test_image_outside_memory_is_refused():
    with VM.create(1, 16 << 20, devices=guest_devices()) as vm:
        with pytest.raises(VmmError, match="does not fit"):
            vm.load_flat(b"\x90" * 4096, (16 << 20) - 100, stack_top=0x400000)


def test_serial_input_is_buffered_for_the_guest(microvm_factory):
    vm = microvm_factory("hello")
    assert vm.serial_write(b"x" * 100) == 64   # the 16550A FIFO holds 64 bytes


def test_a_vm_reports_what_registering_its_memory_with_kvm_took(microvm_factory, tmp_path):
    from vmmd.native import Backend
    vm = microvm_factory("counter", start=True)
    assert vm.stats()["memslot_ns"] > 0
    vm.pause()
    vm.snapshot(tmp_path / "s")
    copy = microvm_factory.restore(tmp_path / "s", Backend.MMAP)
    assert copy.stats()["memslot_ns"] > 0              # a restore registers its memory too
