"""Runs inside an emulated KVM host (tests/e2e/test_guest_agent.py starts it): one snapshot of a
running Linux guest, taken frozen as vmmd takes them, restored again and again in vmmd's VMM.
Every copy must answer its agent, hold the file written before the snapshot, take writes (its
freeze ended with the restore) and not see the writes of the copy before it. A copy that fails
is reported with the VMM's view of it (state, vCPU exits, virtio queues) and the guest's own
(mounts, freeze holder, where each process waits), which tells a device of ours that stopped
from a guest that did."""
from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest

from guest_peer import VmmdGuest, guest_from_env

ROUNDS = int(os.environ.get("VMMD_RESTORE_ROUNDS", "12"))
ARCH = os.uname().machine
pytestmark = pytest.mark.timeout(1200)

if not os.environ.get("VMMD_IN_HOST") or not os.environ.get("VMMD_GUEST_KERNEL"):
    pytest.skip("runs inside an emulated KVM host, started by tests/e2e/test_guest_agent.py",
                allow_module_level=True)


def guest_view(c: VmmdGuest) -> str:
    """What the guest says of itself, on new connections (the agent may still answer while a
    call hangs): its frozen filesystems and freeze holder, its processes and where they wait."""
    async def ask():
        r = await c.agent.run(["sh", "-c", "cat /proc/mounts; echo holder: $(cat /run/vmmd/"
                               "freeze.pid 2>&1); for p in /proc/[0-9]*; do echo $(basename $p)"
                               " $(cat $p/wchan 2>/dev/null) $(tr '\\0' ' ' < $p/cmdline "
                               "2>/dev/null); done; dmesg | tail -20"])
        return (r.stdout + r.stderr).decode(errors="replace")
    try:
        return "the guest says:\n" + asyncio.run(asyncio.wait_for(ask(), 30))
    except Exception as e:  # noqa: BLE001
        return f"the guest does not answer a new call either: {e!r}"


def test_every_restore_of_one_snapshot_answers_with_its_disk():
    kernel, initrd, disk = guest_from_env()
    g = VmmdGuest(ARCH, kernel, initrd, disk=disk, workdir="/tmp/guest")
    g.start()
    snap = "/tmp/snapshot"

    async def take():
        await g.mvm.wait_ready(400)
        a = g.agent
        await a.write_file("/data/before-snapshot", b"kept\n", sync=True)
        frozen = await a.freeze(timeout=600)
        await asyncio.to_thread(g.save, snap)
        await frozen.conn.aclose()
    asyncio.run(asyncio.wait_for(take(), 600))

    async def check(c: VmmdGuest, i: int) -> None:
        await c.mvm.wait_ready(120)
        assert await c.agent.read_bytes("/data/before-snapshot") == b"kept\n"
        # its own disk: the copy before it wrote /data/after-{i-1}, which this one never sees
        r = await c.agent.run(["sh", "-c", f"! test -e /data/after-{i - 1} && echo {i} > "
                               f"/data/after-{i} && sync && cat /data/after-{i}"])
        assert r.code == 0 and r.stdout == f"{i}\n".encode(), r

    failed, took = [], []
    for i in range(ROUNDS):
        c = VmmdGuest(ARCH, g.kernel, g.initrd, disk=disk, workdir=f"/tmp/restore-{i}")
        c.restore(snap)
        t0 = time.monotonic()
        try:
            asyncio.run(asyncio.wait_for(check(c, i), 180))
            took.append(time.monotonic() - t0)
            print(f"\nrestore {i}: answered and checked in {took[-1]:.2f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - every round is reported, then the test fails
            print(f"\nrestore {i} FAILED after {time.monotonic() - t0:.1f} s: "
                  f"{e!r}\n{c.mvm.view()}\n{guest_view(c)}", flush=True)
            failed.append(i)
        finally:
            c.stop()
    if took:
        print(f"\nvmmd-guest: {len(took)} of {ROUNDS} restores answered and checked: median "
              f"{statistics.median(took):.2f} s, slowest {max(took):.2f} s", flush=True)
    assert not failed, f"restores {failed} of {ROUNDS} failed (their views are above)"
