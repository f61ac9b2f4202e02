"""Shared bench fixtures: snapshots of the beacon guest, and a ratio table printed at the end.

Every target is a ratio against a baseline measured in the same run, never an absolute time:
these machines are noisy.
"""
from __future__ import annotations

import os
import statistics
import struct
import sys
import time

import msgpack
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
os.environ.setdefault("VMMD_NATIVE", "test")   # bench floors and the debug devices

from guests import DATA, LOAD_GPA, PARAMS, RESULTS, STACK_TOP, build, devices  # noqa: E402,F401

RESULTS_TABLE: list[tuple[str, str, float, str]] = []


def report(group: str, name: str, value: float, note: str = "") -> None:
    RESULTS_TABLE.append((group, name, value, note))


def bench_in_host(arch: str, script: str, tmp_path, env: dict | None = None,
                  binds: tuple = (), mem_mb: int = 4096, timeout: float = 1500) -> dict:
    """Runs benches/<script> inside an emulated `arch` host against a Linux guest (the cloud
    kernel, vmmd's initramfs, a busybox root disk, built here) and returns the JSON of its last
    `BENCH <json>` line; output and console are kept in tmp_path."""
    import json
    import shlex

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
    import hosts
    from vmmd.images import initramfs, paths
    from vmmd.images.rootfs import busybox_rootfs
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    kernel = paths.guest_kernel(arch).image
    initrd = initramfs.build(arch)
    disk = busybox_rootfs(paths.busybox(arch), tmp_path / "root.ext4", size_mb=128)
    cmd = " ".join(shlex.quote(str(x)) for x in (
        hosts.python(arch), os.path.join(root, "benches", script), kernel, initrd, disk))
    r = hosts.run(arch, f"cd {shlex.quote(root)} && {cmd} 2>&1", timeout=timeout, mem_mb=mem_mb,
                  env={"PYTHONUNBUFFERED": "1", "VMMD_NATIVE": "", **(env or {})},
                  binds=[str(kernel.parent), str(initrd.parent), str(tmp_path), *binds])
    (tmp_path / "output.txt").write_text(r.output + "\n--- host console ---\n" + r.console)
    lines = [ln for ln in r.output.splitlines() if ln.startswith("BENCH ")]
    assert r.ok and lines, r.output[-5000:] + r.console[-2000:]
    return json.loads(lines[-1][len("BENCH "):])


def median(xs):
    return statistics.median(xs)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS_TABLE:
        return
    tr = terminalreporter
    tr.section("vmmd bench ratios (same-run baselines)")
    for group, name, value, note in RESULTS_TABLE:
        tr.write_line(f"{group:28} {name:44} {value:10.3f}  {note}")


@pytest.fixture(scope="session")
def guest_snapshot(tmp_path_factory):
    """guest_snapshot(guest, mem, **params) -> (dir, vCPU 0 regs): a snapshot taken mid-run."""
    from vmmd.native import VM

    made = {}

    def make(guest: str, mem: int, fill_pages: int = 0, mark: int | None = None, **p):
        key = (guest, mem, fill_pages, mark, tuple(sorted(p.items())))
        if key in made:
            return made[key]
        d = tmp_path_factory.mktemp(f"{guest}-{mem >> 20}m")
        vm = VM.create(1, mem, devices=devices())
        vm.mem_write(PARAMS, struct.pack("<6Q", p.get("go", 0), 0, p.get("pages", 0),
                                         p.get("stride", 1), p.get("write", 0), 0))
        for i in range(fill_pages):   # distinct content, so nothing is a hole in the file
            vm.mem_write(DATA + i * 4096, struct.pack("<Q", i + 1) * 512)
        vm.load_flat(build(guest), LOAD_GPA, stack_top=STACK_TOP)
        vm.start()
        if mark is not None:
            while vm.stats()["debug_mark"] != mark:
                time.sleep(0.001)
        else:
            while vm.stats()["serial_bytes"] < 100:
                pass
        vm.pause()
        vm.snapshot(d)
        blob = (d / "vmstate").read_bytes()
        body = msgpack.unpackb(blob[24:-4], raw=False)
        vm.close()
        made[key] = (d, body["vcpu"][0]["regs"])
        return made[key]

    return make
