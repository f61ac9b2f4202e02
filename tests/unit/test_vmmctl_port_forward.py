"""`vmmctl port-forward` on its own: a local listener whose connections each become a Connect
stream. The far end here is a minimal MicroVMService that answers like a guest HTTP server
(the real one is exercised in tests/e2e/test_network.py); what is checked is vmmctl's relay:
bytes both ways, the start message, and the end of the stream reaching the local client."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import subprocess
import sys
import threading

import grpc

from vmmd.v1 import microvms_pb2 as mpb
from vmmd.v1 import microvms_pb2_grpc as mgrpc


class Guest(mgrpc.MicroVMServiceServicer):
    starts: list = []

    async def Connect(self, req_iter, ctx):
        first = await anext(req_iter)
        Guest.starts.append((first.start.microvm_id, first.start.port, first.start.network))
        got = b""
        async for m in req_iter:
            got += m.data
            if got.endswith(b"\r\n\r\n"):
                break
        yield mpb.ConnectResponse(data=b"HTTP/1.0 200 OK\r\n\r\n")
        yield mpb.ConnectResponse(data=b"echo:" + got.split(b"\r\n")[0])


def serve(sock: str, ready: threading.Event, stop: list) -> None:
    async def main():
        server = grpc.aio.server()
        mgrpc.add_MicroVMServiceServicer_to_server(Guest(), server)
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        stop.append((asyncio.get_running_loop(), server))
        ready.set()
        await server.wait_for_termination()
    asyncio.run(main())


def test_port_forward_relays_a_request_and_its_answer_then_ends_the_connection(tmp_path):
    sock = str(tmp_path / "vmmd.sock")
    ready, stop = threading.Event(), []
    t = threading.Thread(target=serve, args=(sock, ready, stop), daemon=True)
    t.start()
    assert ready.wait(10)
    vmmctl = os.path.join(sys.prefix, "bin", "vmmctl")
    p = subprocess.Popen([vmmctl, "--socket", sock, "port-forward", "vm-1", "0:8000",
                          "--network"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        line = p.stderr.readline().decode()
        assert "forwarding 127.0.0.1:" in line and "vm-1:8000 (network)" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        for _ in range(2):                    # each local connection is its own stream
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):     # ends: the stream's end closes the connection
                out += chunk
            s.close()
            assert out == b"HTTP/1.0 200 OK\r\n\r\necho:GET /x HTTP/1.0"
        assert Guest.starts == [("vm-1", 8000, True)] * 2
    finally:
        p.kill()
        p.wait()
        loop, server = stop[0]
        try:        # stopping ends wait_for_termination, and asyncio.run may cancel the stop
            asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        except concurrent.futures.CancelledError:
            pass
        t.join(10)
