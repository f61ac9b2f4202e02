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

from vmmd.microvm import LinuxSpec, MicroVM
from vmmd.v1 import images_pb2 as ipb, images_pb2_grpc
from vmmd.v1 import microvms_pb2 as mpb, microvms_pb2_grpc
from vmmd.v1 import types_pb2 as tpb

WORK = "/tmp/daemon-linux"
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
                'log_level = "info"\n')
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


def exec_(vms, vm_id: str, argv: list[str], stdin: bytes = b"") -> tuple[bytes, int]:
    def reqs():
        yield mpb.ExecRequest(start=mpb.ExecStart(microvm_id=vm_id, argv=argv))
        if stdin:
            yield mpb.ExecRequest(stdin=stdin)
        yield mpb.ExecRequest(close_stdin=True)
    out, code = b"", None
    for r in vms.Exec(reqs(), timeout=300):
        if r.WhichOneof("msg") == "stdout":
            out += r.stdout
        elif r.WhichOneof("msg") == "exit":
            code = r.exit.code
    return out, code


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    asyncio.run(make_image_snapshot(kernel, initrd, rootfs))
    daemon = start_daemon()
    try:
        ch = grpc.insecure_channel(f"unix:{SOCK}")
        images = images_pb2_grpc.ImageServiceStub(ch)
        vms = microvms_pb2_grpc.MicroVMServiceStub(ch)
        t0 = time.monotonic()
        img = images.RegisterImage(ipb.RegisterImageRequest(name="linux", snapshot=ipb.SnapshotSource(
            snapshot_dir=f"{WORK}/image-snap", kernel=kernel, initrd=initrd, rootfs=rootfs,
            devices=ipb.DeviceConfig(linux=True), agent=ipb.GuestAgent(present=True))))
        timing("register_image", t0)
        t0 = time.monotonic()
        a = vms.Launch(mpb.LaunchRequest(image_id=img.id, labels={"who": "a"}))
        timing("launch_a", t0)
        check("launch_state", tpb.MicroVMState.Name(a.state))
        t0 = time.monotonic()
        out, code = exec_(vms, a.id, ["uname", "-m"])
        timing("exec_uname", t0)
        check("uname", out.decode().strip())
        out, code = exec_(vms, a.id, ["sh", "-c", "cat; exit 7"], stdin=b"through stdin\n")
        check("cat_stdin", out.decode().strip().replace(" ", "_"))
        check("exit_code", code)
        out, _ = exec_(vms, a.id, ["cat", "/data/from-image"])
        check("from_image", out.decode().strip().replace(" ", "_"))
        payload = os.urandom(3 << 20)
        vms.WriteFile(iter([
            mpb.WriteFileRequest(start=mpb.WriteFileStart(microvm_id=a.id, path="/data/session")),
            *[mpb.WriteFileRequest(data=payload[i:i + (1 << 20)])
              for i in range(0, len(payload), 1 << 20)]]), timeout=120)
        back = b"".join(c.data for c in vms.ReadFile(
            mpb.ReadFileRequest(microvm_id=a.id, path="/data/session"), timeout=120))
        check("file_round_trip", back == payload)
        exec_(vms, a.id, ["sync"])
        t0 = time.monotonic()
        s = vms.Suspend(mpb.SuspendRequest(microvm_id=a.id), timeout=300)
        timing("suspend", t0)
        check("suspended_state", tpb.MicroVMState.Name(s.state))
        time.sleep(3)                    # the guest clock must not lag by this after resume
        t0 = time.monotonic()
        out, _ = exec_(vms, a.id, ["sha256sum", "/data/session"])   # resumes it
        timing("exec_resuming_a_suspended_vm", t0)
        import hashlib
        check("file_after_resume", out.split()[0].decode() == hashlib.sha256(payload).hexdigest())
        before = time.time()            # busybox date has whole seconds only
        out, _ = exec_(vms, a.id, ["date", "+%s"])
        check("clock_skew_ok", int(before) - 1 <= int(out) <= int(time.time()) + 1)
        check("state_after_exec", tpb.MicroVMState.Name(
            vms.Get(mpb.GetRequest(microvm_id=a.id)).state))
        b = vms.Launch(mpb.LaunchRequest(image_id=img.id, labels={"who": "b"}))
        try:
            vms.ReadFile(mpb.ReadFileRequest(microvm_id=b.id, path="/data/session")).next()
            check("b_sees_a_file", True)
        except grpc.RpcError as e:
            check("b_sees_a_file", grpc.StatusCode.NOT_FOUND.name if e.code() ==
                  grpc.StatusCode.NOT_FOUND else f"{e.code().name}:{e.details()}")
        out, _ = exec_(vms, b.id, ["cat", "/proc/sys/kernel/random/uuid"])
        out_a, _ = exec_(vms, a.id, ["cat", "/proc/sys/kernel/random/uuid"])
        check("uuids_differ", out != out_a)
        for vm in (a, b):
            vms.Terminate(mpb.TerminateRequest(microvm_id=vm.id))
        check("done", True)
    finally:
        daemon.terminate()
        daemon.wait(30)
        print("--- vmmd log (tail) ---\n" + open(f"{WORK}/vmmd.log").read()[-4000:], flush=True)


if __name__ == "__main__":
    main()
