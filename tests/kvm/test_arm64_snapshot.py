"""Snapshots of aarch64 VMs: every vCPU register, the vGICv3 and the generic timer come back.

Runs on aarch64 machines only: inside the emulated aarch64 host (tests/e2e/test_arm64_snapshots_in_host.py)
or on a real ARM64 KVM host. Guests there are QEMU TCG code under nested KVM, so counts are small
and waits long; every wait is for progress, never for a fixed time.
"""
from __future__ import annotations

import hashlib
import struct
import time

import pytest

from guests import build, devices as guest_devices, params
from helpers import decode, rewrite
from vmmd.native import VM, Backend, State, StopReason, VmmError, snapshot_info

pytestmark = [pytest.mark.kvm, pytest.mark.arm64]

# tests/guests/aarch64/guest.h: the x86 guests' map moved up to where RAM starts.
RAM = 0x80000000
LOAD = STACK_TOP = 0x80400000
PARAMS, RESULTS, DATA = 0x80008000, 0x80009000, 0x81000000
MEM = 64 << 20
PAGE = 4096
BACKENDS = [Backend.MMAP, Backend.UFFD]
WAIT = 60.0

# ticker's result words (tests/guests/aarch64/ticker.c)
LOOPS, TICKS, SPIS, MAX_STEP, FREQ, LAST_READ, UNEXPECTED, LAST_TICK = range(8)

# register ids (linux/kvm.h, asm/kvm.h)
U32, U64, U128 = 0x0020000000000000, 0x0030000000000000, 0x0040000000000000
ARM64 = 0x6000000000000000


def core(offset_bytes, size=U64):
    return ARM64 | size | 0x0010 << 16 | offset_bytes // 4


def sysreg(op0, op1, crn, crm, op2):
    return ARM64 | U64 | 0x0013 << 16 | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


PC = core(256)                           # offsetof(struct kvm_regs, regs.pc)
V0 = core(336, U128)                     # fp_regs.vregs[0]
FPSR = core(848, U32)                    # fp_regs.fpsr
TIMER_CTL, TIMER_CNT, TIMER_CVAL = sysreg(3, 3, 14, 3, 1), sysreg(3, 3, 14, 3, 2), \
    sysreg(3, 3, 14, 0, 2)
MPIDR = sysreg(3, 0, 0, 0, 5)
PSCI_VERSION = ARM64 | U64 | 0x0014 << 16


class Guest:
    """A native VM plus the aarch64 test guests' conventions."""

    def __init__(self, vm):
        self.vm = vm

    def __getattr__(self, name):
        return getattr(self.vm, name)

    def word(self, cpu=0, index=0) -> int:
        return struct.unpack("<Q", self.vm.mem_read(RESULTS + cpu * 64 + index * 8, 8))[0]

    def result(self, cpu=0) -> int:
        return self.word(cpu, 0)

    def wait_word_above(self, value, cpu=0, index=0, timeout=WAIT) -> int:
        deadline = time.monotonic() + timeout
        while (w := self.word(cpu, index)) <= value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"vCPU {cpu} result word {index} stayed at {w}, never "
                                   f"passed {value}")
            time.sleep(0.01)
        return w

    def serial_all(self) -> bytes:
        out = b""
        while chunk := self.vm.serial_read():
            out += chunk
        return out

    def page_hashes(self):
        data = self.vm.mem_read(RAM, MEM)
        return [hashlib.blake2b(data[i:i + PAGE], digest_size=16).digest()
                for i in range(0, MEM, PAGE)]


@pytest.fixture
def arm64_vm():
    """`arm64_vm("ticker", vcpus=2, pages=16)`: a created test VM; `.restore(dir, backend)`."""
    made = []

    def make(guest, *, vcpus=1, start=False, **guest_params) -> Guest:
        vm = VM.create(vcpus, MEM, track_dirty=True, devices=guest_devices())
        made.append(vm)
        vm.mem_write(PARAMS, params(**guest_params))
        vm.load_flat(build(guest, "aarch64"), LOAD, stack_top=STACK_TOP)
        if start:
            vm.start()
        return Guest(vm)

    def restore(directory, backend, **kw) -> Guest:
        vm = VM.restore(directory, backend, devices=guest_devices(), **kw)
        made.append(vm)
        return Guest(vm)

    make.restore = restore
    yield make
    for vm in made:
        vm.close()


def ticker(arm64_vm, vcpus=2, **kw) -> Guest:
    """The ticker running on every vCPU, each past its third tick, the last vCPU past its
    first SPI."""
    g = arm64_vm("ticker", vcpus=vcpus, start=True, stride=vcpus, **kw)
    for cpu in range(vcpus):
        g.wait_word_above(2, cpu, TICKS)
    g.wait_word_above(0, vcpus - 1, SPIS)
    return g


def snapshot_counter(arm64_vm, tmp_path, name="base", **kw):
    vm = arm64_vm("counter", start=True, **kw)
    vm.wait_word_above(20_000)
    vm.pause()
    snap = tmp_path / name
    vm.snapshot(snap)
    return vm, snap


def regs_of(cpu_state) -> dict[int, bytes]:
    return {rid: val for rid, val in cpu_state["regs"]}


# ---------- state ----------

def differences(a, b, path="") -> list[str]:
    """Where two decoded vmstates differ, down to the 32-bit word of a binary field."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) and len(a) % 4 == 0:
        return [f"{path} word {i}: {a[i * 4:i * 4 + 4].hex()} != {b[i * 4:i * 4 + 4].hex()}"
                for i in range(len(a) // 4) if a[i * 4:i * 4 + 4] != b[i * 4:i * 4 + 4]]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_state_round_trip_compares_equal(arm64_vm):
    """Paused, the guest's counter stands still, so even the timer registers read back equal."""
    g = ticker(arm64_vm)
    g.pause()
    first = g.state_blob()
    g.set_state_blob(first)
    second = g.state_blob()
    h1, b1 = decode(first)
    h2, b2 = decode(second)
    assert h1 == h2
    assert set(b1) == {"config", "vm", "vcpu", "devices"}
    assert set(b1["vm"]) == {"v", "gicd", "gicr", "icc"}
    for cpu in b1["vcpu"]:
        assert set(cpu) == {"v", "regs", "mp_state", "events"}
        regs = regs_of(cpu)
        assert len(regs) == len(cpu["regs"]) > 100        # core, FP/SIMD, sysregs, timer, fw
        for rid in (PC, V0, FPSR, TIMER_CTL, TIMER_CNT, TIMER_CVAL, MPIDR, PSCI_VERSION):
            assert rid in regs, hex(rid)
        assert len(regs[V0]) == 16 and len(regs[PC]) == 8 and len(regs[FPSR]) == 4
    assert b1 == b2, differences(b1, b2)
    # both vCPUs saw the same still counter; their MPIDRs name their redistributors
    cnts = [regs_of(c)[TIMER_CNT] for c in b1["vcpu"]]
    assert cnts[0] == cnts[1]
    assert [int.from_bytes(regs_of(c)[MPIDR], "little") & 0xff for c in b1["vcpu"]] == [0, 1]
    g.resume()
    for cpu in range(2):
        g.wait_word_above(g.word(cpu, TICKS) + 2, cpu, TICKS)


def test_saved_vgic_holds_what_the_guest_programmed(arm64_vm):
    g = ticker(arm64_vm)
    g.pause()
    _, body = decode(g.state_blob())
    gicd = struct.unpack(f"<{len(body['vm']['gicd']) // 4}I", body["vm"]["gicd"])
    # dist_early: IIDR, TYPER, CTLR, STATUSR; dist_spis: IGROUPR x3, IROUTER x96, ...
    assert gicd[2] & 0x2                                   # GICD_CTLR.EnableGrp1
    assert gicd[4 + 3 + (48 - 32)] == 1                    # IROUTER[48]: vCPU 1
    enable_words = gicd[4 + 3 + 96 + 6 + 24 + 3:][:3]      # after ICFGR and IPRIORITYR, levels
    assert enable_words[0] & (1 << 16)                     # SPI 48 enabled
    for cpu, gicr in enumerate(body["vm"]["gicr"]):
        w = struct.unpack(f"<{len(gicr) // 4}I", gicr)
        # TYPER x2, STATUSR, WAKER, PROPBASER x2, PENDBASER x2, CTLR, IGROUPR0, ICFGR x2,
        # IPRIORITYR x8, level, ISENABLER0
        assert w[1] & 0xff == cpu                          # GICR_TYPER affinity: this vCPU
        assert w[9] & (1 << 27) and w[21] & (1 << 27), (cpu, w)   # PPI 27: group 1, enabled
    for icc in body["vm"]["icc"]:
        sre, ctlr, pmr, bpr0, bpr1, igrpen0, igrpen1 = struct.unpack("<7Q", icc[:56])
        assert pmr == 0xf0 and igrpen1 == 1 and sre & 1
    g.resume()


# ---------- restore ----------

@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_restore_continues_counter(arm64_vm, tmp_path, backend):
    mask = (1 << 14) - 1
    vm, snap = snapshot_counter(arm64_vm, tmp_path, pages=64, tick_mask=mask)
    at_snapshot = vm.result()
    before = vm.serial_all()
    restored = arm64_vm.restore(snap, backend)
    assert restored.result() == at_snapshot
    restored.start()
    restored.wait_word_above((at_snapshot | mask) + (3 << 14))
    restored.pause()
    # Together the two outputs read as one run: consecutive ticks, none repeated, none missing.
    lines = (before + restored.serial_all()).split(b"\n")[:-1]
    assert lines == [b"tick %d" % (k << 14) for k in range(1, len(lines) + 1)]
    assert (len(lines) << 14) > at_snapshot + (2 << 14)


def test_restored_run_ends_identical_to_original(arm64_vm, tmp_path):
    """One vCPU is deterministic: original and copy, run to the same limit, end byte-equal."""
    vm, snap = snapshot_counter(arm64_vm, tmp_path, pages=128)
    restored = arm64_vm.restore(snap, Backend.UFFD)
    limit = vm.result() + 300_000                    # set while both stand at the snapshot
    for g in (vm, restored):
        g.mem_write(PARAMS + 8, struct.pack("<Q", limit))
    vm.resume()
    restored.start()
    assert vm.wait(WAIT).exit_code == 0
    info = restored.wait(WAIT)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0
    assert restored.result() == vm.result() == limit
    assert restored.page_hashes() == vm.page_hashes()


def test_two_restores_diverge(arm64_vm, tmp_path):
    vm, snap = snapshot_counter(arm64_vm, tmp_path, pages=16)
    memfile = (snap / "memory").read_bytes()
    a = arm64_vm.restore(snap, Backend.MMAP)
    b = arm64_vm.restore(snap, Backend.MMAP)
    page = DATA + 100 * PAGE
    before = a.mem_read(page, PAGE)
    a.mem_write(page, b"A" * PAGE)
    a.start()
    a.wait_word_above(vm.result() + 10_000)
    a.pause()
    assert a.mem_read(page, PAGE) == b"A" * PAGE
    assert b.mem_read(page, PAGE) == before
    assert b.result() == vm.result()
    assert (snap / "memory").read_bytes() == memfile


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_diff_restores_on_top_of_parent(arm64_vm, tmp_path, backend):
    vm, base = snapshot_counter(arm64_vm, tmp_path, pages=64)
    vm.resume()
    vm.wait_word_above(vm.result() + 10_000)
    vm.pause()
    diff = tmp_path / "diff"
    vm.snapshot(diff, diff=True)
    info = snapshot_info(diff)
    assert info.diff and info.depth == 1 and info.pages * 100 < MEM // PAGE, info
    restored = arm64_vm.restore(diff, backend)
    assert restored.result() == vm.result()
    assert restored.page_hashes() == vm.page_hashes()
    restored.start()
    restored.wait_word_above(vm.result() + 10_000)


# ---------- timer and interrupts ----------

def counted_seconds(g, since_counter, freq) -> float:
    """How far the guest's virtual counter moved since `since_counter`, in seconds."""
    return (g.word(0, LAST_READ) - since_counter) / freq


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_timer_and_device_interrupts_continue_after_restore(arm64_vm, tmp_path, backend):
    """Each vCPU's timer PPI (its redistributor, CPU interface and timer registers) and the
    device SPI routed to vCPU 1 (the distributor) keep coming in a copy, and its virtual
    counter continues from the snapshot however long the copy waited to start."""
    g = ticker(arm64_vm, pages=16)
    g.pause()
    snap = tmp_path / "ticker"
    g.snapshot(snap)
    saved = [[g.word(cpu, i) for i in range(8)] for cpu in range(2)]
    copy = arm64_vm.restore(snap, backend)
    restored_at = time.monotonic()
    time.sleep(2.0)                                    # a copy that starts later
    copy.start()
    for cpu in range(2):
        copy.wait_word_above(saved[cpu][TICKS] + 5, cpu, TICKS)
    copy.wait_word_above(saved[1][SPIS] + 1, 1, SPIS)
    copy.pause()
    elapsed = time.monotonic() - restored_at
    for cpu in range(2):
        assert copy.word(cpu, UNEXPECTED) == 0
    assert copy.word(0, SPIS) == saved[0][SPIS] == 0   # the SPI still goes to vCPU 1 only
    # Since the restore the counter moved only while the copy ran, not during its 2 s wait. (A
    # stalled vCPU does not matter here: the counter runs on while it stalls, either way.)
    counted = counted_seconds(copy, saved[0][LAST_READ], saved[0][FREQ])
    assert 0 < counted < elapsed - 1.0, (counted, elapsed)


def test_pause_keeps_the_virtual_counter_still(arm64_vm):
    g = ticker(arm64_vm, vcpus=1)
    g.pause()
    paused_at, at_pause, freq = time.monotonic(), g.word(0, LAST_READ), g.word(0, FREQ)
    time.sleep(2.0)
    g.resume()
    g.wait_word_above(g.word(0, TICKS) + 3, 0, TICKS)
    g.pause()
    elapsed = time.monotonic() - paused_at
    counted = counted_seconds(g, at_pause, freq)
    assert 0 < counted < elapsed - 1.0, (counted, elapsed)


def test_restored_ticker_runs_to_its_end(arm64_vm, tmp_path):
    g = ticker(arm64_vm, vcpus=1, iterations=0)
    g.pause()
    g.snapshot(tmp_path / "s")
    # a copy told (through its memory) to stop soon ends cleanly: PSTATE and vectors intact
    copy = arm64_vm.restore(tmp_path / "s", Backend.UFFD)
    copy.mem_write(PARAMS + 8, struct.pack("<Q", copy.result() + 20_000))
    copy.start()
    info = copy.wait(WAIT)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, info


def test_powered_off_secondary_comes_back_off_and_powers_on(arm64_vm, tmp_path):
    """mp_state: a vCPU that PSCI CPU_OFF stopped is STOPPED in the snapshot, stays off in the
    copy, and PSCI CPU_ON from vCPU 0 starts it there."""
    g = arm64_vm("psci", vcpus=2, start=True)
    g.wait_word_above(20_000)
    g.pause()
    _, body = decode(g.state_blob())
    assert [c["mp_state"] for c in body["vcpu"]] == [0, 5]     # RUNNABLE, STOPPED
    g.snapshot(tmp_path / "s")
    copy = arm64_vm.restore(tmp_path / "s", Backend.MMAP)
    copy.start()
    copy.wait_word_above(g.result() + 20_000)
    assert copy.word(1) == 0                                    # off: it never counted
    copy.mem_write(PARAMS, struct.pack("<Q", 1))                # go: vCPU 0 calls CPU_ON
    copy.wait_word_above(1000, cpu=1)
    assert (copy.word(0, 1), copy.word(0, 2)) == (0, 1)         # PSCI_SUCCESS, once


# ---------- refusals ----------

def _restore_fails(arm64_vm, snap, match):
    with pytest.raises(VmmError, match=match):
        arm64_vm.restore(snap, Backend.MMAP)


def test_snapshot_with_a_register_this_host_lacks_is_refused(arm64_vm, tmp_path):
    vm, snap = snapshot_counter(arm64_vm, tmp_path)

    def foreign_register(header, body):      # same count, one id this KVM never listed
        regs = body["vcpu"][0]["regs"]
        regs[-1] = [sysreg(3, 7, 15, 15, 7), bytes(8)]
        return header, body
    rewrite(snap / "vmstate", foreign_register)
    _restore_fails(arm64_vm, snap, "this host's KVM does not have")


def test_snapshot_with_a_wrong_register_size_is_refused(arm64_vm, tmp_path):
    vm, snap = snapshot_counter(arm64_vm, tmp_path)

    def widen(header, body):
        body["vcpu"][0]["regs"] = [[rid, val + b"\0" if rid == PC else val]
                                   for rid, val in body["vcpu"][0]["regs"]]
        return header, body
    rewrite(snap / "vmstate", widen)
    _restore_fails(arm64_vm, snap, "is 9 bytes; the id says 8")


def test_snapshot_without_a_core_register_is_refused(arm64_vm, tmp_path):
    vm, snap = snapshot_counter(arm64_vm, tmp_path)

    def drop_pc(header, body):
        body["vcpu"][0]["regs"] = [r for r in body["vcpu"][0]["regs"] if r[0] != PC]
        return header, body
    rewrite(snap / "vmstate", drop_pc)
    _restore_fails(arm64_vm, snap, "lacks core register")


def test_snapshot_from_another_vgic_layout_is_refused(arm64_vm, tmp_path):
    vm, snap = snapshot_counter(arm64_vm, tmp_path)

    def more_spis(header, body):
        gicd = bytearray(body["vm"]["gicd"])
        gicd[4:8] = struct.pack("<I", struct.unpack("<I", gicd[4:8])[0] + 1)   # GICD_TYPER
        body["vm"]["gicd"] = bytes(gicd)
        return header, body
    rewrite(snap / "vmstate", more_spis)
    _restore_fails(arm64_vm, snap, "GICD_TYPER")


def test_snapshot_with_an_unknown_mp_state_is_refused(arm64_vm, tmp_path):
    vm, snap = snapshot_counter(arm64_vm, tmp_path)

    def bad(header, body):
        body["vcpu"][0]["mp_state"] = 3          # HALTED: an x86 state
        return header, body
    rewrite(snap / "vmstate", bad)
    _restore_fails(arm64_vm, snap, "not an arm64 vCPU state")
    assert vm.state == State.PAUSED
