"""Image-then-launch in the emulated x86_64 host (benches/inhost_build_bench.py measures; this
prints the ratios): launch from a built image to the app's first HTTP answer against a cold boot
plus app start of the same image, the uffd faults a launch takes with the image's recorded
working set against without, and a cached rebuild against the first build, with each step's time.

    ./scripts/test.sh benches/bench_build.py -s          # ~12 min

Targets (issue 10): launch >= 50x faster than cold; >= 90% fewer faults with the working set.
Only x86_64: the aarch64 host's userland has no skopeo/umoci to pull the base (docs/images.md).
"""
from __future__ import annotations

import json
import statistics

import pytest

from conftest import bench_in_host, report

pytestmark = pytest.mark.timeout(2400)


def test_launch_from_image_against_cold_boot(benchmark, tmp_path):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from images_support import base_image
    layout = base_image("x86_64", ("python3", "python3-flask", "busybox"))
    res = benchmark.pedantic(lambda: bench_in_host(
        "x86_64", "inhost_build_bench.py", tmp_path, env={"VMMD_BASE_LAYOUT": str(layout)},
        binds=(str(layout),), mem_mb=6144, timeout=2000), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print("\n" + json.dumps(res, indent=1))
    g = "image launch (x86_64)"
    cold = res["cold_boot_plus_app_ready_s"]
    for mode in ("mmap", "uffd", "uffd+ws"):
        if mode not in res:
            continue
        t = statistics.median(r["to_http_s"] for r in res[mode])
        report(g, f"cold boot + app ready / launch to HTTP ({mode})", cold / t,
               f"target >= 50 ({cold:.2f} s vs {t:.2f} s)")
    if "uffd+ws" in res:
        with_ws = statistics.median(r["uffd_faults"] for r in res["uffd+ws"])
        without = statistics.median(r["uffd_faults"] for r in res["uffd"])
        report(g, "uffd faults to HTTP: with working set / without", with_ws / max(without, 1),
               f"target <= 0.1 ({with_ws:.0f} vs {without:.0f})")
    report(g, "cached rebuild / first build", res["build_unchanged_s"] / res["build_first_s"],
           f"({res['build_unchanged_s']} vs {res['build_first_s']} s)")
    for step, s in res["steps"].items():
        print(f"  step {step}: {s} s")
