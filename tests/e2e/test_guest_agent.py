"""The guest side on real Linux guests: in each emulated KVM host, the pinned cloud kernel, our
initramfs and agent boot in vmmd's VMM (virtio-mmio blk/vsock/rng, the agent over hybrid vsock)
and under the peer VMM (QEMU with KVM and vhost-vsock), and tests/e2e/inhost_guest_agent.py
checks the agent: exec, files, freeze/thaw of the ext4 root, snapshot, two restores, post-restore
sync. The peer's figures are printed beside vmmd's. Everything is built here first (the hosts
have no compiler)."""
from __future__ import annotations

import re

import pytest

from vmmd.images.rootfs import busybox_rootfs
from vmmd.images import initramfs, paths

pytestmark = pytest.mark.e2e


def run_in_host(testhost, vmm: str, arch: str, tmp_path, timeout: float):
    kernel = paths.guest_kernel(arch).image
    initrd = initramfs.build(arch)
    disk = busybox_rootfs(paths.busybox(arch), tmp_path / "root.ext4", size_mb=128)
    host = testhost(arch)
    r = host.pytest("tests/e2e/inhost_guest_agent.py", "-s",
                    guests=(), timeout=timeout,
                    env={"PYTHONUNBUFFERED": "1",     # what ran shows even if the host hangs
                         "VMMD_GUEST_VMM": vmm,
                         "VMMD_GUEST_KERNEL": str(kernel), "VMMD_GUEST_INITRD": str(initrd),
                         "VMMD_GUEST_DISK": str(disk)},
                    binds=[str(kernel.parent), str(initrd.parent), str(tmp_path)])
    (tmp_path / "inhost-output.txt").write_text(r.output + "\n--- host console ---\n" + r.console)
    for m in re.findall(r"^vmmd-guest: (.*)$", r.output, re.M):
        host.note(f"guest agent: {m}")
    return r


def passed_cleanly(r) -> bool:
    last = r.output.strip().splitlines()[-1] if r.output.strip() else ""
    return r.ok and re.search(r"\d+ passed", last) and not re.search(r"failed|error|skipped", last)


# The host's own timeout well inside pytest's, twice over: a host that hangs (QEMU TCG's nested
# SVM, docs/emulated-hosts.md) then returns its console, and the testhost fixture can tell a
# broken host from a failing test and run it once more. A normal run takes about 2 minutes.
@pytest.mark.timeout(1300)
@pytest.mark.parametrize("vmm", ["vmmd", "qemu"])
def test_x86_64_guest_agent(testhost, tmp_path, vmm):
    r = run_in_host(testhost, vmm, "x86_64", tmp_path, timeout=540)
    assert passed_cleanly(r), r.output[-6000:] + r.console[-2000:]


@pytest.mark.timeout(2000)          # a normal run takes 3-6 minutes
@pytest.mark.parametrize("vmm", ["vmmd", "qemu"])
def test_aarch64_guest_agent(testhost, tmp_path, vmm):
    r = run_in_host(testhost, vmm, "aarch64", tmp_path, timeout=960)
    assert passed_cleanly(r), r.output[-6000:] + r.console[-2000:]
