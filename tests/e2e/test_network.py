"""Guest networking on real Linux guests: in each emulated KVM host a MicroVM with virtio-net
behind its own passt, and tests/e2e/inhost_network.py checks it from inside the host: DHCP, DNS
through the backend, a 50 MiB download with its checksum, a guest HTTP server reached through an
exposed port, the egress policy (default, deny-all, allow list, changed while running), a guest
sending thousands of hostile frames (tests/guests/garbage_frames.c) that harm neither the VMM nor
passt, and two restored copies with their own MACs. Everything is built here first (the hosts have no
compiler)."""
from __future__ import annotations


import pytest

from vmmd.images.rootfs import busybox_rootfs
from vmmd.images import initramfs, paths

pytestmark = pytest.mark.e2e


def garbage_tool(arch: str, tmp_path) -> str:
    """tests/guests/garbage_frames.c for the guest (the hosts have no compiler)."""
    import subprocess

    import hosts
    from vmmd.images.agentbuild import compiler
    out = tmp_path / "garbage_frames"
    subprocess.run([compiler(arch), "-static", "-O2", "-o", str(out),
                    str(hosts.ROOT / "tests" / "guests" / "garbage_frames.c")], check=True)
    return str(out)


def run_in_host(testhost, arch: str, tmp_path, timeout: float):
    return testhost(arch).guest_pytest("tests/e2e/inhost_network.py", tmp_path,
                                       prefix="vmmd-net", what="network", timeout=timeout,
                                       env={"VMMD_GARBAGE_FRAMES": garbage_tool(arch, tmp_path)})


# the host's timeout well inside pytest's (docs/emulated-hosts.md, "timeouts")
@pytest.mark.timeout(1300)
def test_x86_64_guest_network(testhost, tmp_path):
    r = run_in_host(testhost, "x86_64", tmp_path, timeout=540)
    assert r.passed_cleanly, r.output[-6000:] + r.console[-2000:]


@pytest.mark.timeout(2200)
def test_aarch64_guest_network(testhost, tmp_path):
    r = run_in_host(testhost, "aarch64", tmp_path, timeout=960)
    assert r.passed_cleanly, r.output[-6000:] + r.console[-2000:]


@pytest.mark.timeout(1500)
def test_daemon_launches_networked_microvms_with_policy_ports_and_wake(testhost, tmp_path):
    """tests/e2e/inhost_daemon_network.py: Launch with a policy and an exposed port, a download,
    Connect(network), SetEgress, and after a suspend a new MAC and the network back."""
    import hosts
    kernel, initrd = paths.guest_kernel("x86_64").image, initramfs.build("x86_64")
    disk = busybox_rootfs(paths.busybox("x86_64"), tmp_path / "root.ext4", size_mb=128)
    checks, out, r = testhost("x86_64").script(
        hosts.ROOT / "tests" / "e2e" / "inhost_daemon_network.py", kernel, initrd, disk,
        what="daemon + network", timeout=600, keep=tmp_path,
        binds=[str(kernel.parent), str(initrd.parent), str(tmp_path)])
    assert checks.get("done") == "True", out[-6000:] + r.console[-2000:]
    for name in ("image_net", "mac_set", "port_forwarded", "download_intact",
                 "guest_mac_is_launch_mac", "connect_network", "egress_reported",
                 "deny_all_blocks", "allow_again", "network_after_wake", "new_mac_after_wake",
                 "policy_kept_across_wake", "connect_network_after_wake",
                 "vmmctl_port_forward_network", "vmmctl_port_forward_agent"):
        assert checks[name] == "True", (name, out[-6000:])
    assert checks["unexposed_port"] == "FAILED_PRECONDITION"
    assert checks["bad_entry"] == "INVALID_ARGUMENT"
    assert checks["suspended"] == "MICROVM_STATE_SUSPENDED"
    assert "runner_status=0" in out
