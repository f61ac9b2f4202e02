"""A small synchronous client for schedulers and scripts: the daemon's stubs on one channel,
and the streaming calls (Exec, WriteFile, ReadFile) collected into plain values."""
from __future__ import annotations

import dataclasses

import grpc

from .v1 import host_pb2_grpc, images_pb2_grpc, microvms_pb2 as mpb, microvms_pb2_grpc


@dataclasses.dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    code: int
    signal: int


class Client:
    def __init__(self, target: str):
        """target: a Unix socket path, or host:port."""
        self.channel = grpc.insecure_channel(
            target if ":" in target and not target.startswith("/") else f"unix:{target}")
        self.images = images_pb2_grpc.ImageServiceStub(self.channel)
        self.vms = microvms_pb2_grpc.MicroVMServiceStub(self.channel)
        self.host = host_pb2_grpc.HostServiceStub(self.channel)

    def exec(self, vm_id: str, argv: list[str], stdin: bytes = b"",
             timeout: float = 300) -> ExecResult:
        def reqs():
            yield mpb.ExecRequest(start=mpb.ExecStart(microvm_id=vm_id, argv=argv))
            if stdin:
                yield mpb.ExecRequest(stdin=stdin)
            yield mpb.ExecRequest(close_stdin=True)
        r = ExecResult(b"", b"", -1, 0)
        for m in self.vms.Exec(reqs(), timeout=timeout):
            kind = m.WhichOneof("msg")
            if kind == "stdout":
                r.stdout += m.stdout
            elif kind == "stderr":
                r.stderr += m.stderr
            elif kind == "exit":
                r.code, r.signal = m.exit.code, m.exit.signal
        return r

    def write_file(self, vm_id: str, path: str, data: bytes, timeout: float = 300) -> int:
        def reqs():
            yield mpb.WriteFileRequest(start=mpb.WriteFileStart(microvm_id=vm_id, path=path))
            for i in range(0, len(data), 1 << 20):
                yield mpb.WriteFileRequest(data=data[i:i + (1 << 20)])
        return self.vms.WriteFile(reqs(), timeout=timeout).bytes_written

    def read_file(self, vm_id: str, path: str, timeout: float = 300) -> bytes:
        return b"".join(c.data for c in self.vms.ReadFile(
            mpb.ReadFileRequest(microvm_id=vm_id, path=path), timeout=timeout))

    def close(self) -> None:
        self.channel.close()
