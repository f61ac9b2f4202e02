"""Every bad request gets its status code and a message naming what to change, and changes
nothing: no MicroVM, no file."""
import os

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from vmmd.v1 import host_pb2
from vmmd.v1 import images_pb2 as ipb
from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import types_pb2 as tpb

pytestmark = [pytest.mark.kvm, pytest.mark.daemon]
C = grpc.StatusCode


def secs(x):
    d = Duration()
    d.FromNanoseconds(int(x * 1e9))
    return d


def launch(**kw):
    return lambda d, ctx: d.vms.Launch(mpb.LaunchRequest(image_id=ctx["image"], **kw))


def on(rpc, req_of):
    return lambda d, ctx: getattr(d.vms, rpc)(req_of(ctx))


def exec_call(d, ctx):
    start = mpb.ExecRequest(start=mpb.ExecStart(microvm_id=ctx["vm"], argv=["true"]))
    return list(d.vms.Exec(iter([start])))


def raw(method, payload):
    def call(d, ctx):
        fn = d.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return fn(payload)
    return call


CASES = [
    ("vcpus over 16", launch(vcpus=17), C.INVALID_ARGUMENT, "vcpus 17 is outside the per-MicroVM limit 1..16"),
    ("vcpus not the image's", launch(vcpus=2), C.INVALID_ARGUMENT, "launch with 1 or leave it 0"),
    ("memory under 128 MiB", launch(memory_mib=64), C.INVALID_ARGUMENT, "memory_mib 64 is outside the per-MicroVM limit 128..32768"),
    ("memory over 32 GiB", launch(memory_mib=40000), C.INVALID_ARGUMENT, "memory_mib 40000 is outside"),
    ("memory not the image's", launch(memory_mib=256), C.INVALID_ARGUMENT, "launch with 128 or leave it 0"),
    ("disk over 32 GiB", launch(disk_mib=40000), C.INVALID_ARGUMENT, "disk_mib 40000 is over the per-MicroVM limit of 32768 MiB"),
    ("max_idle under 60 s", launch(idle=tpb.IdlePolicy(max_idle=secs(30))), C.INVALID_ARGUMENT, "below the minimum of 60 s"),
    ("max_runtime over 8 h", launch(max_runtime=secs(9 * 3600)), C.INVALID_ARGUMENT, "over this host's limit of 28800 s"),
    ("negative retention", launch(idle=tpb.IdlePolicy(suspended_retention=secs(-1))), C.INVALID_ARGUMENT, "suspended_retention"),
    ("too many labels", launch(labels={f"k{i}": "v" for i in range(33)}), C.INVALID_ARGUMENT, "at most 32"),
    ("label key too long", launch(labels={"k" * 64: "v"}), C.INVALID_ARGUMENT, "use 1..63 bytes"),
    ("env name with =", launch(env={"A=B": "1"}), C.INVALID_ARGUMENT, "without '='"),
    ("empty image id", lambda d, ctx: d.vms.Launch(mpb.LaunchRequest()), C.INVALID_ARGUMENT, "image_id is empty"),
    ("unknown image", lambda d, ctx: d.vms.Launch(mpb.LaunchRequest(image_id="img-nope")), C.NOT_FOUND, "ListImages shows"),
    ("unknown microvm", on("Get", lambda c: mpb.GetRequest(microvm_id="vm-nope")), C.NOT_FOUND, "List shows"),
    ("empty microvm id", on("Suspend", lambda c: mpb.SuspendRequest()), C.INVALID_ARGUMENT, "microvm_id is empty"),
    ("pause a suspended one", on("Pause", lambda c: mpb.PauseRequest(microvm_id=c["suspended"])), C.FAILED_PRECONDITION, "only a RUNNING MicroVM can be paused"),
    ("suspend a terminated one", on("Suspend", lambda c: mpb.SuspendRequest(microvm_id=c["dead"])), C.FAILED_PRECONDITION, "only a RUNNING or PAUSED"),
    ("resume a terminated one", on("Resume", lambda c: mpb.ResumeRequest(microvm_id=c["dead"])), C.FAILED_PRECONDITION, "only a PAUSED or SUSPENDED"),
    ("exec without an agent", exec_call, C.FAILED_PRECONDITION, "has no guest agent"),
    ("read a relative path", lambda d, c: list(d.vms.ReadFile(mpb.ReadFileRequest(microvm_id=c["vm"], path="etc/passwd"))), C.INVALID_ARGUMENT, "absolute guest path"),
    ("connect to port 0", lambda d, c: list(d.vms.Connect(iter([mpb.ConnectRequest(start=mpb.ConnectStart(microvm_id=c["vm"]))]))), C.INVALID_ARGUMENT, "use 1..65535"),
    ("watch an unknown microvm", lambda d, c: list(d.vms.WatchEvents(mpb.WatchEventsRequest(microvm_id="vm-nope"))), C.NOT_FOUND, "leave microvm_id empty"),
    ("register without a source", lambda d, c: d.images.RegisterImage(ipb.RegisterImageRequest(name="x")), C.INVALID_ARGUMENT, "set snapshot"),
    ("register a relative path", lambda d, c: d.images.RegisterImage(ipb.RegisterImageRequest(snapshot=ipb.SnapshotSource(snapshot_dir="snap"))), C.INVALID_ARGUMENT, "absolute path"),
    ("register a garbage snapshot", lambda d, c: d.images.RegisterImage(ipb.RegisterImageRequest(snapshot=ipb.SnapshotSource(snapshot_dir=c["garbage"]))), C.INVALID_ARGUMENT, "is not a usable snapshot"),
    ("image from a suspended microvm", lambda d, c: d.images.RegisterImage(ipb.RegisterImageRequest(microvm=ipb.MicroVMSource(microvm_id=c["suspended"]))), C.FAILED_PRECONDITION, "Resume it first"),
    ("delete an image in use", lambda d, c: d.images.DeleteImage(ipb.DeleteImageRequest(image_id=c["image"])), C.FAILED_PRECONDITION, "delete with force"),
    ("build without a Dockerfile", lambda d, c: list(d.images.BuildImage(ipb.BuildImageRequest())), C.INVALID_ARGUMENT, "dockerfile is empty"),
    ("build with an unknown instruction", lambda d, c: list(d.images.BuildImage(ipb.BuildImageRequest(dockerfile="FROM scratch\nVOLUME /x\n"))), C.INVALID_ARGUMENT, "line 2: VOLUME is not supported"),
    ("build from a relative context path", lambda d, c: list(d.images.BuildImage(ipb.BuildImageRequest(dockerfile="FROM scratch\n", context_path="app.zip"))), C.INVALID_ARGUMENT, "give an absolute path"),
    ("malformed request bytes", raw("/vmmd.v1.MicroVMService/Get", b"\x0a\xff\xff\xff"), C.INVALID_ARGUMENT, "not a valid vmmd.v1.GetRequest"),
    ("oversized request", raw("/vmmd.v1.MicroVMService/Get", b"\x0a\x80\x80\x80\x05" + b"x" * (10 << 20)), C.RESOURCE_EXHAUSTED, "larger than max"),
    ("network options for an image without a NIC", launch(network=mpb.NetworkOptions(expose_ports=[80])), C.FAILED_PRECONDITION, "has no network (DeviceConfig.net)"),
    ("egress for a microvm without a NIC", on("SetEgress", lambda c: mpb.SetEgressRequest(microvm_id=c["vm"])), C.FAILED_PRECONDITION, "registered without DeviceConfig.net"),
    ("connect through an unexposed port", lambda d, c: list(d.vms.Connect(iter([mpb.ConnectRequest(start=mpb.ConnectStart(microvm_id=c["vm"], port=80, network=True))]))), C.FAILED_PRECONDITION, "is not exposed"),
    ("host full", launch(), C.RESOURCE_EXHAUSTED, "MiB memory asked, 72 MiB free"),
]


def state_files(root):
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for f in files:
            if f not in ("serial.log", "vmmd.db-wal", "vmmd.db-shm", "vmmd.db"):
                p = os.path.join(dirpath, f)
                out.add((os.path.relpath(p, root), os.path.getsize(p) if "layers" in p or
                         "images" in p else 0))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, snapshots):
    from .conftest import Daemon
    tmp = tmp_path_factory.mktemp("bad")
    # production minimum idle; room for one 128 MiB MicroVM with a worker (and 72 MiB more)
    d = Daemon(tmp / "state", tmp / "vmmd.log",
               dict(min_idle_s=60.0, capacity_memory_mib=200, memory_overcommit=1.0)).start()
    try:
        img = d.register(snapshots["counter"]).id
        sus = d.launch(img).id
        d.vms.Suspend(mpb.SuspendRequest(microvm_id=sus))     # suspended: commits nothing
        dead = d.launch(img).id
        d.vms.Terminate(mpb.TerminateRequest(microvm_id=dead))
        vm = d.launch(img).id
        garbage = tmp / "garbage"
        garbage.mkdir()
        (garbage / "vmstate").write_bytes(os.urandom(4096))
        (garbage / "memory").write_bytes(bytes(1 << 20))
        yield d, {"image": img, "vm": vm, "suspended": sus, "dead": dead, "garbage": str(garbage)}
    finally:
        d.cleanup()


@pytest.mark.parametrize("name,call,code,text", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_refused_and_changes_nothing(world, name, call, code, text):
    d, ctx = world
    before_vms = {(v.id, v.state, v.worker_pid, v.suspends)
                  for v in d.vms.List(mpb.ListRequest(include_terminated=True)).microvms}
    before_files = state_files(d.state_dir)
    before_host = d.host.GetHostInfo(host_pb2.GetHostInfoRequest()).committed
    with pytest.raises(grpc.RpcError) as e:
        call(d, ctx)
    assert e.value.code() == code, e.value.details()
    assert text in e.value.details()
    after_vms = {(v.id, v.state, v.worker_pid, v.suspends)
                 for v in d.vms.List(mpb.ListRequest(include_terminated=True)).microvms}
    assert after_vms == before_vms
    assert state_files(d.state_dir) == before_files
    assert d.host.GetHostInfo(host_pb2.GetHostInfoRequest()).committed == before_host
