"""Guest networking in the emulated KVM hosts: TCP through vmmd's virtio-net and passt against
the host's loopback and against QEMU's virtio-net on the same passt backend, same guest, same
run (benches/inhost_network_bench.py measures; this prints the ratios).

    ./scripts/test.sh benches/bench_network.py -s        # both hosts, ~10 min

Targets (issue 9): vmmd at least as fast as QEMU both ways; latency of a small request and
response (p50, p99) against loopback, reported.
"""
from __future__ import annotations

import json

import pytest

from conftest import bench_in_host, report

pytestmark = pytest.mark.timeout(1800)


def run_in_host(arch: str, tmp_path) -> dict:
    from vmmd.images import paths
    bb = paths.busybox(arch)          # the loopback baseline's httpd, the guest's own busybox
    return bench_in_host(arch, "inhost_network_bench.py", tmp_path,
                         env={"VMMD_BUSYBOX": str(bb)}, binds=(str(bb.parent),))


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_network_against_loopback_and_qemu(benchmark, tmp_path, arch):
    res = benchmark.pedantic(lambda: run_in_host(arch, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(f"\n{arch}: {json.dumps(res)}")
    v, q, lo = res["vmmd"], res["qemu"], res["loopback"]
    g = f"network ({arch})"
    for d, name in (("g2h", "guest -> host"), ("h2g", "host -> guest")):
        report(g, f"TCP {name}: vmmd / QEMU", v[f"{d}_MiB_s"] / q[f"{d}_MiB_s"],
               f"target >= 1 ({v[f'{d}_MiB_s']} vs {q[f'{d}_MiB_s']} MiB/s, "
               f"{res['bulk_MiB']} MiB)")
        report(g, f"TCP {name}: vmmd / loopback", v[f"{d}_MiB_s"] / lo[f"{d}_MiB_s"],
               f"({v[f'{d}_MiB_s']} vs {lo[f'{d}_MiB_s']} MiB/s)")
    for p in ("p50", "p99"):
        report(g, f"request latency {p}: vmmd / loopback", v[f"{p}_ms"] / lo[f"{p}_ms"],
               f"({v[f'{p}_ms']} vs {lo[f'{p}_ms']} ms; QEMU {q[f'{p}_ms']} ms)")
