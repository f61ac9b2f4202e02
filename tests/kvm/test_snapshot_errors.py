"""Bad snapshots are refused with a clear error; a dead page server fails the VM, never hangs it."""
import errno
import os
import time

import pytest

from guests import devices as guest_devices
from helpers import rewrite
from vmmd.native import lib
from vmmd.native import Backend, State, StopReason, VM, VmmError

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(60)]
BACKENDS = [Backend.MMAP, Backend.UFFD]


@pytest.fixture
def snap(microvm_factory, tmp_path):
    vm = microvm_factory("counter", pages=4096, start=True)
    vm.wait_result_above(100_000)
    vm.pause()
    vm.snapshot(tmp_path / "snap")
    return tmp_path / "snap"


def restore_error(snap, backend=Backend.MMAP) -> VmmError:
    with pytest.raises(VmmError) as e:
        VM.restore(snap, backend, devices=guest_devices())
    return e.value


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_corrupt_vmstate_is_refused(snap, backend):
    data = bytearray((snap / "vmstate").read_bytes())
    data[len(data) // 2] ^= 0x40
    (snap / "vmstate").write_bytes(data)
    e = restore_error(snap, backend)
    assert e.errno == errno.EBADMSG and "checksum" in str(e)


@pytest.mark.parametrize("cut", [10, 100, 0.5, -1])
def test_truncated_vmstate_is_refused(snap, cut):
    data = (snap / "vmstate").read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut if cut > 0 else len(data) - 1
    (snap / "vmstate").write_bytes(data[:n])
    assert "truncated" in str(restore_error(snap))


def test_empty_vmstate_is_refused(snap):
    (snap / "vmstate").write_bytes(b"")
    assert "truncated" in str(restore_error(snap))


def test_not_a_vmstate_is_refused(snap):
    (snap / "vmstate").write_bytes(b"#!/bin/sh\necho not a snapshot at all\n" * 4)
    assert "bad magic" in str(restore_error(snap))


def test_newer_format_is_refused(snap):
    def bump(h, b):
        h[1] = 2
        return h, b
    rewrite(snap / "vmstate", bump)
    e = restore_error(snap)
    assert e.errno == errno.EPROTONOSUPPORT and "format 2 is newer" in str(e)


@pytest.mark.parametrize("section", ["config", "memory", "vm", "vcpu", "serial.0", "testdev.0"])
def test_newer_section_version_is_refused(snap, section):
    def bump(h, b):
        target = (b["vcpu"][0] if section == "vcpu" else
                  b["devices"][section] if section in b["devices"] else b[section])
        target["v"] = 99
        return h, b
    rewrite(snap / "vmstate", bump)
    e = restore_error(snap, Backend.UFFD)
    assert e.errno == errno.EPROTONOSUPPORT
    assert f"section {section} is version 99" in str(e) and "upgrade vmmd" in str(e)


def test_snapshot_of_other_arch_is_refused(snap):
    def other(h, b):
        h[2] = 2
        return h, b
    rewrite(snap / "vmstate", other)
    assert "snapshot is for aarch64; this host is x86_64" in str(restore_error(snap))


def test_wrong_sized_register_field_is_refused(snap):
    def shrink(h, b):
        b["vcpu"][0]["regs"] = b["vcpu"][0]["regs"][:-8]
        return h, b
    rewrite(snap / "vmstate", shrink)
    assert "field regs" in str(restore_error(snap))


def test_hostile_bitmap_size_is_refused(snap):
    def grow(h, b):
        b["memory"]["bitmap"] += b"\xff" * 64
        return h, b
    rewrite(snap / "vmstate", grow)
    assert "inconsistent" in str(restore_error(snap, Backend.UFFD))


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name.lower())
def test_missing_memory_file_is_refused(snap, backend):
    os.unlink(snap / "memory")
    e = restore_error(snap, backend)
    assert e.errno == errno.ENOENT and "memory file" in str(e)


def test_short_memory_file_is_refused(snap):
    os.truncate(snap / "memory", 4096)
    assert "memory file is 4096 bytes, the snapshot says" in str(restore_error(snap))


def test_missing_parent_of_diff_is_refused(microvm_factory, tmp_path):
    vm = microvm_factory("counter", start=True)
    vm.wait_result_above(1000)
    vm.pause()
    vm.snapshot(tmp_path / "base")
    vm.snapshot(tmp_path / "diff", diff=True)
    os.unlink(tmp_path / "base" / "vmstate")
    e = restore_error(tmp_path / "diff")
    assert "parent of" in str(e) and "not a snapshot" in str(e)


def test_missing_directory_is_refused(tmp_path):
    assert restore_error(tmp_path / "nowhere").errno == errno.ENOENT


def test_failed_restore_leaves_running_vm_alone(microvm_factory, snap):
    vm = microvm_factory("counter", start=True)
    v = vm.wait_result_above(1000)
    (snap / "vmstate").write_bytes(b"garbage")
    restore_error(snap)
    assert vm.state == State.RUNNING
    assert vm.wait_result_above(v) > v


def test_killed_uffd_handler_fails_vm(microvm_factory, snap):
    vm = microvm_factory.restore(snap, Backend.UFFD)
    vm.start()
    time.sleep(0.02)
    vm.inject(lib.VMM_INJECT_UFFD_HANDLER_DEATH)
    info = vm.wait(10)
    assert info.state == State.FAILED and info.reason == StopReason.ERROR
    assert "userfaultfd handler died" in info.message
    with pytest.raises(VmmError, match="no longer truthful"):
        vm.mem_read(0, 4096)


def test_memory_file_truncated_under_uffd_vm_fails_it(microvm_factory, snap):
    vm = microvm_factory.restore(snap, Backend.UFFD)
    os.truncate(snap / "memory", 0)
    vm.start()
    info = vm.wait(10)
    assert info.state == State.FAILED
    assert "memory file of layer 0 cannot give page" in info.message


def test_corrupt_working_set_is_refused(snap, tmp_path):
    ws = tmp_path / "ws"
    ws.write_bytes(b"VMMDWSET" + b"\x01\x00\x00\x00" + b"\xff\xff\xff\x00" + b"\x00" * 8)
    with pytest.raises(VmmError, match="corrupt"):
        VM.restore(snap, Backend.UFFD, working_set=ws, devices=guest_devices())


def test_handler_death_after_guest_exit_keeps_the_exit(microvm_factory, tmp_path):
    vm = microvm_factory("counter", iterations=400_000_000, start=True)
    vm.wait_result_above(100_000)
    vm.pause()
    vm.snapshot(tmp_path / "s")
    restored = microvm_factory.restore(tmp_path / "s", Backend.UFFD)
    restored.start()
    assert restored.wait(30).reason == StopReason.GUEST_EXIT      # threads joined
    restored.inject(lib.VMM_INJECT_UFFD_HANDLER_DEATH)           # kicks nobody, crashes nothing
    time.sleep(0.05)
    info = restored.wait(5)
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0
