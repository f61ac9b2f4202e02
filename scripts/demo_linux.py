"""The Linux part of the main job; runs INSIDE the emulated x86_64 KVM host (scripts/demo.py
starts it there), the way an operator would use vmmd:

1. build an image: boot a Linux MicroVM (Debian's cloud kernel, vmmd's initramfs and agent, an
   ext4 root) with vmmd.microvm, let it settle, snapshot it;
2. start `vmmd serve`, register the snapshot with `vmmctl images register --linux`;
3. `vmmctl launch` two MicroVMs from it, `vmmctl exec` real work in them, `vmmctl suspend`
   one, `vmmctl exec` again (which wakes it: its files are still there), terminate.
Prints each command, what it printed, and how long it took.

Argv: kernel initrd rootfs.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

from vmmd.microvm import LinuxSpec, MicroVM

WORK = "/tmp/vmmd-demo"
SOCK = f"{WORK}/vmmd.sock"
WORKLOAD = ("n=0; for f in /bin/*; do n=$((n+1)); done; "
            "echo \"$(uname -sr) on $(uname -m), $(nproc) vCPUs, $n programs in /bin\"; "
            "echo $((6 * 7)) > /data/answer; sha256sum /data/hello.txt")


async def build_image(kernel: str, initrd: str, rootfs: str) -> None:
    t0 = time.monotonic()
    vm = MicroVM.boot(LinuxSpec("x86_64", kernel, initrd, rootfs), f"{WORK}/build")
    try:
        await vm.wait_ready(300)
        boot = time.monotonic() - t0
        t0 = time.monotonic()
        await vm.snapshot(f"{WORK}/image", keep_running=False)
        print(f"image: booted to agent-ready in {boot:.1f} s (guest CPU emulated here), "
              f"snapshot in {time.monotonic() - t0:.2f} s")
    finally:
        vm.close()


def vmmctl(*args: str, show: bool = True) -> str:
    cmd = [sys.executable, "-m", "vmmd.cli", "--socket", SOCK, *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = (time.monotonic() - t0) * 1000
    if show:
        print(f"$ vmmctl {' '.join(a if ' ' not in a else repr(a) for a in args)}   "
              f"[{took:.0f} ms]")
        for line in (r.stdout + r.stderr).rstrip().splitlines():
            print(f"    {line}")
    if r.returncode:
        raise SystemExit(f"vmmctl {args[0]} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    asyncio.run(build_image(kernel, initrd, rootfs))
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):   # the host's init mounts none
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
    with open(f"{WORK}/vmmd.toml", "w") as f:
        f.write(f'socket = "{SOCK}"\nreserved_memory_mib = 256\n')
    log = open(f"{WORK}/vmmd.log", "ab")
    daemon = subprocess.Popen([sys.executable, "-m", "vmmd.cli", "serve", "--state-dir",
                               f"{WORK}/state", "--config", f"{WORK}/vmmd.toml"],
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        while not os.path.exists(SOCK):
            if daemon.poll() is not None:
                raise SystemExit(open(f"{WORK}/vmmd.log").read())
            time.sleep(0.1)
        print(f"vmmd serve: pid {daemon.pid}, {SOCK}")
        t0 = time.monotonic()
        img = json.loads(vmmctl("--json", "images", "register", f"{WORK}/image", "--linux",
                                "--agent", "--rootfs", rootfs, "--kernel", kernel,
                                "--initrd", initrd, "--name", "busybox-demo", show=False))[0]
        print(f"$ vmmctl images register {WORK}/image --linux --agent --rootfs ...   "
              f"[{(time.monotonic() - t0) * 1000:.0f} ms: copies memory and disk into the "
              f"store]\n    {img['id']}")
        vms = []
        for who in ("a", "b"):
            t0 = time.monotonic()
            vm = json.loads(vmmctl("--json", "launch", img["id"], "-l", f"who={who}",
                                   show=False))[0]
            print(f"$ vmmctl launch {img['id']} -l who={who}   "
                  f"[{(time.monotonic() - t0) * 1000:.0f} ms: restore + agent sync]\n"
                  f"    {vm['id']} {vm['state']}")
            vms.append(vm["id"])
        vmmctl("exec", vms[0], "--no-tty", "sh", "-c", WORKLOAD)
        vmmctl("exec", vms[1], "--no-tty", "cat", "/proc/sys/kernel/random/uuid")
        vmmctl("exec", vms[0], "--no-tty", "cat", "/proc/sys/kernel/random/uuid")
        vmmctl("suspend", vms[0])
        vmmctl("exec", vms[0], "--no-tty", "cat", "/data/answer")      # wakes it
        vmmctl("ls")
        for vm in vms:
            vmmctl("terminate", vm, show=False)
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
