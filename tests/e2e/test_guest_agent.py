"""The guest side on real Linux guests: in each emulated KVM host, the pinned cloud kernel, our
initramfs and agent boot in vmmd's VMM (virtio-mmio blk/vsock/rng, the agent over hybrid vsock)
and under the peer VMM (QEMU with KVM and vhost-vsock), and tests/e2e/inhost_guest_agent.py
checks the agent: exec, files, freeze/thaw of the ext4 root, snapshot, two restores, post-restore
sync. The peer's figures are printed beside vmmd's. Everything is built here first (the hosts
have no compiler)."""
from __future__ import annotations

import os

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


# One snapshot restored a dozen times in a row (tests/e2e/inhost_restore_loop.py): every copy
# answers, keeps its disk, takes writes and does not see the copy before it. About two minutes
# in the aarch64 host. In the x86_64 host the same loop broke the host's own kernel (RCU
# stalls, a soft lockup, a frozen host: QEMU TCG's nested SVM) in 4 of 9 attempts on
# 2026-11-24, so it runs there only when asked (VMMD_E2E_X86_RESTORE_LOOP=1;
# docs/emulated-hosts.md). The limit leaves room for the fixture's reruns of a broken host.
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_every_restore_of_one_snapshot_answers(testhost, tmp_path, arch):
    if arch == "x86_64" and not os.environ.get("VMMD_E2E_X86_RESTORE_LOOP"):
        pytest.skip("breaks the emulated x86_64 host's kernel too often for CI; "
                    "VMMD_E2E_X86_RESTORE_LOOP=1 runs it")
    r = testhost(arch).guest_pytest("tests/e2e/inhost_restore_loop.py", tmp_path,
                                    prefix="vmmd-guest", what="restore loop", timeout=480)
    assert r.passed_cleanly, r.output[-8000:] + r.console[-2000:]
