"""The main job as far as the native core reaches: boot a guest, snapshot it, launch copies.

Boots the counter test guest in a 256 MiB VM, snapshots it mid-run, then restores copies with
the mmap and uffd backends, shows each one continuing the count on its own, and prints what
each step cost.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

os.environ.setdefault("VMMD_NATIVE", "test")   # the counter guest talks to the debug devices
from guests import LOAD_GPA, PARAMS, RESULTS, STACK_TOP, build, devices  # noqa: E402
from vmmd.native import VM, Backend, native_version  # noqa: E402

MEM = 256 << 20


def counter(vm: VM) -> int:
    return struct.unpack("<Q", vm.mem_read(RESULTS, 8))[0]


def ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:7.2f} ms"


def main() -> int:
    print(f"{native_version()}, guest memory {MEM >> 20} MiB")
    work = pathlib.Path(tempfile.mkdtemp(prefix="vmmd-demo-"))
    try:
        t0 = time.perf_counter()
        vm = VM.create(1, MEM, track_dirty=True, devices=devices())
        vm.mem_write(PARAMS, struct.pack("<6Q", 0, 0, 1024, 1, 0, (1 << 26) - 1))
        vm.load_flat(build("counter"), LOAD_GPA, stack_top=STACK_TOP)
        vm.start()
        print(f"cold boot            {ms(t0)}")
        time.sleep(0.3)
        vm.pause()
        at = counter(vm)
        t0 = time.perf_counter()
        vm.snapshot(work / "snap")
        size = sum(f.stat().st_blocks * 512 for f in (work / "snap").iterdir())
        print(f"snapshot             {ms(t0)}   counter at {at:,}, {size >> 10} KiB on disk")
        for backend in (Backend.MMAP, Backend.UFFD):
            copies = []
            for _ in range(3):
                t0 = time.perf_counter()
                c = VM.restore(work / "snap", backend, devices=devices())
                c.start()
                print(f"restore+start {backend.name.lower():4}   {ms(t0)}")
                copies.append(c)
            time.sleep(0.2)
            for i, c in enumerate(copies):
                c.pause()
                st = c.stats()
                print(f"  copy {i}: counter {at:,} -> {counter(c):,}, serial {c.serial_read()[-18:]!r}"
                      f", uffd faults {st['uffd_faults']}")
                c.close()
        vm.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
