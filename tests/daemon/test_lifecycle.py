"""Launch, pause, suspend, resume, terminate through a real daemon with real workers."""
import os
import platform
import re
import threading
import time

import grpc
import pytest

from vmmd.v1 import images_pb2 as ipb
from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import types_pb2 as tpb

from .conftest import wait_for

pytestmark = [pytest.mark.kvm, pytest.mark.daemon]
S = tpb.MicroVMState


def ticks(daemon, vm_id):
    try:
        with open(os.path.join(daemon.state_dir, "vms", vm_id, "serial.log"), "rb") as f:
            return [int(x) for x in re.findall(rb"tick (\d+)\n", f.read())]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_launch_runs_the_image_in_its_own_worker(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    assert vm.state == S.MICROVM_STATE_RUNNING and vm.worker_pid > 0
    assert vm.worker_pid != daemon.pid and alive(vm.worker_pid)
    assert (vm.vcpus, vm.memory_mib) == (1, 128)
    wait_for(lambda: len(ticks(daemon, vm.id)) >= 2, what="guest ticks on serial")
    assert daemon.workers()[vm.id] == [vm.worker_pid]


def test_suspend_writes_a_diff_and_resume_continues_the_guest(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    wait_for(lambda: len(ticks(daemon, vm.id)) >= 2)
    pid = vm.worker_pid
    vm = daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    assert vm.state == S.MICROVM_STATE_SUSPENDED and vm.worker_pid == 0
    assert vm.snapshot_depth == 1 and vm.suspends == 1
    wait_for(lambda: not alive(pid), what="worker gone after suspend")
    layer = os.path.join(daemon.state_dir, "vms", vm.id, "layers", "1")
    mem = os.path.join(layer, "memory")
    assert os.stat(mem).st_blocks * 512 < 4 << 20      # a diff: dirty pages only, of 128 MiB
    before = ticks(daemon, vm.id)
    vm = daemon.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
    assert vm.state == S.MICROVM_STATE_RUNNING and vm.worker_pid not in (0, pid)
    wait_for(lambda: len(ticks(daemon, vm.id)) >= len(before) + 2, what="ticks after resume")
    after = ticks(daemon, vm.id)
    # one run of ticks: the resumed guest went on from where it was, it did not start again
    assert after == sorted(set(after)) and after[:len(before)] == before


def test_second_suspend_chains_on_the_first(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    for n in (1, 2):
        vm = daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
        assert vm.snapshot_depth == n
        vm = daemon.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
        assert vm.state == S.MICROVM_STATE_RUNNING


def test_pause_and_resume_keep_the_worker(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    p = daemon.vms.Pause(mpb.PauseRequest(microvm_id=vm.id))
    assert p.state == S.MICROVM_STATE_PAUSED and p.worker_pid == vm.worker_pid
    time.sleep(0.5)                  # the worker drains serial every 0.2 s: output from before
    n = len(ticks(daemon, vm.id))    # the pause may still arrive
    time.sleep(0.6)
    assert len(ticks(daemon, vm.id)) == n                 # vCPUs stopped
    r = daemon.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
    assert r.state == S.MICROVM_STATE_RUNNING and r.worker_pid == vm.worker_pid
    wait_for(lambda: len(ticks(daemon, vm.id)) > n)


def test_terminate_removes_worker_cgroup_and_files(daemon, counter_image):
    from vmmd.cgroups import Cgroups
    vm = daemon.launch(counter_image.id)
    cg = Cgroups.detect(daemon.state_dir)
    assert vm.id in cg.names()
    t = daemon.vms.Terminate(mpb.TerminateRequest(microvm_id=vm.id, reason="done"))
    assert t.state == S.MICROVM_STATE_TERMINATED and t.reason == "done"
    assert not alive(vm.worker_pid)
    assert vm.id not in cg.names()
    assert not os.path.exists(os.path.join(daemon.state_dir, "vms", vm.id))
    assert daemon.get(vm.id).state == S.MICROVM_STATE_TERMINATED   # still answerable


def test_guest_that_exits_ends_its_microvm_with_the_code(daemon, snapshots):
    img = daemon.register(snapshots["exits"])
    vm = daemon.launch(img.id)
    got = wait_for(lambda: (g := daemon.get(vm.id)).state == S.MICROVM_STATE_TERMINATED and g,
                   timeout=30, what="guest exit")
    assert got.reason == "guest exited with code 0"


def test_watch_events_sees_every_transition(daemon, counter_image):
    seen = []
    call = daemon.vms.WatchEvents(mpb.WatchEventsRequest())
    ready = threading.Event()

    def reader():
        ready.set()
        try:
            for ev in call:
                seen.append((ev.microvm_id, S.Name(ev.from_state), S.Name(ev.to_state)))
        except grpc.RpcError:
            pass
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ready.wait()
    time.sleep(0.2)
    vm = daemon.launch(counter_image.id)
    daemon.vms.Pause(mpb.PauseRequest(microvm_id=vm.id))
    daemon.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
    daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    daemon.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
    daemon.vms.Terminate(mpb.TerminateRequest(microvm_id=vm.id))
    expected = [("UNSPECIFIED", "LAUNCHING"), ("LAUNCHING", "RUNNING"), ("RUNNING", "PAUSED"),
                ("PAUSED", "RUNNING"), ("RUNNING", "SUSPENDING"), ("SUSPENDING", "SUSPENDED"),
                ("SUSPENDED", "RESUMING"), ("RESUMING", "RUNNING"), ("RUNNING", "TERMINATED")]
    p = "MICROVM_STATE_"
    mine = lambda evs: [(f.removeprefix(p), to.removeprefix(p)) for i, f, to in evs if i == vm.id]  # noqa: E731
    wait_for(lambda: len(mine(seen)) >= len(expected), what="every transition")
    call.cancel()
    assert mine(seen) == expected
    # a late watcher replays the same history from the store
    late = daemon.vms.WatchEvents(mpb.WatchEventsRequest(microvm_id=vm.id, replay=True))
    replayed = []
    for ev in late:
        replayed.append((ev.microvm_id, S.Name(ev.from_state), S.Name(ev.to_state)))
        if len(replayed) == len(expected):
            break
    late.cancel()
    assert mine(replayed) == expected


def test_register_is_content_addressed(daemon, snapshots):
    a = daemon.register(snapshots["counter"], "a")
    b = daemon.register(snapshots["counter"], "b")
    assert a.id == b.id and a.id.startswith("img-") and len(a.digest) == 64
    c = daemon.register(snapshots["two"], "c")
    assert c.id != a.id and c.vcpus == 2
    ids = {i.id for i in daemon.images.ListImages(ipb.ListImagesRequest()).images}
    assert ids == {a.id, c.id}
    assert not [n for n in os.listdir(os.path.join(daemon.state_dir, "images"))
                if n.startswith(".tmp")]
    assert a.arch == platform.machine() and a.config.ByteSize() == 0


def test_image_id_depends_on_content_not_on_how_it_is_stored(daemon, snapshots, tmp_path):
    """The same snapshot with its memory file's holes written out as zeros is the same image
    (vmmd/digest.py); one changed byte is another."""
    src = snapshots["counter"]
    dense = tmp_path / "dense"
    dense.mkdir()
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as i, open(dense / f, "wb") as o:
            while chunk := i.read(1 << 20):
                o.write(chunk)             # every byte written: no holes left
    mem = os.path.join(src, "memory")
    assert os.stat(dense / "memory").st_blocks > os.stat(mem).st_blocks
    assert daemon.register(str(dense), "dense").id == daemon.register(src, "sparse").id
    with open(dense / "memory", "r+b") as f:   # the last byte of guest memory
        f.seek(os.path.getsize(mem) - 1)
        f.write(b"\x01")
    assert daemon.register(str(dense), "changed").id != daemon.register(src, "sparse").id


def test_image_from_a_running_microvm_launches(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    wait_for(lambda: len(ticks(daemon, vm.id)) >= 1)
    img = daemon.images.RegisterImage(ipb.RegisterImageRequest(
        name="child", microvm=ipb.MicroVMSource(microvm_id=vm.id)))
    assert img.id != counter_image.id and img.source == f"microvm:{vm.id}"
    assert daemon.get(vm.id).state == S.MICROVM_STATE_RUNNING     # left as it was
    child = daemon.launch(img.id)
    assert child.state == S.MICROVM_STATE_RUNNING
    # the parent's next suspend is a full snapshot (its dirty log restarted at the image)
    s = daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    r = daemon.vms.Resume(mpb.ResumeRequest(microvm_id=s.id))
    assert r.state == S.MICROVM_STATE_RUNNING
    wait_for(lambda: len(ticks(daemon, child.id)) >= 1)


def test_delete_image_in_use_needs_force(daemon, counter_image):
    vm = daemon.launch(counter_image.id)
    with pytest.raises(grpc.RpcError) as e:
        daemon.images.DeleteImage(ipb.DeleteImageRequest(image_id=counter_image.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "force" in e.value.details()
    r = daemon.images.DeleteImage(ipb.DeleteImageRequest(image_id=counter_image.id, force=True))
    assert r.terminated_microvms == 1
    assert daemon.get(vm.id).state == S.MICROVM_STATE_TERMINATED
    assert not os.path.exists(os.path.join(daemon.state_dir, "images", counter_image.id))


def test_launch_with_request_id_is_idempotent(daemon, counter_image):
    a = daemon.launch(counter_image.id, request_id="job-1")
    b = daemon.launch(counter_image.id, request_id="job-1")
    assert a.id == b.id
    assert len(daemon.vms.List(mpb.ListRequest()).microvms) == 1


def test_list_filters_by_labels(daemon, counter_image):
    a = daemon.launch(counter_image.id, labels={"team": "a"})
    daemon.launch(counter_image.id, labels={"team": "b"})
    got = daemon.vms.List(mpb.ListRequest(labels={"team": "a"})).microvms
    assert [v.id for v in got] == [a.id]


def test_host_info_counts_committed_resources(daemon, counter_image):
    from vmmd.v1 import host_pb2
    h0 = daemon.host.GetHostInfo(host_pb2.GetHostInfoRequest())
    vm = daemon.launch(counter_image.id)
    h1 = daemon.host.GetHostInfo(host_pb2.GetHostInfoRequest())
    assert h1.committed.vcpus == h0.committed.vcpus + 1
    assert h1.committed.memory_mib == h0.committed.memory_mib + 128
    assert h1.microvms_by_state["RUNNING"] == 1 and h1.arch and h1.cpu_flags
    assert counter_image.id in h1.cached_images and h1.cgroup_version in (1, 2)
    daemon.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
    h2 = daemon.host.GetHostInfo(host_pb2.GetHostInfoRequest())
    assert h2.committed.memory_mib == h0.committed.memory_mib      # suspended holds nothing
    assert h2.microvms_by_state["SUSPENDED"] == 1
