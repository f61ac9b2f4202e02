"""Runs INSIDE an emulated KVM host (benches/bench_build.py starts it): builds the Flask image of
tests/e2e/inhost_build.py (its base pushed to a docker-registry on this host's loopback), builds
it again unchanged, then launches sessions from it three ways (mmap; uffd; uffd with the working
set the build recorded) and times each to the app's first HTTP answer, counting the uffd faults
taken until then. The cold baseline is the build's own initialization of the same image: a boot
of its root filesystem plus the app's start to ready, in this run. Prints `BENCH <json>`.

Args: kernel initrd disk (the disk is unused); VMMD_BASE_LAYOUT: the base's OCI layout.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from images_support import push, registry  # noqa: E402
from inhost_build import APP, WORK, build, session  # noqa: E402
from vmmd.native import Backend  # noqa: E402

ROUNDS = 2


async def launch(res, arch: str, kernel: str, initrd: str, mode: str, name: str) -> dict:
    backend = Backend.MMAP if mode == "mmap" else Backend.UFFD
    ws = res.working_set if mode == "uffd+ws" else None
    body, took, st = await session(res, arch, kernel, initrd, name, backend, ws)
    assert body.startswith("hello from app v1"), body
    return {"to_http_s": round(took, 3), "uffd_faults": st["uffd_faults"],
            "uffd_pages": st["uffd_pages"]}


def step_seconds(rec) -> dict:
    """Each step's time from the build's progress: "n/m KIND" -> seconds."""
    kinds, out = {}, {}
    for e in rec.events:
        step, log = str(e.get("step")), str(e.get("log", ""))
        if "/" in step and log != "done":
            kinds[step] = log.split(" ", 1)[0]
        elif "/" in step and "seconds" in e:
            out[f"{step} {kinds.get(step, '?')}"] = e["seconds"]
        elif step in ("FROM", "initialize", "validate", "build VM") and "seconds" in e:
            out[step] = e["seconds"]
    return out


async def main() -> None:
    kernel, initrd = sys.argv[1:3]
    arch = platform.machine()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    with registry() as reg:
        base = reg.ref("flask-base:latest")
        push(os.environ["VMMD_BASE_LAYOUT"], base, "latest")
        res, rec, first = await build(base, APP, f"{WORK}/image1", arch, kernel, initrd)
        _, _, again = await build(base, APP, f"{WORK}/image2", arch, kernel, initrd)
    out = {"build_first_s": round(first, 2), "build_unchanged_s": round(again, 2),
           "build_timings": res.timings, "steps": step_seconds(rec),
           "cold_boot_plus_app_ready_s": round(res.timings.get("init_boot_s", 0) +
                                               res.timings.get("app_ready_s", 0), 3),
           "working_set": res.working_set is not None}
    for mode in ("mmap", "uffd", "uffd+ws"):
        if mode == "uffd+ws" and res.working_set is None:
            continue
        runs = [await launch(res, arch, kernel, initrd, mode, f"{mode}-{i}")
                for i in range(ROUNDS)]
        out[mode] = runs
        print(f"{mode}: {runs}", flush=True)
    print("BENCH " + json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
