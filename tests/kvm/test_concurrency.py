"""VM operations from many threads: serialized per VM, destroy waits for calls in flight, a
handle has one owner, a state load failing partway fails the VM, and a bounded stress of
racing operations ends with no crash, no hang and every snapshot exact."""
import errno
import random
import threading
import time

import pytest

from guests import DATA, LOAD_GPA, PARAMS, STACK_TOP, build, devices, params
from helpers import decode, encode, page_hashes, run_then_snapshot
from vmmd.native import VM, Backend, State, VmmError


pytestmark = [pytest.mark.kvm, pytest.mark.timeout(180)]
PAGE = 4096


def test_destroy_waits_for_wait(microvm_factory):
    vm = microvm_factory("counter", start=True)
    got = {}

    def waiter():
        try:
            got["info"] = vm.wait()
        except VmmError as e:
            got["error"] = e
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    vm.close()
    t.join(5)
    assert not t.is_alive(), "wait() never returned after close()"
    assert "error" in got or got["info"].state in (State.STOPPED, State.FAILED), got


@pytest.mark.parametrize("call", ["mem_read", "stats", "pause_resume", "snapshot"])
def test_close_while_others_call_is_safe(microvm_factory, tmp_path, call):
    vm = microvm_factory("counter", pages=16, start=True)
    stop = threading.Event()
    bad = []
    n = [0]

    def hammer():
        while not stop.is_set():
            try:
                if call == "mem_read":
                    vm.mem_read(DATA, 64 * PAGE)
                elif call == "stats":
                    vm.stats()
                elif call == "pause_resume":
                    vm.pause()
                    vm.resume()
                else:
                    vm.pause()
                    vm.snapshot(tmp_path / f"s{threading.get_ident()}-{n[0]}")
                    n[0] += 1
                    vm.resume()
            except VmmError as e:
                if e.errno not in (errno.EBADF, errno.ESHUTDOWN, errno.EBUSY):
                    bad.append(e)
            except Exception as e:       # noqa: BLE001 - anything else is the bug
                bad.append(e)
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    vm.close()
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert not bad, bad


def test_a_handle_has_one_owner(microvm_factory):
    vm = microvm_factory("counter")
    with pytest.raises(TypeError, match="one owner"):
        VM(vm.vm._h)
    from vmmd import native
    with pytest.raises(VmmError, match="already has an owner"):
        VM(vm.vm._h, _token=native._OWNER)


def sregs_with_bad_cr0(sregs: bytes) -> bytes:
    """struct kvm_sregs: 8 segments (24 B) + gdt, idt (16 B) put cr0 at 224. PG without PE is a
    combination KVM refuses, and nothing before KVM_SET_SREGS can know."""
    return sregs[:224] + (0x80000000).to_bytes(8, "little") + sregs[232:]


def test_state_set_failing_midway_fails_the_vm(microvm_factory):
    vm = microvm_factory("counter", vcpus=2, start=True)
    vm.wait_result_above(1000, cpu=1)
    vm.pause()
    header, body = decode(vm.state_blob())
    body["vcpu"][1]["sregs"] = sregs_with_bad_cr0(body["vcpu"][1]["sregs"])
    with pytest.raises(VmmError, match="failed partway") as e:
        vm.set_state_blob(encode(header, body))
    assert "vCPU 1" in str(e.value)
    assert vm.state == State.FAILED
    with pytest.raises(VmmError):
        vm.resume()


def test_state_set_refused_before_any_change_leaves_the_vm_running(microvm_factory):
    vm = microvm_factory("counter", vcpus=2, start=True)
    vm.wait_result_above(1000)
    vm.pause()
    header, body = decode(vm.state_blob())
    body["vcpu"][1]["regs"] = body["vcpu"][1]["regs"][:-8]       # caught by decoding
    before = vm.state_blob()
    with pytest.raises(VmmError, match="regs"):
        vm.set_state_blob(encode(header, body))
    assert vm.state == State.PAUSED
    vm.resume()
    vm.wait_result_above(vm.result() + 1000)
    assert before


def test_concurrent_diff_snapshots_serialize_and_restore_exactly(microvm_factory, tmp_path):
    vm, _ = run_then_snapshot(microvm_factory, tmp_path, pages=256)
    for rnd in range(5):
        vm.resume()
        vm.wait_result_above(vm.result() + 500_000)
        vm.pause()
        dirs = [tmp_path / f"d{rnd}-{i}" for i in range(2)]
        errors = []

        def take(d):
            try:
                vm.snapshot(d, diff=True)
            except VmmError as e:
                errors.append(e)
        ts = [threading.Thread(target=take, args=(d,)) for d in dirs]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert not errors, errors
        want = page_hashes(vm)
        for d in dirs:
            copy = microvm_factory.restore(d, Backend.MMAP)
            assert page_hashes(copy) == want, d
            copy.close()


# ---------- the stress test ----------

STRESS_SECONDS = 15
P = 61                       # data pages: coprime with 7 and 64, so a cell's writer is unique
PERIOD = P * 64              # within a window this long


def counter_memory_is_consistent(vm) -> str | None:
    """The counter guest writes n to its slot, then n into cell (7n mod P, n mod 64): memory
    a snapshot holds must show every cell of the last PERIOD-1 counts as that count."""
    s = int.from_bytes(vm.mem_read(0x9000, 8), "little")
    data = vm.mem_read(DATA, P * PAGE)
    for k in range(max(1, s - PERIOD + 1), s):
        off = ((k * 7) % P) * PAGE + (k % 64) * 8
        v = int.from_bytes(data[off:off + 8], "little")
        if v != k:
            return f"count {s}: cell of {k} holds {v}"
    return None


def new_counter():
    vm = VM.create(1, 64 << 20, track_dirty=True, devices=devices())
    vm.mem_write(PARAMS, params(pages=P))
    vm.load_flat(build("counter"), LOAD_GPA, stack_top=STACK_TOP)
    vm.start()
    return vm


ALLOWED = {errno.EBUSY, errno.ESHUTDOWN, errno.EBADF, errno.EINVAL, errno.EEXIST}


def test_racing_operations_never_crash_hang_or_corrupt(tmp_path):
    slots = [new_counter() for _ in range(3)]
    locks = [threading.Lock() for _ in slots]    # state get+set and resume: see below
    snaps, bad, counts = [], [], {}
    deadline = time.monotonic() + STRESS_SECONDS
    seq = iter(range(10**9))

    def op(name, i, fn):
        vm = slots[i]
        try:
            fn(vm)
            counts[name] = counts.get(name, 0) + 1
        except VmmError as e:
            if e.errno not in ALLOWED:
                bad.append(f"{name}: {e}")
        except Exception as e:           # noqa: BLE001 - a crash-free bug is still a bug
            bad.append(f"{name}: {e!r}")

    def snapshot(vm):
        d = tmp_path / f"s{next(seq)}"
        diff = random.random() < 0.6
        vm.snapshot(d, diff=diff)
        snaps.append(d)

    def state_roundtrip(vm, i):
        # a state read and set back with no resume between is a no-op the guest cannot see;
        # resumes take the same lock, so the memory invariant checked below stays exact
        with locks[i]:
            vm.set_state_blob(vm.state_blob())

    def resume(vm, i):
        with locks[i]:
            vm.resume()

    def recycle(i):
        old = slots[i]
        if random.random() < 0.5:
            op("stop", i, lambda vm: vm.stop())
        slots[i] = new_counter()
        old.close()

    def worker(kind, i):
        while time.monotonic() < deadline:
            # snapshots are the slow op to verify afterwards: fewer of them, the rest race hard
            time.sleep(random.uniform(0.1, 0.3) if kind == "snapshot" else random.uniform(0, 0.004))
            if kind == "pause":
                op("pause", i, lambda vm: vm.pause())
            elif kind == "resume":
                op("resume", i, lambda vm: resume(vm, i))
            elif kind == "snapshot":
                op("snapshot", i, snapshot)
            elif kind == "state":
                op("state", i, lambda vm: state_roundtrip(vm, i))
            elif kind == "recycle" and random.random() < 0.02:
                recycle(i)

    threads = [threading.Thread(target=worker, args=(k, i))
               for i in range(len(slots))
               for k in ("pause", "resume", "snapshot", "state", "recycle")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STRESS_SECONDS + 30)
    hung = [t for t in threads if t.is_alive()]
    for vm in slots:
        vm.close()
    assert not hung, f"{len(hung)} threads hung"
    assert not bad, bad[:10]
    assert counts.get("snapshot", 0) > 20 and counts.get("state", 0) > 10, counts
    wrong = []
    copies = []
    for d in snaps:
        copy = VM.restore(d, Backend.MMAP, devices=devices())
        why = counter_memory_is_consistent(copy)
        copies.append(copy)
        if why:
            wrong.append(f"{d.name}: {why}")
    closer = threading.Thread(target=lambda: [c.close() for c in copies])  # teardown is slow,
    closer.start()                                                          # and not under test
    closer.join(60)
    assert not wrong, wrong[:10]
