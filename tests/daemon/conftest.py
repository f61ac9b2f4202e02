"""Fixtures for the daemon tests: test-guest snapshots made with the native core, and real
`vmmd serve` processes (real zygote, real workers on the local KVM) driven over gRPC."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from guests import LOAD_GPA, PARAMS, STACK_SIZE, STACK_TOP, build, devices, params

MIB = 1 << 20


def make_snapshot(directory, guest: str = "counter", *, vcpus: int = 1, mem_mib: int = 128,
                  **guest_params) -> str:
    """A full snapshot of a test guest that has run for a moment (what an image holds)."""
    from vmmd.native import VM
    with VM.create(vcpus, mem_mib * MIB, track_dirty=True, devices=devices()) as vm:
        vm.mem_write(PARAMS, params(**guest_params))
        vm.load_flat(build(guest), LOAD_GPA, stack_top=STACK_TOP, stack_size=STACK_SIZE)
        vm.start()
        time.sleep(0.02)
        vm.pause()
        vm.snapshot(directory)
    return str(directory)


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory):
    """name -> snapshot dir: 'counter' (ticks on serial, 64 data pages), 'hog' (writes every data
    page of its 128 MiB over and over), 'exits' (stops itself after a few million counts)."""
    root = tmp_path_factory.mktemp("snapshots")
    return {
        "counter": make_snapshot(root / "counter", pages=64, tick_mask=(1 << 22) - 1),
        # every data page: 7n mod pages visits them all when 7 does not divide pages
        "hog": make_snapshot(root / "hog", pages=(128 - 16) * 256 - 1),
        "exits": make_snapshot(root / "exits", iterations=50_000_000),
        "two": make_snapshot(root / "two", vcpus=2, pages=16),
    }


class Daemon:
    """One `vmmd serve` process on a state directory; restartable, killable."""

    def __init__(self, state_dir, log_path, settings: dict):
        self.state_dir = str(state_dir)
        # sun_path holds 108 bytes: pytest's tmp paths are longer
        self.sock = f"/tmp/vmmd-test-{os.getpid()}-{id(self):x}.sock"
        settings = dict(settings, socket=self.sock)
        self.log_path = str(log_path)
        self.config = os.path.join(os.path.dirname(self.state_dir),
                                   os.path.basename(self.state_dir) + ".toml")
        with open(self.config, "w") as f:
            for k, v in settings.items():
                f.write(f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str)
                        else f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n")
        self.proc: subprocess.Popen | None = None
        self.channel = None

    def start(self, timeout: float = 15.0, env: dict | None = None) -> "Daemon":
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmmd.cli", "serve", "--state-dir", self.state_dir,
             "--config", self.config], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            env=dict(os.environ, **(env or {})))
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmmd serve exited {self.proc.returncode}: {self.log()[-3000:]}")
            if os.path.exists(self.sock):
                ch = grpc.insecure_channel(f"unix:{self.sock}")
                try:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        self.channel = ch
                        break
                except grpc.RpcError:
                    pass
                ch.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"vmmd serve not ready in {timeout} s: {self.log()[-3000:]}")
            time.sleep(0.05)
        from vmmd.v1 import host_pb2_grpc, images_pb2_grpc, microvms_pb2_grpc
        self.images = images_pb2_grpc.ImageServiceStub(self.channel)
        self.vms = microvms_pb2_grpc.MicroVMServiceStub(self.channel)
        self.host = host_pb2_grpc.HostServiceStub(self.channel)
        return self

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> int:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> "Daemon":
        self.stop()
        return self.start()

    def register(self, snapshot_dir: str, name: str = "", **labels):
        from vmmd.v1 import images_pb2 as ipb
        return self.images.RegisterImage(ipb.RegisterImageRequest(
            name=name, labels=labels, snapshot=ipb.SnapshotSource(
                snapshot_dir=snapshot_dir, devices=ipb.DeviceConfig(debug=True))))

    def launch(self, image_id: str, **kw):
        from vmmd.v1 import microvms_pb2 as mpb
        return self.vms.Launch(mpb.LaunchRequest(image_id=image_id, **kw))

    def get(self, vm_id: str):
        from vmmd.v1 import microvms_pb2 as mpb
        return self.vms.Get(mpb.GetRequest(microvm_id=vm_id))

    def workers(self) -> dict[str, list[int]]:
        """vm id -> pids of processes living in that VM's directory (the workers)."""
        root = os.path.realpath(os.path.join(self.state_dir, "vms")) + "/"
        out: dict[str, list[int]] = {}
        for e in os.scandir("/proc"):
            if e.name.isdigit():
                try:
                    cwd = os.readlink(f"/proc/{e.name}/cwd")
                except OSError:
                    continue
                if cwd.startswith(root):
                    out.setdefault(cwd[len(root):].split("/")[0], []).append(int(e.name))
        return out

    def cleanup(self) -> None:
        """Ends the daemon and every worker it left (workers outlive the daemon by design)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()
        for pids in self.workers().values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for leftover in (self.sock, self.config):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        from vmmd.cgroups import Cgroups
        try:
            cg = Cgroups.detect(self.state_dir)
            for name in cg.names():
                cg.remove(name, kill=True)
            for b in cg.bases:
                os.rmdir(b)
        except OSError:
            pass


@pytest.fixture
def daemon_factory(tmp_path):
    made = []

    def make(env: dict | None = None, **settings) -> Daemon:
        base = dict(min_idle_s=1.0, drain_grace_s=2.0, log_level="info")
        base.update(settings)
        d = Daemon(tmp_path / f"state{len(made)}", tmp_path / f"vmmd{len(made)}.log", base)
        made.append(d)
        return d.start(env=env)

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture
def counter_image(daemon, snapshots):
    return daemon.register(snapshots["counter"], "counter")


def wait_for(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)
