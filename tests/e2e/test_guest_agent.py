"""The guest side on real Linux guests: in each emulated KVM host, the pinned cloud kernel, our
initramfs and agent boot in vmmd's VMM (virtio-mmio blk/vsock/rng, the agent over hybrid vsock)
and under the peer VMM (QEMU with KVM and vhost-vsock), and tests/e2e/inhost_guest_agent.py
checks the agent: exec, files, freeze/thaw of the ext4 root, snapshot, two restores, post-restore
sync. The peer's figures are printed beside vmmd's. Everything is built here first (the hosts
have no compiler)."""
from __future__ import annotations


import pytest


pytestmark = pytest.mark.e2e


def run_in_host(testhost, vmm: str, arch: str, tmp_path, timeout: float):
    return testhost(arch).guest_pytest("tests/e2e/inhost_guest_agent.py", tmp_path,
                                       prefix="vmmd-guest", what="guest agent",
                                       timeout=timeout, env={"VMMD_GUEST_VMM": vmm})


# The host's own timeout well inside pytest's, twice over: a host that hangs (QEMU TCG's nested
# SVM, docs/emulated-hosts.md) then returns its console, and the testhost fixture can tell a
# broken host from a failing test and run it once more. A normal run takes about 2 minutes.
@pytest.mark.timeout(1300)
@pytest.mark.parametrize("vmm", ["vmmd", "qemu"])
def test_x86_64_guest_agent(testhost, tmp_path, vmm):
    r = run_in_host(testhost, vmm, "x86_64", tmp_path, timeout=540)
    assert r.passed_cleanly, r.output[-6000:] + r.console[-2000:]


@pytest.mark.timeout(2000)          # a normal run takes 3-6 minutes
@pytest.mark.parametrize("vmm", ["vmmd", "qemu"])
def test_aarch64_guest_agent(testhost, tmp_path, vmm):
    r = run_in_host(testhost, vmm, "aarch64", tmp_path, timeout=960)
    assert r.passed_cleanly, r.output[-6000:] + r.console[-2000:]
