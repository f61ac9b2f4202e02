"""The daemon as a service: systemd unit, sd_notify, health, reflection, TCP, logs, and a
client that is not Python."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import grpc
import pytest

from vmmd.v1 import types_pb2 as tpb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.daemon]


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd; scripts/setup.sh "
                    "installs it)")
    unit = open(os.path.join(REPO, "deploy", "vmmd.service")).read()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "KillMode=process" in unit
    vmmd = os.path.join(os.path.dirname(sys.executable), "vmmd")
    (tmp_path / "vmmd.service").write_text(unit.replace("/usr/local/bin/vmmd", vmmd))
    r = subprocess.run([tool, "verify", str(tmp_path / "vmmd.service")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.kvm
def test_sd_notify_ready_watchdog_and_stopping(daemon_factory):
    path = f"/tmp/vmmd-notify-{os.getpid()}.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10)
    try:
        d = daemon_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        msgs = [rx.recv(4096).decode()]
        while len([m for m in msgs if m == "WATCHDOG=1"]) < 3:
            msgs.append(rx.recv(4096).decode())
        assert msgs[0].startswith("READY=1\n") and f"MAINPID={d.pid}" in msgs[0]
        d.proc.send_signal(signal.SIGTERM)
        while not msgs[-1].startswith("STOPPING=1"):
            msgs.append(rx.recv(4096).decode())
        assert d.proc.wait(10) == 0
    finally:
        rx.close()
        os.unlink(path)


@pytest.mark.kvm
def test_health_and_reflection_list_the_api(daemon):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    h = health_pb2_grpc.HealthStub(daemon.channel)
    r = h.Check(health_pb2.HealthCheckRequest(service="vmmd.v1.MicroVMService"))
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    resp = next(iter(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")]))))
    names = {s.name for s in resp.list_services_response.service}
    assert {"vmmd.v1.ImageService", "vmmd.v1.MicroVMService", "vmmd.v1.HostService",
            "grpc.health.v1.Health"} <= names


@pytest.mark.kvm
def test_tcp_listener_serves_the_same_api_and_logs_are_json(daemon_factory):
    from vmmd.v1 import host_pb2, host_pb2_grpc
    d = daemon_factory(tcp="127.0.0.1:0")
    lines = d.log().splitlines()
    records = [json.loads(line) for line in lines]      # every line is one JSON object
    port = next(r["tcp_port"] for r in records if r["msg"] == "serving")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        info = host_pb2_grpc.HostServiceStub(ch).GetHostInfo(host_pb2.GetHostInfoRequest())
    assert info.capacity.vcpus == os.cpu_count()


@pytest.mark.kvm
def test_grpc_js_client_gets_host_info_and_launches(daemon, counter_image):
    cache = os.environ.get("VMMD_CACHE") or os.path.expanduser("~/.cache/vmmd")
    modules = os.path.join(cache, "node", "node_modules")
    if not shutil.which("node") or not os.path.isdir(os.path.join(modules, "@grpc", "grpc-js")):
        pytest.skip(f"node or @grpc/grpc-js missing in {modules} (scripts/setup.sh installs them)")
    r = subprocess.run(["node", os.path.join(REPO, "tests", "daemon", "client.js"), daemon.sock,
                        counter_image.id], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, NODE_PATH=modules))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["capacity"]["vcpus"] == os.cpu_count()
    assert out["vm"]["state"] == "MICROVM_STATE_RUNNING" and out["vm"]["labels"] == {"client": "grpc-js"}
    vm = daemon.get(out["vm"]["id"])
    assert vm.state == tpb.MicroVMState.MICROVM_STATE_RUNNING and vm.worker_pid > 0
