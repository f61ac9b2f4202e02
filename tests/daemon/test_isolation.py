"""Each worker is a separate, confined process: its failures end only its own MicroVM."""
import os
import signal
import time

import pytest

from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import types_pb2 as tpb

from .conftest import wait_for

pytestmark = [pytest.mark.kvm, pytest.mark.daemon]
S = tpb.MicroVMState


def terminated(daemon, vm_id, timeout=20):
    return wait_for(lambda: (g := daemon.get(vm_id)).state == S.MICROVM_STATE_TERMINATED and g,
                    timeout=timeout, what=f"{vm_id} terminated")


def events_of(daemon, vm_id):
    call = daemon.vms.WatchEvents(mpb.WatchEventsRequest(microvm_id=vm_id, replay=True))
    out = []
    try:
        for ev in call:
            out.append(ev)
            if ev.to_state == S.MICROVM_STATE_TERMINATED:
                break
    finally:
        call.cancel()
    return out


def test_killed_worker_takes_down_only_its_microvm(daemon, counter_image):
    a = daemon.launch(counter_image.id)
    b = daemon.launch(counter_image.id)
    os.kill(a.worker_pid, signal.SIGKILL)
    got = terminated(daemon, a.id)
    assert got.reason == "worker killed by SIGKILL"
    evs = events_of(daemon, a.id)
    assert [e.reason for e in evs if e.type == tpb.EVENT_TYPE_WORKER_DIED] == [got.reason]
    assert daemon.get(b.id).state == S.MICROVM_STATE_RUNNING
    assert daemon.vms.Ping(mpb.PingRequest(microvm_id=b.id)).microvm.worker_pid == b.worker_pid
    # TERMINATED is made durable first, the files go right after it
    deadline = time.monotonic() + 10
    while os.path.exists(os.path.join(daemon.state_dir, "vms", a.id)):
        assert time.monotonic() < deadline, "the killed MicroVM's files are still there"
        time.sleep(0.05)


def test_guest_over_its_memory_limit_takes_down_only_its_microvm(daemon_factory, snapshots):
    # limit = guest memory + overhead: a negative overhead puts it below what the hog touches
    d = daemon_factory(worker_memory_overhead_mib=-64)
    ok = d.launch(d.register(snapshots["counter"]).id)
    hog = d.launch(d.register(snapshots["hog"]).id)
    got = terminated(d, hog.id, timeout=60)
    assert got.reason.startswith("worker killed by the OOM killer: its cgroup memory limit of 64 MiB")
    assert d.get(ok.id).state == S.MICROVM_STATE_RUNNING
    assert d.vms.Ping(mpb.PingRequest(microvm_id=ok.id)).microvm.state == S.MICROVM_STATE_RUNNING


def test_system_call_outside_the_allow_list_kills_the_worker(daemon_factory, snapshots):
    d = daemon_factory(worker_fault="forbidden_syscall")
    vm = d.launch(d.register(snapshots["counter"]).id)
    got = terminated(d, vm.id)
    assert "seccomp" in got.reason and "SIGSYS" in got.reason


def test_worker_is_confined(daemon, counter_image):
    from vmmd.cgroups import Cgroups
    vm = daemon.launch(counter_image.id)
    pid = vm.worker_pid
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    assert status["Seccomp"].strip() == "2"                 # filter mode, every thread
    assert int(status["Threads"]) >= 2                      # vCPU + helpers, all filtered
    fds = {int(x): os.readlink(f"/proc/{pid}/fd/{x}") for x in os.listdir(f"/proc/{pid}/fd")}
    # stdio, the daemon link and listener, KVM, guest memory: nothing of the daemon's
    assert not [t for t in fds.values() if "vmmd.db" in t or t.endswith("vmmd.sock")]
    assert any("kvm" in t for t in fds.values())
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    assert "Max core file size        0" in limits
    assert os.getsid(pid) == pid != os.getsid(daemon.pid)   # its own session
    cg = Cgroups.detect(daemon.state_dir)
    assert pid in cg.pids(vm.id)
    assert cg.memory_limit(vm.id) == (128 + 64) << 20
