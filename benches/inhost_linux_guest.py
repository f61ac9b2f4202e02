"""Runs INSIDE an emulated KVM host (benches/bench_linux_guest.py starts it there): the same
Linux guest (cloud kernel, vmmd's initramfs and agent, an ext4 root) in vmmd's VMM and in the
peer VMM (QEMU -accel kvm, vhost-vsock), one after the other, each measured the same way:

    cold boot -> agent answers; host memory at that point
    freeze + snapshot (QEMU: migrate to a file; the VM ends)
    ROUNDS restores -> agent answers; host memory at that point
    vsock through the agent, host->guest (`cat > /dev/null`) and guest->host (`head -c`),
    against a Unix socket pair in this host moving the same bytes (the baseline)

Prints one line `BENCH <json>`. Argv: kernel initrd rootfs.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

from guest_peer import QemuGuest, VmmdGuest, smaps_rollup  # noqa: E402
from vmmd.agent import AgentError  # noqa: E402

ARCH = platform.machine()
MiB = 1 << 20
ROUNDS = 3
STREAM = 16 * MiB if ARCH == "x86_64" else 8 * MiB


async def ready(g, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await g.agent.ping()
            return time.monotonic() - g.started
        except (AgentError, OSError):   # not up yet
            pass
        if not g.alive() or time.monotonic() > deadline:
            raise SystemExit(f"{g.vmm}: no agent: {g.stop()}\n{g.console_text()[-3000:]}")
        await asyncio.sleep(0.01)


def memory(g, before: dict) -> dict:
    m = g.memory()
    if g.vmm == "vmmd":          # in this process: what the VM added
        m = {k: m[k] - before[k] for k in m}
    return {k: round(v / MiB, 1) for k, v in m.items()}


async def throughput(agent) -> dict:
    data = os.urandom(1 * MiB)
    p = await agent.exec(["sh", "-c", "cat > /dev/null"])
    t0 = time.monotonic()
    for _ in range(STREAM // len(data)):
        await p.write(data)
    await p.close_stdin()
    await p.wait()
    h2g = STREAM / MiB / (time.monotonic() - t0)
    t0 = time.monotonic()
    r = await agent.run(["head", "-c", str(STREAM), "/dev/zero"])
    g2h = STREAM / MiB / (time.monotonic() - t0)
    assert len(r.stdout) == STREAM, len(r.stdout)
    return {"host_to_guest_MiB_s": round(h2g, 2), "guest_to_host_MiB_s": round(g2h, 2)}


def socketpair_MiB_s() -> float:
    """The baseline: the same bytes through a Unix stream socket pair, one thread each side."""
    a, b = socket.socketpair()
    chunk = os.urandom(64 * 1024)

    def reader():
        left = STREAM
        while left > 0:
            left -= len(b.recv(1 << 20))
    t = threading.Thread(target=reader)
    t0 = time.monotonic()
    t.start()
    for _ in range(STREAM // len(chunk)):
        a.sendall(chunk)
    t.join()
    took = time.monotonic() - t0
    a.close(), b.close()
    return round(STREAM / MiB / took, 2)


async def measure(peer, kernel: str, initrd: str, rootfs: str) -> dict:
    out: dict = {}
    disk = f"/tmp/bench-{peer.vmm}.ext4"
    shutil.copyfile(rootfs, disk)
    g = peer(ARCH, kernel, initrd, disk=disk, workdir=f"/tmp/bench-{peer.vmm}")
    before = smaps_rollup(os.getpid())
    g.start()
    out["cold_boot_to_ready_s"] = round(await ready(g, 600), 3)
    out["cold_memory_MiB"] = memory(g, before)
    out.update(await throughput(g.agent))
    await g.agent.write_file("/data/mark", b"kept\n", sync=True)
    frozen = await g.agent.freeze(timeout=600)
    snap = f"/tmp/bench-{peer.vmm}.snap"
    out["save_s"] = round(await asyncio.to_thread(g.save, snap), 3)
    await frozen.conn.aclose()
    out["restore_to_ready_s"], out["restore_memory_MiB"] = [], []
    for i in range(ROUNDS):
        c = peer(ARCH, kernel, initrd, disk=disk if peer.vmm == "vmmd" else f"/tmp/r{i}.ext4",
                 workdir=f"/tmp/bench-{peer.vmm}-{i}")
        before = smaps_rollup(os.getpid())
        c.restore(snap)
        out.setdefault("restore_call_s", []).append(round(time.monotonic() - c.started, 3))
        out["restore_to_ready_s"].append(round(await ready(c, 600), 3))
        out["restore_memory_MiB"].append(memory(c, before))
        assert await c.agent.read_bytes("/data/mark") == b"kept\n"
        c.stop()
    return out


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    res = {"arch": ARCH, "stream_MiB": STREAM // MiB, "socketpair_MiB_s": socketpair_MiB_s()}
    for peer in (VmmdGuest, QemuGuest):
        res[peer.vmm] = asyncio.run(measure(peer, kernel, initrd, rootfs))
        print(f"{peer.vmm}: {json.dumps(res[peer.vmm])}", flush=True)
    print("BENCH " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
