"""Restore latency: snapshot -> first guest serial byte, against the floor and a cold start.

floor: mmap of the memory file + KVM_CREATE_VM + one vCPU + registers, nothing else (C, same run).
cold: a new VM of the same size, the guest loaded and booted to its first byte.
uffd is measured bare and as designed (DESIGN §3): with the working set recorded by a first run
installed before start; bare, each first touch is a ~130 us fault round trip on this host.
Targets: restore within 3x of the floor; with mmap, 2 GiB within 1.5x of 256 MiB.
"""
import select
import time

import pytest

from conftest import LOAD_GPA, STACK_TOP, build, devices, median, report
from vmmd.native import ffi, lib
from vmmd.native import VM, Backend

ROUNDS = 15
SIZES = {"256m": 256 << 20, "2g": 2 << 30}
LAT: dict[tuple[str, str], float] = {}


DONE: list = []      # VMs measured: closed after the measurements, never between them


def wait_first_byte(vm) -> int:
    """Sleeps on the serial eventfd (a busy wait here would take the CPU the new vCPU thread
    needs, and its first KVM_RUN would start a scheduler tick late)."""
    p = select.poll()
    p.register(vm.serial_fd(), select.POLLIN)
    while not (first := vm.stats()["first_serial_ns"]):
        p.poll(1000)
    return first


def first_byte_latency(make) -> float:
    """Seconds from before `make()` to the first serial byte of the VM it returns. The VM is
    kept: its teardown (KVM's synchronize_srcu, many milliseconds in scheduler ticks) is no
    part of a restore, and done between rounds it would slow the next one."""
    t0 = time.monotonic_ns()
    vm = make()
    vm.start()
    first = wait_first_byte(vm)
    vm.pause()
    DONE.append(vm)
    return (first - t0) / 1e9


@pytest.fixture(autouse=True)
def _close_measured_vms():
    yield
    while DONE:
        DONE.pop().close()


def measure(benchmark, key, fn):
    lats = []
    benchmark.pedantic(lambda: lats.append(fn()), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    LAT[key] = median(lats[1:] if len(lats) > 1 else lats)
    benchmark.extra_info["first_byte_ms_median"] = LAT[key] * 1e3
    return LAT[key]


@pytest.mark.parametrize("size", SIZES)
def test_floor(benchmark, guest_snapshot, size):
    d, regs = guest_snapshot("beacon", SIZES[size])
    out = ffi.new("unsigned long long *")

    def floor():
        t0 = time.monotonic_ns()
        rc = lib.vmm_bench_floor(str(d / "memory").encode(), SIZES[size], regs, len(regs), out)
        assert rc == 0, ffi.string(lib.vmm_last_error())
        return (out[0] - t0) / 1e9

    v = measure(benchmark, (size, "floor"), floor)
    report("restore latency", f"floor {size} (ms)", v * 1e3)


@pytest.mark.parametrize("size", SIZES)
def test_cold_start(benchmark, size):
    image = build("beacon")

    def cold():
        vm = VM.create(1, SIZES[size], devices=devices())
        vm.load_flat(image, LOAD_GPA, stack_top=STACK_TOP)
        return vm

    v = measure(benchmark, (size, "cold"), lambda: first_byte_latency(cold))
    report("restore latency", f"cold start {size} (ms)", v * 1e3)


def working_set(d):
    """Records the pages a restored copy touches up to its first serial byte, once per snapshot."""
    ws = d.parent / f"{d.name}.ws"
    if not ws.exists():
        vm = VM.restore(d, Backend.UFFD, devices=devices())
        vm.start()
        wait_first_byte(vm)
        vm.pause()
        vm.save_working_set(ws)
        vm.close()
    return ws


@pytest.mark.parametrize("variant", ["mmap", "uffd", "uffd+ws"])
@pytest.mark.parametrize("size", SIZES)
def test_restore(benchmark, guest_snapshot, size, variant):
    d, _ = guest_snapshot("beacon", SIZES[size])
    if variant == "mmap":
        make = lambda: VM.restore(d, Backend.MMAP, devices=devices())  # noqa: E731
    else:
        ws = working_set(d) if variant == "uffd+ws" else None
        make = lambda: VM.restore(d, Backend.UFFD, working_set=ws, devices=devices())  # noqa: E731
    name = variant
    v = measure(benchmark, (size, name), lambda: first_byte_latency(make))
    report("restore latency", f"{name} {size} (ms)", v * 1e3)
    if (size, "floor") in LAT:
        report("restore latency", f"{name} {size} / floor", v / LAT[(size, "floor")],
               "target <= 3")
    if (size, "cold") in LAT:
        report("restore latency", f"{name} {size} / cold start", v / LAT[(size, "cold")])
    if size == "2g" and ("256m", name) in LAT:
        report("restore latency", f"{name} 2g / 256m", v / LAT[("256m", name)],
               "target <= 1.5" if variant == "mmap" else "")
