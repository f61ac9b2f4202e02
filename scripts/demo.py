"""The main job as far as the landed issues reach: boot a guest, snapshot it, launch copies.

1. Here, on the local KVM: the counter test guest in a 256 MiB VM, snapshotted mid-run, copies
   restored with the mmap and uffd backends, each continuing the count on its own.
2. A real Linux MicroVM (Debian's cloud kernel, vmmd's initramfs and agent, an ext4 root on
   virtio-blk, the agent over virtio-vsock) inside the emulated x86_64 KVM host, since Linux
   does not boot on this machine's nested KVM (docs/emulated-hosts.md): code run in it through
   the agent, a snapshot, two copies launched from it (scripts/demo_linux.py).
Each step prints what it cost.
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


def linux_in_host() -> int:
    import shlex
    import hosts
    from vmmd.images import initramfs, paths
    from vmmd.images.rootfs import busybox_rootfs
    print("\nA Linux MicroVM in the emulated x86_64 KVM host:")
    kernel, initrd = paths.guest_kernel("x86_64").image, initramfs.build("x86_64")
    work = pathlib.Path(tempfile.mkdtemp(prefix="vmmd-demo-linux-", dir=paths.cache_root()))
    try:
        disk = busybox_rootfs(paths.busybox("x86_64"), work / "root.ext4", size_mb=64)
        repo = pathlib.Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(repo / "tests"))
        from images_support import base_image
        t0 = time.perf_counter()
        # the Flask app's base: Debian packages made into an OCI image here (cached), pushed to
        # a registry the demo runs on the host's loopback: nothing comes from another registry
        layout = base_image("x86_64", ("python3", "python3-flask", "busybox"))
        print(f"Debian base image (python3, flask) ready in {time.perf_counter() - t0:.1f} s")
        cmd = " ".join(shlex.quote(str(x)) for x in (hosts.python("x86_64"),
                       repo / "scripts" / "demo_linux.py", kernel, initrd, disk, layout))
        t0 = time.perf_counter()
        r = hosts.run("x86_64", f"cd {shlex.quote(str(repo))} && {cmd} 2>&1", timeout=1800,
                      env={"PYTHONUNBUFFERED": "1", "VMMD_NATIVE": ""}, mem_mb=6144,
                      binds=[str(kernel.parent), str(initrd.parent), str(work), str(layout)])
        print(r.output.rstrip())
        if not r.ok:
            print(f"  (the run in the emulated host failed, status {r.status}; its console:)\n"
                  + r.console[-3000:])
        print(f"  (the emulated host booted in {r.boot_seconds} s; the whole run took "
              f"{time.perf_counter() - t0:.1f} s)")
        return 0 if r.ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    rc = local()
    if os.environ.get("VMMD_SKIP_HOSTS"):
        print("\n(VMMD_SKIP_HOSTS is set: no emulated host, so no Linux MicroVM)")
        return rc
    return rc or linux_in_host()


def local() -> int:
    print(f"On the local KVM: {native_version()}, guest memory {MEM >> 20} MiB")
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
