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
import statistics

import pytest

from conftest import bench_in_host, report

pytestmark = pytest.mark.timeout(1800)      # an emulated host and two VMMs: minutes


def run_in_host(arch: str, tmp_path) -> dict:
    return bench_in_host(arch, "inhost_linux_guest.py", tmp_path)


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
