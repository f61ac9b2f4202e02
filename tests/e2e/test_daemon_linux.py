"""The daemon end to end with Linux MicroVMs, inside the emulated x86_64 KVM host: `vmmd serve`
with real workers (one process each, seccomp enforcing) registers an image from a Linux
MicroVM's snapshot (cloud kernel, vmmd's initramfs and agent, ext4 root on virtio-blk), launches
MicroVMs from it and runs code in them through the agent over vsock; idle, one is suspended by
its policy and woken by the next Exec with its files, its running processes and a synced clock;
another MicroVM of the same image does not see the first one's files and is ended by its runtime
cap; two more share the image's clean memory pages (Pss below Rss in each worker) and its root
filesystem, and a write in one grows only that one's private memory; WatchEvents shows every
transition (tests/e2e/inhost_daemon_linux.py does the driving)."""
from __future__ import annotations

import pytest

from vmmd.images import initramfs, paths
from vmmd.images.rootfs import busybox_rootfs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]   # room for a rerun of the host


def test_daemon_runs_linux_microvms_through_the_agent_and_suspends_them(testhost, tmp_path):
    import hosts
    kernel, initrd = paths.guest_kernel("x86_64").image, initramfs.build("x86_64")
    disk = busybox_rootfs(paths.busybox("x86_64"), tmp_path / "root.ext4", size_mb=128)
    checks, out, r = testhost("x86_64").script(
        hosts.ROOT / "tests" / "e2e" / "inhost_daemon_linux.py", kernel, initrd, disk,
        what="daemon + Linux MicroVM", timeout=800, keep=tmp_path,
        binds=[str(kernel.parent), str(initrd.parent), str(tmp_path)])
    assert checks.get("done") == "True", out[-6000:] + r.console[-2000:]
    assert checks["launch_state"] == "MICROVM_STATE_RUNNING"
    assert checks["uname"] == "x86_64"
    assert checks["cat_stdin"] == "through_stdin" and checks["exit_code"] == "7"
    assert checks["from_image"] == "baked_in"
    assert checks["file_round_trip"] == "True"
    assert checks["suspended_state"] == "MICROVM_STATE_SUSPENDED"
    assert checks["file_after_resume"] == "True" and checks["clock_skew_ok"] == "True"
    assert checks["state_after_exec"] == "MICROVM_STATE_RUNNING"
    assert checks["process_survived"] == "True"
    assert checks["b_sees_a_file"] == "NOT_FOUND"
    assert checks["uuids_differ"] == "True"
    assert checks["image_pages_shared"] == "True", out[-6000:]
    assert checks["base_disk_shared"] == "True", out[-6000:]
    assert checks["write_diverges"] == "True", out[-6000:]
    assert checks["b_runtime_cap"] == "MICROVM_STATE_TERMINATED:runtime"
    # a, idle again while b ran into its cap, may have been suspended once more: that is its
    # policy too; every step must be a legal one
    seen = checks["a_transitions"].split(",")
    assert seen[:6] == ["LAUNCHING", "RUNNING", "SUSPENDING", "SUSPENDED", "RESUMING",
                        "RUNNING"] and seen[-1] == "TERMINATED", seen
    legal = {("RUNNING", "SUSPENDING"), ("SUSPENDING", "SUSPENDED"), ("SUSPENDED", "RESUMING"),
             ("RESUMING", "RUNNING"), ("RUNNING", "TERMINATED"), ("SUSPENDED", "TERMINATED")}
    assert all(step in legal for step in zip(seen[5:], seen[6:])), seen
    assert "runner_status=0" in out
