"""The Linux part of the main job; runs INSIDE the emulated x86_64 KVM host (scripts/demo.py
starts it there): boot a Debian-kernel MicroVM with vmmd's agent, run code in it, snapshot it,
launch two copies, show that each has the state and diverges after its post-restore sync.

Argv: kernel initrd rootfs.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time

from vmmd.microvm import LinuxSpec, MicroVM

WORK = "/tmp/vmmd-demo"
PROGRAM = ("n=0; for f in /bin/*; do n=$((n+1)); done; "
           "echo \"$(uname -sr) on $(uname -m), $(nproc) vCPUs, $n commands in /bin\"; "
           "echo $((6 * 7)) > /data/answer; sync; sha256sum /data/hello.txt")


def took(t0: float) -> str:
    return f"{(time.monotonic() - t0) * 1000:8.1f} ms"


async def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    shutil.rmtree(WORK, ignore_errors=True)
    spec = LinuxSpec("x86_64", kernel, initrd, rootfs, vcpus=2, mem_mib=256)
    vm = MicroVM.boot(spec, f"{WORK}/vm")
    await vm.wait_ready(300)
    print(f"  cold boot to agent-ready      {took(vm.started)}   (guest CPU is emulated here)")
    t0 = time.monotonic()
    r = await vm.agent.run(["sh", "-c", PROGRAM])
    print(f"  exec in the guest             {took(t0)}   exit {r.code}")
    for line in r.stdout.decode().splitlines():
        print(f"    | {line}")
    t0 = time.monotonic()
    await vm.snapshot(f"{WORK}/snap", keep_running=False)
    size = sum(os.stat(os.path.join(f"{WORK}/snap", f)).st_blocks * 512
               for f in os.listdir(f"{WORK}/snap"))
    print(f"  freeze + snapshot             {took(t0)}   {size >> 20} MiB on disk")
    vm.close()
    for name in ("a", "b"):
        t0 = time.monotonic()
        c = MicroVM.restore(f"{WORK}/snap", spec, f"{WORK}/{name}")
        await c.wait_ready(60)
        print(f"  copy {name}: restore to agent-ready {took(t0)}")
        t0 = time.monotonic()
        await c.agent.sync_after_restore()
        answer = (await c.agent.read_bytes("/data/answer")).decode().strip()
        uuid = (await c.agent.read_bytes("/proc/sys/kernel/random/uuid")).decode().strip()
        print(f"    sync {took(t0)}; /data/answer = {answer}; a fresh uuid: {uuid}")
        c.close()


if __name__ == "__main__":
    asyncio.run(main())
