"""The smallest proof a host's KVM runs our guests: hello on this machine's architecture.

It runs on the development machine and inside each emulated host (tests/e2e)."""
import pytest

from guests import devices as guest_devices

from guests import ARCH, build, machine_arch
from vmmd.native import VM, StopReason

pytestmark = pytest.mark.kvm


def test_hello_guest_prints_and_exits():
    arch = machine_arch()
    a = ARCH[arch]
    with VM.create(1, 64 << 20, devices=guest_devices()) as vm:
        vm.load_flat(build("hello", arch), a["load"], stack_top=a["stack"])
        vm.start()
        info = vm.wait(60)
        out = vm.serial_read()
    assert info.reason == StopReason.GUEST_EXIT and info.exit_code == 0, info
    assert out.startswith(b"hello from the vmmd") and out.endswith(b"test guest\n"), out
