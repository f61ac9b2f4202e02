"""virtio devices driven by a hand-written CPL3 driver (tests/guests/virtio.c) on the local KVM:
doorbells through KVM_IOEVENTFD, queue work on the event loop, garbage refused with
DEVICE_NEEDS_RESET, and a device's queues carried across pause, snapshot and restore."""
import hashlib
import os
import platform
import struct
import time

import pytest

from guests import LOAD_GPA, PARAMS, RESULTS, STACK_SIZE, STACK_TOP, build, params
from vmmd import irqview
from vmmd.microvm import LinuxSpec, MicroVM
from vmmd.native import VM, Backend, Device, DeviceType, StopReason, VmmError

pytestmark = pytest.mark.kvm

MODE_RNG, MODE_HOSTILE, MODE_BLK, MODE_SERVE = 1, 2, 3, 4
CMD_WRITE, CMD_CHECK = 1, 2
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
        dev = vm.virtio_info(DeviceType.VIRTIO_RNG)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, (info, out)
    assert done == 500 and zeros == 0
    # what the VMM reports of the device: every request the driver made, taken and answered
    q = dev["queues"][0]
    assert not dev["broken"] and dev["passes"] > 0 and q["ready"], dev
    assert q["avail_idx"] == q["last_avail"] == q["used_idx"] == 500, dev
    # this driver polls: no EVENT_IDX, and it never turned interrupts off
    assert q["used_event"] == -1 and q["avail_flags"] == 0, dev


def test_garbage_in_a_queue_gets_the_device_reset_and_the_vm_lives_on():
    with VM.create(1, 64 << 20, devices=devices(Device(DeviceType.VIRTIO_RNG))) as vm:
        boot(vm, MODE_HOSTILE)
        info = vm.wait(60)
        out = vm.serial_read()
        refused = results(vm)[2]
        dev = vm.virtio_info(DeviceType.VIRTIO_RNG)
        with pytest.raises(VmmError, match="no virtio device"):
            vm.virtio_info(DeviceType.VIRTIO_BLK)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, (info, out)
    assert refused == KINDS + 1, out
    # the guest left it refused (rings outside RAM): the VMM says so, and why
    assert dev["broken"] and dev["status"] & 64 and "not in guest RAM" in dev["why"], dev


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


def test_a_restored_device_interrupts_its_driver_once_and_an_unused_one_does_not(tmp_path):
    # KVM injects an irqfd write later, from a worker: an interrupt raised just before the
    # pause can be missing from the snapshot's irqchip state, and the copy's driver would wait
    # for it forever. So every restored device whose driver runs interrupts it once.
    devs = devices(Device(DeviceType.VIRTIO_RNG))
    with VM.create(1, 64 << 20, devices=devs) as vm:
        vm.snapshot(tmp_path / "unused")                # no driver has touched the device
        boot(vm, MODE_RNG)
        wait_results(vm, 0, 1000)
        vm.pause()
        vm.snapshot(tmp_path / "driven")
        raised = vm.virtio_info(DeviceType.VIRTIO_RNG)["interrupts"]
        vm.resume()
        wait_results(vm, 0, results(vm)[0] + 100)
    with VM.restore(tmp_path / "unused", Backend.MMAP, devices=devs) as vm:
        assert vm.virtio_info(DeviceType.VIRTIO_RNG)["interrupts"] == 0
    with VM.restore(tmp_path / "driven", Backend.MMAP, devices=devs) as vm:
        info = vm.virtio_info(DeviceType.VIRTIO_RNG)
        assert info["interrupts"] == 1, (info, raised)      # before a vCPU has run
        vm.start()
        before = results(vm)[0]
        wait_results(vm, 0, before + 1000)              # and the driver carries on
        assert results(vm)[1] == 0


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86_64 interrupt state")
def test_a_stall_view_reads_the_real_interrupt_state(tmp_path):
    # MicroVM.view as a hung build or test prints it, and irqview's offsets into KVM's structs,
    # on a real VM: the flat guest runs in its code, and never programs the I/O APIC, whose
    # pins KVM starts masked
    devs = devices(Device(DeviceType.VIRTIO_RNG), blk(make_base(tmp_path / "b"), tmp_path / "o"))
    mvm = MicroVM(VM.create(1, 64 << 20, devices=devs), LinuxSpec("x86_64", "", ""), tmp_path,
                  time.monotonic())
    try:
        boot(mvm.vm, MODE_RNG)
        wait_results(mvm.vm, 0, 100)
        gsi = mvm.vm.virtio_info(DeviceType.VIRTIO_BLK)["gsi"]
        view = mvm.view()
        assert mvm.vm.state.name == "RUNNING"           # the view's pause ended
        mvm.vm.pause()
        out = irqview.describe(mvm.vm.state_blob(), {"VIRTIO_BLK": gsi})
    finally:
        mvm.close()
    assert "the VM: RUNNING" in view and "unreadable" not in view, view
    assert "vCPU 0: rip" in view and f"VIRTIO_BLK: I/O APIC pin {gsi}: vector 0x0 masked edge" \
        in view, view
    rip = int(out.split("rip ")[1].split()[0], 16)
    assert LOAD_GPA <= rip < LOAD_GPA + (1 << 20), out
    # a CPL3 test guest never enables its local APIC: KVM's reset value of the spurious-vector
    # register leaves it off, and nothing else holds an interrupt back
    assert out.splitlines()[0].endswith("TPR 0x0 APIC off"), out


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


# ---------- virtio-blk ----------

def make_base(path, size=1 << 20):
    """A base image whose sector 0 holds the pattern the guest checks."""
    sector = bytes((i ^ 0x5a) & 0xff for i in range(512))
    with open(path, "wb") as f:
        f.write(sector + bytes(size - 512))
    return str(path)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def blk(base, overlay, **kw):
    return Device(DeviceType.VIRTIO_BLK, path=str(base), overlay=str(overlay), **kw)


def test_blk_serves_get_id_reads_writes_and_flush(tmp_path):
    base = make_base(tmp_path / "base.img")
    before = digest(base)
    with VM.create(1, 64 << 20, devices=devices(blk(base, tmp_path / "ov"))) as vm:
        boot(vm, MODE_BLK, n=64, seed=9)
        info = vm.wait(60)
        out = vm.serial_read()
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, (info, out)
    assert digest(base) == before
    assert os.path.getsize(tmp_path / "ov") > 0


def command(vm, seq, cmd, seed):
    vm.mem_write(PARAMS + 0x80 + 24, struct.pack("<Q", seed))
    vm.mem_write(PARAMS + 0x80 + 40, struct.pack("<Q", cmd))
    vm.mem_write(PARAMS + 0x80 + 32, struct.pack("<Q", seq))
    deadline = time.monotonic() + 20
    while results(vm)[3] != seq:
        assert time.monotonic() < deadline, f"command {seq} never finished: {vm.stats()}"
        time.sleep(0.002)
    return results(vm)[0]


class Serving:
    """A VM whose guest runs disk commands on request (MODE_SERVE)."""

    def __init__(self, vm):
        self.vm, self.seq = vm, 0

    def write(self, seed):
        self.seq += 1
        assert command(self.vm, self.seq, CMD_WRITE, seed) == 0

    def check(self, seed):
        self.seq += 1
        return command(self.vm, self.seq, CMD_CHECK, seed)


def test_disk_is_exactly_the_snapshots_in_every_restore(tmp_path):
    """A write before the snapshot is in every restore of it; one after it, or in another
    restore, is not; the base image never changes; the snapshot holds the sealed layer."""
    base = make_base(tmp_path / "base.img")
    before = digest(base)
    snap = tmp_path / "snap"
    snap.mkdir()
    vm = VM.create(1, 64 << 20, devices=devices(blk(base, tmp_path / "a")))
    with vm:
        boot(vm, MODE_SERVE, n=16)
        a = Serving(vm)
        a.write(1)
        vm.pause()
        vm.snapshot(snap)
        vm.resume()
        assert (snap / "virtio-blk.0.disk").is_file()
        assert os.stat(snap / "virtio-blk.0.disk").st_mode & 0o777 == 0o444
        sealed = digest(snap / "virtio-blk.0.disk")
        a.write(2)                                     # after the snapshot: a fresh layer
        assert a.check(2) == 0
        seq_a = a.seq
    assert digest(snap / "virtio-blk.0.disk") == sealed

    for name, seed in (("b", 3), ("c", 4)):
        with VM.restore(snap, Backend.MMAP, devices=devices(blk(base, tmp_path / name))) as r:
            r.start()
            s = Serving(r)
            s.seq = seq_a - 2                           # the guest's count at the snapshot
            assert s.check(1) == 0                      # the snapshot's data
            assert s.check(2) > 0                       # not the original's later write
            assert s.check(3) > 0                       # not the other restore's write
            s.write(seed)
            assert s.check(seed) == 0
    assert digest(base) == before
    assert digest(snap / "virtio-blk.0.disk") == sealed


def test_restore_with_another_base_image_is_refused(tmp_path):
    base = make_base(tmp_path / "base.img")
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.write(os.urandom(1 << 20))
    snap = tmp_path / "snap"
    snap.mkdir()
    with VM.create(1, 64 << 20, devices=devices(blk(base, tmp_path / "a"))) as vm:
        boot(vm, MODE_SERVE, n=4)
        Serving(vm).write(1)
        vm.pause()
        vm.snapshot(snap)
    from vmmd.native import VmmError
    with pytest.raises(VmmError, match="base image"):
        VM.restore(snap, Backend.MMAP, devices=devices(blk(other, tmp_path / "b")))
    assert not (tmp_path / "b").exists()               # a refused restore leaves no overlay


# ---------- virtio-vsock ----------

MODE_VSOCK = 5


def boot_until_mark(vm, mode, mark, what):
    """Boots the driver in `mode` and waits for the debug mark it writes once it is up."""
    boot(vm, mode)
    deadline = time.monotonic() + 20
    while vm.stats()["debug_mark"] != mark:
        assert time.monotonic() < deadline, f"the guest's {what} driver never came up"
        time.sleep(0.002)


def boot_vsock(vm):
    boot_until_mark(vm, MODE_VSOCK, 0x7500, "vsock")


def vsock(path, cid=3):
    return Device(DeviceType.VIRTIO_VSOCK, path=str(path), cid=cid)


def host_connect(path, port, timeout=10.0):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(1)
        assert chunk, f"the VMM closed the connection after CONNECT {port} (got {line!r})"
        line += chunk
    assert line.startswith(b"OK "), line
    assert int(line[3:]) >= 1 << 30
    return s


def recv_exactly(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, f"stream ended after {len(out)} of {n} bytes"
        out += chunk
    return out


def guest_connects(vm, path, port, seq):
    import socket
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_{port}")
    lst.listen(1)
    lst.settimeout(10)
    vm.mem_write(PARAMS + 0x80 + 16, struct.pack("<Q", port))
    vm.mem_write(PARAMS + 0x80 + 32, struct.pack("<Q", seq))
    conn, _ = lst.accept()
    conn.settimeout(10)
    lst.close()
    return conn


def test_vsock_host_and_guest_connections_carry_data_both_ways(tmp_path):
    path = tmp_path / "v.sock"
    with VM.create(1, 64 << 20, devices=devices(vsock(path))) as vm:
        boot_vsock(vm)
        with host_connect(path, 1234) as s:
            payload = os.urandom(3000)
            s.sendall(payload)
            assert recv_exactly(s, len(payload)) == payload      # echoed by the guest
            big = os.urandom(300_000)                            # past any one buffer's credit
            s.sendall(big)
            assert recv_exactly(s, len(big)) == big
        conn = guest_connects(vm, path, 5000, 1)
        with conn:
            assert recv_exactly(conn, 16) == b"hello from guest"
            conn.sendall(b"back")
            assert recv_exactly(conn, 4) == b"back"
        assert results(vm)[0] == 3000 + 300_000 + 4
        assert vm.state.name == "RUNNING"


def test_vsock_listener_survives_restore_and_stale_connections_end(tmp_path):
    path, path2 = tmp_path / "v.sock", tmp_path / "w.sock"
    with VM.create(1, 64 << 20, devices=devices(vsock(path))) as vm:
        boot_vsock(vm)
        s = host_connect(path, 1234)
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
        vm.pause()
        vm.snapshot(tmp_path / "snap")
        vm.resume()
        s.sendall(b"still")                                      # the original goes on
        assert recv_exactly(s, 5) == b"still"
        s.close()
    assert not path.exists()                                     # the VMM removed its socket
    with VM.restore(tmp_path / "snap", Backend.MMAP, devices=devices(vsock(path2))) as r:
        r.start()
        wait_results(r, 2, 0)                                    # TRANSPORT_RESET arrived
        with host_connect(path2, 1234) as s2:                    # and it accepts again
            s2.sendall(b"again")
            assert recv_exactly(s2, 5) == b"again"
        conn = guest_connects(r, path2, 6000, 7)
        with conn:
            assert recv_exactly(conn, 16) == b"hello from guest"


def test_vsock_restore_with_another_cid_is_refused(tmp_path):
    from vmmd.native import VmmError
    path = tmp_path / "v.sock"
    with VM.create(1, 64 << 20, devices=devices(vsock(path))) as vm:
        boot_vsock(vm)
        vm.pause()
        vm.snapshot(tmp_path / "snap")
    with pytest.raises(VmmError, match="CID"):
        VM.restore(tmp_path / "snap", Backend.MMAP, devices=devices(vsock(path, cid=9)))
