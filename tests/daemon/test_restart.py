"""Workers outlive the daemon: a restart re-attaches them, a kill -9 at any point loses nothing."""
import os
import random
import signal
import threading
import time

import grpc
import pytest

from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import types_pb2 as tpb

from .conftest import wait_for

pytestmark = [pytest.mark.kvm, pytest.mark.daemon]
S = tpb.MicroVMState
LIVE = (S.MICROVM_STATE_RUNNING, S.MICROVM_STATE_PAUSED)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_restart_reattaches_running_workers_and_keeps_suspended_ones(daemon, counter_image):
    a = daemon.launch(counter_image.id)
    b = daemon.launch(counter_image.id)
    p = daemon.launch(counter_image.id)
    daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=b.id))
    daemon.vms.Pause(mpb.PauseRequest(microvm_id=p.id))
    assert daemon.stop() == 0
    assert alive(a.worker_pid) and alive(p.worker_pid)      # nothing stopped with the daemon
    daemon.start()
    ga, gp = daemon.get(a.id), daemon.get(p.id)
    assert (ga.state, ga.worker_pid) == (S.MICROVM_STATE_RUNNING, a.worker_pid)
    assert (gp.state, gp.worker_pid) == (S.MICROVM_STATE_PAUSED, p.worker_pid)
    assert daemon.vms.Ping(mpb.PingRequest(microvm_id=a.id)).counters["rss"] > 0
    assert daemon.vms.Resume(mpb.ResumeRequest(microvm_id=b.id)).state == S.MICROVM_STATE_RUNNING
    assert daemon.vms.Resume(mpb.ResumeRequest(microvm_id=p.id)).worker_pid == p.worker_pid
    # a re-attached worker that dies is still noticed
    os.kill(a.worker_pid, signal.SIGKILL)
    got = wait_for(lambda: (g := daemon.get(a.id)).state == S.MICROVM_STATE_TERMINATED and g)
    assert "re-attached after a daemon restart" in got.reason


def test_sigterm_drains_and_ends_watchers(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    call = daemon.vms.WatchEvents(mpb.WatchEventsRequest())
    codes = []

    def watch():
        try:
            for _ in call:
                pass
        except grpc.RpcError as e:
            codes.append((e.code(), e.details()))
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    t.join(5)
    assert codes and codes[0][0] == grpc.StatusCode.UNAVAILABLE and "stopping" in codes[0][1]
    assert alive(vm.worker_pid)
    log = daemon.log()
    assert '"msg": "draining"' in log and "MicroVMs keep running" in log


def accounted(daemon):
    """Every session in a consistent state and nothing on the host that no session owns."""
    from vmmd.cgroups import Cgroups
    vms = daemon.vms.List(mpb.ListRequest(include_terminated=True)).microvms
    workers = daemon.workers()
    cg = Cgroups.detect(daemon.state_dir)
    groups = cg.names()
    vm_dirs = set(os.listdir(os.path.join(daemon.state_dir, "vms")))
    live_ids = set()
    for v in vms:
        name = S.Name(v.state)
        assert v.state in LIVE + (S.MICROVM_STATE_SUSPENDED, S.MICROVM_STATE_TERMINATED), \
            f"{v.id} left in {name}: {v.reason}"
        if v.state in LIVE:
            assert workers.get(v.id) == [v.worker_pid], (v.id, name, workers.get(v.id))
            assert v.worker_pid in cg.pids(v.id)
            live_ids.add(v.id)
        elif v.state == S.MICROVM_STATE_SUSPENDED:
            assert v.id not in workers and v.id not in groups
            layer = os.path.join(daemon.state_dir, "vms", v.id, "layers", str(v.suspends))
            assert os.path.isfile(os.path.join(layer, "vmstate")), layer
            assert v.snapshot_depth >= 1
            live_ids.add(v.id)
        else:
            assert v.id not in workers and v.id not in groups and v.id not in vm_dirs
    assert set(workers) <= live_ids, f"orphan workers {set(workers) - live_ids}"
    assert groups <= live_ids, f"orphan cgroups {groups - live_ids}"
    assert vm_dirs == live_ids, f"orphan files {vm_dirs ^ live_ids}"
    assert not [n for n in os.listdir(os.path.join(daemon.state_dir, "images"))
                if not n.startswith("img-")]
    return vms


def test_kill9_at_random_points_loses_no_session_and_leaves_no_orphan(daemon_factory, snapshots):
    d = daemon_factory()
    img = d.register(snapshots["counter"]).id
    rng = random.Random(int(os.environ.get("VMMD_CRASH_SEED", "8")))
    for round_ in range(10):
        stop = threading.Event()

        def churn():
            try:
                while not stop.is_set():
                    vm = d.launch(img)
                    d.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
                    d.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
                    if rng.random() < 0.5:
                        d.vms.Terminate(mpb.TerminateRequest(microvm_id=vm.id))
            except (grpc.RpcError, ValueError, AttributeError):
                pass                                   # the daemon died under us
        t = threading.Thread(target=churn)
        t.start()
        time.sleep(rng.uniform(0.02, 0.4))
        d.kill9()
        stop.set()
        t.join(10)
        d.start()
        vms = accounted(d)
        # suspended ones are resumable; keep the population small
        for v in vms:
            if v.state == S.MICROVM_STATE_SUSPENDED:
                r = d.vms.Resume(mpb.ResumeRequest(microvm_id=v.id))
                assert r.state == S.MICROVM_STATE_RUNNING
            if v.state != S.MICROVM_STATE_TERMINATED and rng.random() < 0.7:
                d.vms.Terminate(mpb.TerminateRequest(microvm_id=v.id))
    accounted(d)
