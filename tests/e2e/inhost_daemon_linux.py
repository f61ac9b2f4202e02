"""Runs INSIDE the emulated x86_64 KVM host (tests/e2e/test_daemon_linux.py starts it there):
`vmmd serve` with real workers (seccomp enforcing) running Linux MicroVMs, driven over gRPC as a
scheduler would. Prints `CHECK <name> <value>` lines the outer test asserts on, and `TIME` lines.

Argv: kernel initrd rootfs.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import grpc

from vmmd.client import Client
from vmmd.microvm import LinuxSpec, MicroVM
from vmmd.v1 import images_pb2 as ipb
from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import types_pb2 as tpb

WORK = "/tmp/daemon-linux"
IDLE_S = 5           # the daemon's min_idle_s is lowered to allow it
RUNTIME_S = 30
SOCK = f"{WORK}/vmmd.sock"


def check(name: str, value) -> None:
    print(f"CHECK {name} {value}", flush=True)


def timing(name: str, t0: float) -> None:
    print(f"TIME {name} {(time.monotonic() - t0) * 1000:.0f} ms", flush=True)


async def make_image_snapshot(kernel: str, initrd: str, rootfs: str) -> None:
    vm = MicroVM.boot(LinuxSpec("x86_64", kernel, initrd, rootfs), f"{WORK}/build")
    try:
        await vm.wait_ready(300)
        await vm.agent.write_file("/data/from-image", b"baked in\n", sync=True)
        await vm.snapshot(f"{WORK}/image-snap", keep_running=False)
    finally:
        vm.close()


def mount_cgroup2() -> None:
    """The emulated host's init mounts no cgroups; a Debian 12 host has cgroup2 here."""
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)


def start_daemon() -> subprocess.Popen:
    mount_cgroup2()
    cfg = f"{WORK}/vmmd.toml"
    with open(cfg, "w") as f:
        f.write(f'socket = "{SOCK}"\nseccomp = "enforce"\nreserved_memory_mib = 256\n'
                'log_level = "info"\nmin_idle_s = 2\n')
    log = open(f"{WORK}/vmmd.log", "ab")
    p = subprocess.Popen([sys.executable, "-m", "vmmd.cli", "serve", "--state-dir",
                          f"{WORK}/state", "--config", cfg], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(SOCK):
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"vmmd serve did not come up:\n{open(f'{WORK}/vmmd.log').read()}")
        time.sleep(0.1)
    return p


def exec_(c: Client, vm_id: str, argv: list[str], stdin: bytes = b"") -> tuple[bytes, int]:
    r = c.exec(vm_id, argv, stdin)
    return r.stdout, r.code


def mapped_kib(pid: int, ino: int) -> tuple[int, int]:
    """Rss and Pss (KiB) of a process's mappings of the file with inode `ino`."""
    rss = pss = 0
    mine = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
                mine = head[4] == str(ino)
            elif mine and head[0] == "Rss:":
                rss += int(head[1])
            elif mine and head[0] == "Pss:":
                pss += int(head[1])
    return rss, pss


def private_dirty_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def sharing(c: Client, image_id: str) -> None:
    """Two sessions of one image (mmap restores, each in its own worker, the default idle
    policy so neither is suspended meanwhile): the image's clean memory pages are mapped by
    both (Pss below Rss), its root filesystem is one file both read, and a write in one
    becomes that session's own memory only."""
    a_id = c.vms.Launch(mpb.LaunchRequest(image_id=image_id, labels={"who": "share-a"})).id
    b_id = c.vms.Launch(mpb.LaunchRequest(image_id=image_id, labels={"who": "share-b"})).id
    try:
        measure_sharing(c, image_id, a_id, b_id)
    finally:
        for i in (a_id, b_id):
            c.vms.Terminate(mpb.TerminateRequest(microvm_id=i))


def measure_sharing(c: Client, image_id: str, a_id: str, b_id: str) -> None:
    exec_(c, a_id, ["ls", "/"])               # both guests running their agents
    exec_(c, b_id, ["ls", "/"])
    state = f"{WORK}/state"
    mem = os.stat(f"{state}/images/{image_id}/snapshot/memory").st_ino
    rootfs = os.stat(f"{state}/images/{image_id}/rootfs")
    pids = {n: c.vms.Get(mpb.GetRequest(microvm_id=i)).worker_pid
            for n, i in (("a", a_id), ("b", b_id))}
    kib = {n: mapped_kib(p, mem) for n, p in pids.items()}
    print(f"image memory mapped (Rss, Pss KiB): {kib}", flush=True)
    check("image_pages_shared", all(0 < pss < rss for rss, pss in kib.values()))
    opened = {}
    for n, p in pids.items():
        fds = [os.stat(f"/proc/{p}/fd/{fd}") for fd in os.listdir(f"/proc/{p}/fd")]
        opened[n] = any((st.st_dev, st.st_ino) == (rootfs.st_dev, rootfs.st_ino) for st in fds)
    overlays = {n: os.stat(f"{state}/vms/{i}/disk.overlay").st_blocks * 512 >> 20
                for n, i in (("a", a_id), ("b", b_id)) if os.path.exists(
                    f"{state}/vms/{i}/disk.overlay")}
    print(f"rootfs open in workers: {opened}; overlays MiB: {overlays}; rootfs MiB: "
          f"{rootfs.st_blocks * 512 >> 20}", flush=True)
    check("base_disk_shared", all(opened.values()))
    before = {n: private_dirty_kib(p) for n, p in pids.items()}
    exec_(c, b_id, ["sh", "-c", "dd if=/dev/zero of=/run/fill bs=1M count=64 2>/dev/null; sync"])
    after = {n: private_dirty_kib(p) for n, p in pids.items()}
    grew = {n: (after[n] - before[n]) >> 10 for n in pids}
    print(f"private dirty growth after b wrote 64 MiB (MiB): {grew}", flush=True)
    check("write_diverges", grew["b"] >= 32 and grew["a"] < 8)
    exec_(c, b_id, ["rm", "-f", "/run/fill"])


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    asyncio.run(make_image_snapshot(kernel, initrd, rootfs))
    daemon = start_daemon()
    try:
        c = Client(SOCK)
        images, vms = c.images, c.vms
        t0 = time.monotonic()
        img = images.RegisterImage(ipb.RegisterImageRequest(name="linux", snapshot=ipb.SnapshotSource(
            snapshot_dir=f"{WORK}/image-snap", kernel=kernel, initrd=initrd, rootfs=rootfs,
            devices=ipb.DeviceConfig(linux=True), agent=ipb.GuestAgent(present=True))))
        timing("register_image", t0)
        t0 = time.monotonic()
        idle = tpb.IdlePolicy()
        idle.max_idle.FromSeconds(IDLE_S)
        a = vms.Launch(mpb.LaunchRequest(image_id=img.id, labels={"who": "a"}, idle=idle))
        timing("launch_a", t0)
        check("launch_state", tpb.MicroVMState.Name(a.state))
        t0 = time.monotonic()
        out, code = exec_(c, a.id, ["uname", "-m"])
        timing("exec_uname", t0)
        check("uname", out.decode().strip())
        out, code = exec_(c, a.id, ["sh", "-c", "cat; exit 7"], stdin=b"through stdin\n")
        check("cat_stdin", out.decode().strip().replace(" ", "_"))
        check("exit_code", code)
        out, _ = exec_(c, a.id, ["cat", "/data/from-image"])
        check("from_image", out.decode().strip().replace(" ", "_"))
        payload = os.urandom(3 << 20)
        c.write_file(a.id, "/data/session", payload)
        back = c.read_file(a.id, "/data/session")
        check("file_round_trip", back == payload)
        # a process that must outlive the suspend: it counts into a file
        exec_(c, a.id, ["sh", "-c", "setsid sh -c 'while :; do echo x >> /run/ticks; sleep 1; "
                                    "done' > /dev/null 2>&1 < /dev/null & echo $! > /run/ticker.pid"])
        pid = c.read_file(a.id, "/run/ticker.pid").strip()
        exec_(c, a.id, ["sync"])
        t0 = time.monotonic()             # no request now: the idle policy suspends it
        state = ""
        while time.monotonic() - t0 < 120 and "SUSPENDED" not in state:
            time.sleep(0.5)
            state = tpb.MicroVMState.Name(vms.List(mpb.ListRequest(labels={"who": "a"})
                                                   ).microvms[0].state)
        timing("idle_suspend_after_last_request", t0)
        check("suspended_state", state)
        time.sleep(3)                    # the guest clock must not lag by this after resume
        t0 = time.monotonic()
        out, _ = exec_(c, a.id, ["sha256sum", "/data/session"])   # resumes it
        timing("exec_resuming_a_suspended_vm", t0)
        import hashlib
        check("file_after_resume", out.split()[0].decode() == hashlib.sha256(payload).hexdigest())
        before = time.time()            # busybox date has whole seconds only
        out, _ = exec_(c, a.id, ["date", "+%s"])
        check("clock_skew_ok", int(before) - 1 <= int(out) <= int(time.time()) + 1)
        check("state_after_exec", tpb.MicroVMState.Name(
            vms.Get(mpb.GetRequest(microvm_id=a.id)).state))
        alive, _ = exec_(c, a.id, ["sh", "-c", f"kill -0 {pid.decode()} && echo alive"])
        ticks = c.read_file(a.id, "/run/ticks").count(b"x")
        time.sleep(2)
        check("process_survived", alive.strip() == b"alive"
              and c.read_file(a.id, "/run/ticks").count(b"x") > ticks)
        b_req = mpb.LaunchRequest(image_id=img.id, labels={"who": "b"})
        b_req.max_runtime.FromSeconds(RUNTIME_S)
        b = vms.Launch(b_req)
        try:
            vms.ReadFile(mpb.ReadFileRequest(microvm_id=b.id, path="/data/session")).next()
            check("b_sees_a_file", True)
        except grpc.RpcError as e:
            check("b_sees_a_file", grpc.StatusCode.NOT_FOUND.name if e.code() ==
                  grpc.StatusCode.NOT_FOUND else f"{e.code().name}:{e.details()}")
        out, _ = exec_(c, b.id, ["cat", "/proc/sys/kernel/random/uuid"])
        out_a, _ = exec_(c, a.id, ["cat", "/proc/sys/kernel/random/uuid"])
        check("uuids_differ", out != out_a)
        t0 = time.monotonic()            # b's runtime cap ends it
        while time.monotonic() - t0 < 180:
            got = vms.Get(mpb.GetRequest(microvm_id=b.id))
            if got.state == tpb.MICROVM_STATE_TERMINATED:
                break
            time.sleep(0.5)
        check("b_runtime_cap", tpb.MicroVMState.Name(got.state) + ":" +
              ("runtime" if "runtime" in got.reason else got.reason.replace(" ", "_")))
        sharing(c, img.id)     # after b ended: fewer guests at once in this emulated host
        vms.Terminate(mpb.TerminateRequest(microvm_id=a.id))
        seen = []
        call = vms.WatchEvents(mpb.WatchEventsRequest(microvm_id=a.id, replay=True), timeout=10)
        try:
            for ev in call:
                if ev.type == tpb.EVENT_TYPE_STATE_CHANGED:
                    seen.append(tpb.MicroVMState.Name(ev.to_state).removeprefix("MICROVM_STATE_"))
                if ev.to_state == tpb.MICROVM_STATE_TERMINATED:
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        check("a_transitions", ",".join(seen))
        check("done", True)
    finally:
        daemon.terminate()
        daemon.wait(30)
        print("--- vmmd log (tail) ---\n" + open(f"{WORK}/vmmd.log").read()[-4000:], flush=True)


if __name__ == "__main__":
    main()
