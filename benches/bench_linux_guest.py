"""Linux MicroVMs in the emulated KVM hosts: vmmd against its own cold boot, against a Unix
socket pair, and against the peer VMM (QEMU) on the same host in the same run
(benches/inhost_linux_guest.py measures; this prints the ratios).

    ./scripts/test.sh benches/bench_linux_guest.py -s        # both hosts, ~10 min

Targets (issue 7): restore to agent-ready >= 50x faster than cold boot to agent-ready; vsock
through the agent >= 50% of a Unix socket pair; restore >= 10x faster than QEMU's restore;
host memory per restored VM <= 1/4 of QEMU's.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import sys

import pytest

from conftest import report

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
pytestmark = pytest.mark.timeout(1800)      # an emulated host and two VMMs: minutes
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run_in_host(arch: str, tmp_path) -> dict:
    import hosts
    from vmmd.images.rootfs import busybox_rootfs
    from vmmd.images import initramfs, paths
    kernel = paths.guest_kernel(arch).image
    initrd = initramfs.build(arch)
    disk = busybox_rootfs(paths.busybox(arch), tmp_path / "root.ext4", size_mb=128)
    script = os.path.join(ROOT, "benches", "inhost_linux_guest.py")
    cmd = " ".join(shlex.quote(str(x)) for x in (hosts.python(arch), script, kernel, initrd,
                                                disk))
    r = hosts.run(arch, f"cd {shlex.quote(ROOT)} && {cmd} 2>&1", timeout=1500,
                  env={"PYTHONUNBUFFERED": "1", "VMMD_NATIVE": ""},
                  binds=[str(kernel.parent), str(initrd.parent), str(tmp_path)])
    (tmp_path / "output.txt").write_text(r.output + "\n--- host console ---\n" + r.console)
    lines = [ln for ln in r.output.splitlines() if ln.startswith("BENCH ")]
    assert r.ok and lines, r.output[-5000:] + r.console[-2000:]
    return json.loads(lines[-1][len("BENCH "):])


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_linux_guest_against_cold_boot_socketpair_and_qemu(benchmark, tmp_path, arch):
    res = benchmark.pedantic(lambda: run_in_host(arch, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(f"\n{arch}: {json.dumps(res)}")
    v, q = res["vmmd"], res["qemu"]
    g = f"linux guest ({arch})"
    restore = statistics.median(v["restore_to_ready_s"])
    q_restore = statistics.median(q["restore_to_ready_s"])
    mem = statistics.median(m["rss"] for m in v["restore_memory_MiB"])
    q_mem = statistics.median(m["rss"] for m in q["restore_memory_MiB"])
    report(g, "cold boot / restore, to agent-ready", v["cold_boot_to_ready_s"] / restore,
           f"target >= 50 ({v['cold_boot_to_ready_s']:.2f} s / {restore * 1e3:.0f} ms)")
    for d in ("host_to_guest", "guest_to_host"):
        x = v[f"{d}_MiB_s"]
        report(g, f"vsock {d.replace('_', ' ')} / socket pair", x / res["socketpair_MiB_s"],
               f"target >= 0.5 ({x} vs {res['socketpair_MiB_s']} MiB/s; qemu vhost "
               f"{q[f'{d}_MiB_s']})")
    report(g, "QEMU restore / vmmd restore", q_restore / restore,
           f"target >= 10 ({q_restore:.2f} s vs {restore * 1e3:.0f} ms)")
    report(g, "vmmd / QEMU host memory (RSS)", mem / q_mem,
           f"target <= 0.25 ({mem:.1f} vs {q_mem:.1f} MiB)")
    report(g, "QEMU cold boot / vmmd cold boot",
           q["cold_boot_to_ready_s"] / v["cold_boot_to_ready_s"],
           f"({q['cold_boot_to_ready_s']:.2f} s vs {v['cold_boot_to_ready_s']:.2f} s)")
