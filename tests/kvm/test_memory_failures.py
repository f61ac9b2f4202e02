"""Guest memory that cannot be read truthfully fails the read, the snapshot or the VM, loudly:
a dead or stuck page server, a truncated layer, a memory file cut short under an mmap VM."""
import errno
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from guests import DATA
from vmmd.native import Backend, State, VmmError, lib, snapshot_release

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]
PAGE = 4096


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03])
def test_uffd_death_during_snapshot_fails_it(microvm_factory, big_snapshot, tmp_path, delay):
    vm = microvm_factory.restore(big_snapshot, Backend.UFFD)
    vm.start()
    vm.wait_result_above(vm.result() + 100_000)
    vm.pause()
    expected = vm.mem_read(0, 256 << 20)
    outcome = {}

    def snap():
        try:
            vm.snapshot(tmp_path / "s")
            outcome["ok"] = True
        except VmmError as e:
            outcome["error"] = str(e)
    t = threading.Thread(target=snap)
    t.start()
    time.sleep(delay)
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_DEATH)
    t.join(60)
    assert outcome, "the snapshot hung"
    if "error" in outcome:
        assert "truthful" in outcome["error"] or "died" in outcome["error"], outcome
        assert not (tmp_path / "s" / "vmstate").exists()
    else:                           # it finished before the handler died: it must be exact
        copy = microvm_factory.restore(tmp_path / "s", Backend.MMAP)
        assert copy.mem_read(0, 256 << 20) == expected


def test_host_read_of_truncated_uffd_layer_fails(microvm_factory, big_snapshot):
    vm = microvm_factory.restore(big_snapshot, Backend.UFFD)
    os.truncate(big_snapshot / "memory", 0)
    with pytest.raises(VmmError, match="truncated"):
        vm.mem_read(DATA + 100 * PAGE, PAGE)
    with pytest.raises(VmmError, match="no longer truthful"):
        vm.mem_read(0, PAGE)        # and from then on nothing is served as if it were


@pytest.mark.parametrize("end", ["stop", "close"])
def test_stalled_page_server_never_blocks_stop_or_destroy(microvm_factory, big_snapshot, end):
    vm = microvm_factory.restore(big_snapshot, Backend.UFFD)
    vm.start()
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_STALL)
    time.sleep(0.3)                 # the counter walks 32 MiB: a vCPU now waits on a page
    faults = vm.stats()["uffd_faults"]
    t0 = time.monotonic()
    if end == "stop":
        vm.stop()
        assert vm.state in (State.STOPPED, State.FAILED)
        assert vm.stats()["uffd_faults"] == faults      # nothing was served meanwhile
        with pytest.raises(VmmError, match="truthful"):
            vm.mem_read(DATA, PAGE)   # what a stuck server never delivered is not made up
    vm.close()
    assert time.monotonic() - t0 < 3, "stop/destroy waited for the stalled page server"


def test_destroy_releases_a_host_write_waiting_on_a_stalled_page_server(microvm_factory,
                                                                        big_snapshot):
    vm = microvm_factory.restore(big_snapshot, Backend.UFFD)
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_STALL)
    got = {}

    def write():
        try:
            vm.mem_write(DATA + 5000 * PAGE, b"x" * PAGE)   # a page nobody installed yet
            got["ok"] = True
        except VmmError as e:
            got["error"] = e
    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.3)
    assert t.is_alive(), "the write did not wait on the page server"
    t0 = time.monotonic()
    vm.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 3
    assert "error" in got, got      # its page was never truthfully there: not a success


def test_stalled_page_server_costs_no_cpu(microvm_factory, big_snapshot):
    vm = microvm_factory.restore(big_snapshot, Backend.UFFD)
    vm.start()
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_STALL)
    time.sleep(0.3)
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(1.0)
    used = (time.process_time() - c0) / (time.monotonic() - t0)
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_UNSTALL)
    assert used < 0.3, f"a vCPU waiting on a page burned {used:.0%} of a CPU"
    vm.wait_result_above(vm.result() + 1000)       # and it goes on once the server does


def test_pause_of_a_vm_stuck_on_its_page_server_fails_it_in_bounded_time(microvm_factory,
                                                                        big_snapshot):
    """Kicked while waiting on a page, a vCPU spins in KVM on this kind of host: the pause gives
    up after its timeout, fails the VM and ends the spin, instead of hanging or burning on."""
    vm = microvm_factory.restore(big_snapshot, Backend.UFFD)
    vm.start()
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_STALL)
    time.sleep(0.3)
    t0 = time.monotonic()
    with pytest.raises(VmmError, match="did not serve") as e:
        vm.pause()
    assert e.value.errno == errno.ETIMEDOUT and time.monotonic() - t0 < 8
    info = vm.wait(5)
    assert info.state == State.FAILED and "did not serve" in info.message
    c0, w0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    assert (time.process_time() - c0) / (time.monotonic() - w0) < 0.3


def test_mmap_memory_file_is_immutable_while_mapped(microvm_factory, big_snapshot):
    vm = microvm_factory.restore(big_snapshot, Backend.MMAP)
    mem = big_snapshot / "memory"
    with pytest.raises(PermissionError):
        os.truncate(mem, 0)
    with pytest.raises(PermissionError):
        open(mem, "r+b")
    with pytest.raises(PermissionError):
        os.rename(mem, big_snapshot / "moved")
    vm.start()
    vm.wait_result_above(vm.result() + 1000)
    snapshot_release(big_snapshot)    # the owner, once no VM uses it, may delete it
    os.truncate(mem, 0)


# A memory file cut short under an mmap VM (by someone allowed to lift the immutable flag)
# must give errors, not SIGBUS: run it in a child so a regression cannot take pytest down.
TRUNCATED_MMAP = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    os.environ["VMMD_NATIVE"] = "test"
    from guests import DATA, devices
    from vmmd.native import VM, Backend, VmmError, snapshot_release
    snap = {snap!r}
    vm = VM.restore(snap, Backend.MMAP, devices=devices())
    snapshot_release(snap)
    os.truncate(os.path.join(snap, "memory"), 0)
    try:
        vm.mem_read(DATA + 4096 * 100, 4096)
        print("READ-SUCCEEDED")
    except VmmError as e:
        print("READ-FAILED", e)
    vm.start()
    info = vm.wait(30)
    print("VM", info.state.name, info.reason.name, info.message)
""")


def test_truncated_mmap_memory_is_an_error_not_a_crash_or_shutdown(big_snapshot):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", TRUNCATED_MMAP.format(tests=tests,
                                                                   snap=str(big_snapshot))],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(tests)})
    assert p.returncode == 0, f"child died ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert "READ-FAILED" in p.stdout, p.stdout
    assert "VM FAILED ERROR" in p.stdout and "memory" in p.stdout, p.stdout
