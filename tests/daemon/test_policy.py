"""Idle auto-suspend, transparent auto-resume, the runtime cap and retention (DESIGN §6)."""
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import types_pb2 as tpb

from .conftest import wait_for

pytestmark = [pytest.mark.kvm, pytest.mark.daemon]
S = tpb.MicroVMState


def secs(x: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(x * 1e9))
    return d


def idle(max_idle=None, auto_resume=None, retention=None) -> tpb.IdlePolicy:
    p = tpb.IdlePolicy()
    if max_idle is not None:
        p.max_idle.CopyFrom(secs(max_idle))
    if auto_resume is not None:
        p.auto_resume = auto_resume
    if retention is not None:
        p.suspended_retention.CopyFrom(secs(retention))
    return p


def state(d, vm_id):
    return d.get(vm_id).state


def test_idle_microvm_is_suspended_and_a_request_resumes_it(daemon, counter_image):
    vm = daemon.launch(counter_image.id, idle=idle(max_idle=1.0))
    assert vm.idle.auto_resume                                      # on by default
    got = wait_for(lambda: (g := daemon.get(vm.id)).state == S.MICROVM_STATE_SUSPENDED and g,
                   what="idle suspend")
    assert got.reason == "idle for 1 s (max_idle)" and got.worker_pid == 0
    p = daemon.vms.Ping(mpb.PingRequest(microvm_id=vm.id))
    assert p.resumed and p.microvm.state == S.MICROVM_STATE_RUNNING and p.microvm.worker_pid > 0
    assert p.counters["rss"] > 0


def test_requests_keep_a_microvm_awake(daemon, counter_image):
    vm = daemon.launch(counter_image.id, idle=idle(max_idle=1.0))
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        assert not daemon.vms.Ping(mpb.PingRequest(microvm_id=vm.id)).resumed
        time.sleep(0.25)
    assert state(daemon, vm.id) == S.MICROVM_STATE_RUNNING


def test_without_auto_resume_a_request_to_a_suspended_microvm_is_refused(daemon, counter_image):
    vm = daemon.launch(counter_image.id, idle=idle(auto_resume=False))
    daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    with pytest.raises(grpc.RpcError) as e:
        daemon.vms.Ping(mpb.PingRequest(microvm_id=vm.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "call Resume first" in e.value.details()
    assert state(daemon, vm.id) == S.MICROVM_STATE_SUSPENDED


def test_runtime_cap_counts_running_time_only(daemon, counter_image):
    vm = daemon.launch(counter_image.id, max_runtime=secs(1.5))
    time.sleep(0.5)
    daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    time.sleep(2.0)                                        # suspended: the clock stands still
    s = daemon.get(vm.id)
    assert s.state == S.MICROVM_STATE_SUSPENDED and s.running_time.ToTimedelta().total_seconds() < 1.5
    t0 = time.monotonic()
    daemon.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
    got = wait_for(lambda: (g := daemon.get(vm.id)).state == S.MICROVM_STATE_TERMINATED and g,
                   what="runtime cap")
    assert got.reason == "max_runtime of 1.5 s of running time reached"
    assert 0.4 < time.monotonic() - t0 < 3.0                # the rest of its 1.5 s, not all of it
    assert got.running_time.ToTimedelta().total_seconds() >= 1.5


def test_suspended_microvm_ends_after_its_retention(daemon, counter_image):
    vm = daemon.launch(counter_image.id, idle=idle(retention=1.0))
    daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    got = wait_for(lambda: (g := daemon.get(vm.id)).state == S.MICROVM_STATE_TERMINATED and g,
                   what="retention")
    assert got.reason == "suspended longer than its retention of 1 s"


def test_timers_are_rearmed_after_a_daemon_restart(daemon, counter_image):
    vm = daemon.launch(counter_image.id, idle=idle(max_idle=1.5))
    daemon.restart()
    got = wait_for(lambda: (g := daemon.get(vm.id)).state == S.MICROVM_STATE_SUSPENDED and g,
                   what="idle suspend after restart")
    assert got.reason.startswith("idle for 1.5 s")
