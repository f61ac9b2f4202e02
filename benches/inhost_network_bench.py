"""Runs INSIDE an emulated KVM host (benches/bench_network.py starts it there): TCP through a
MicroVM's NIC, in vmmd's VMM and in the peer VMM (QEMU, virtio-net on `-netdev stream` to a
passt of its own: the same backend), the same guest and the same measurements, against this
host's loopback moving the same bytes:

    guest -> host   the guest POSTs a file (busybox wget --post-file) to a server on this host
    host -> guest   the guest downloads a file (busybox wget) from a server on this host
    latency         this host GETs a small file from busybox httpd in the guest, through the
                    exposed port (a connection per request), p50 and p99; the baseline is the
                    same busybox httpd on this host's loopback

Bulk transfers are timed from this host around the guest's wget, less the same wget moving
nothing (process start and connection set-up), so vmmd and QEMU are measured alike; the
loopback baseline is timed by this host's servers, which see the whole transfer there. Prints one line `BENCH <json>`. Argv: kernel initrd rootfs.
"""
from __future__ import annotations

import asyncio
import http.server
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

from guest_peer import QemuGuest, VmmdGuest  # noqa: E402
from netpeer import GATEWAY  # noqa: E402
from vmmd.agent import AgentError  # noqa: E402

ARCH = platform.machine()
MiB = 1 << 20
BULK = 32 * MiB if ARCH == "x86_64" else 16 * MiB
REQUESTS = 200
SINK, SOURCE, GUEST_HTTP, HOST_HTTP = 9000, 9001, 8000, 7000
BLOB = os.urandom(BULK)
timings: list[float] = []


class Bench(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_POST(self):          # guest -> host: read the body, time it
        n = int(self.headers["Content-Length"])
        t0, got = None, 0
        while got < n:
            chunk = self.rfile.read1(min(1 << 20, n - got))
            if not chunk:
                break
            t0 = t0 or time.monotonic()
            got += len(chunk)
        timings.append((time.monotonic() - t0) if t0 is not None and got == n else 0.0)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):           # host -> guest: send, wait for the guest to close
        body = BLOB if self.path != "/empty" else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        t0 = time.monotonic()
        self.wfile.write(body)
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        while self.connection.recv(65536):
            pass
        timings.append(time.monotonic() - t0)

    def log_message(self, *a):
        pass


def serve() -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", SINK), Bench)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def loopback_bulk() -> dict:
    """The baseline: the same transfers through this host's loopback, Python on both ends."""
    out = {}
    s = socket.create_connection(("127.0.0.1", SINK))
    s.sendall(f"POST / HTTP/1.0\r\nContent-Length: {BULK}\r\n\r\n".encode())
    s.sendall(BLOB)
    s.recv(4096)
    s.close()
    out["g2h_MiB_s"] = round(BULK / MiB / timings.pop(), 1)
    s = socket.create_connection(("127.0.0.1", SINK))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    got = 0
    while got < BULK:
        got += len(s.recv(1 << 20))
    s.close()
    time.sleep(0.2)
    out["h2g_MiB_s"] = round(BULK / MiB / timings.pop(), 1)
    return out


def latencies(port: int) -> dict:
    """GET /small from busybox httpd on `port` of this host's loopback, a connection each."""
    req = b"GET /small HTTP/1.0\r\n\r\n"
    ts = []
    for _ in range(REQUESTS):
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(req)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        assert data.endswith(b"x" * 64), data[:200]
        ts.append(time.monotonic() - t0)
    ts.sort()
    return {"p50_ms": round(statistics.median(ts) * 1e3, 2),
            "p99_ms": round(ts[int(len(ts) * 0.99) - 1] * 1e3, 2)}


def host_httpd() -> subprocess.Popen:
    os.makedirs("/tmp/www-host", exist_ok=True)
    with open("/tmp/www-host/small", "wb") as f:
        f.write(b"x" * 64)
    bb = shutil.which("busybox") or os.environ["VMMD_BUSYBOX"]
    return subprocess.Popen([bb, "httpd", "-f", "-p", f"127.0.0.1:{HOST_HTTP}", "-h",
                             "/tmp/www-host"])


async def ready(g, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await g.agent.ping()
            return
        except (AgentError, OSError):
            pass
        if not g.alive() or time.monotonic() > deadline:
            raise SystemExit(f"{g.vmm}: no agent: {g.stop()}\n{g.console_text()[-3000:]}")
        await asyncio.sleep(0.02)


async def sh(g, script: str) -> str:
    r = await g.agent.run(["sh", "-c", script])
    out = (r.stdout + r.stderr).decode(errors="replace")
    if r.code != 0:
        raise SystemExit(f"{g.vmm}: `{script}` failed ({r.exit}): {out[-2000:]}")
    return out


async def measure(peer, kernel: str, initrd: str, rootfs: str) -> dict:
    disk = f"/tmp/netbench-{peer.vmm}.ext4"
    shutil.copyfile(rootfs, disk)
    kw = {"expose": (GUEST_HTTP,)}
    if peer is VmmdGuest:
        from vmmd.net import EgressPolicy
        kw["egress"] = EgressPolicy(allow=(f"{GATEWAY}/32",))
    g = peer(ARCH, kernel, initrd, disk=disk, workdir=f"/tmp/netbench-{peer.vmm}", **kw)
    g.start()
    try:
        await ready(g, 600)
        await sh(g, f"head -c {BULK} /dev/urandom > /tmp/blob && mkdir -p /tmp/www && "
                    f"head -c 64 /dev/zero | tr '\\0' x > /tmp/www/small && "
                    f"httpd -p {GUEST_HTTP} -h /tmp/www")
        out = {}
        await sh(g, ": > /tmp/empty")

        async def timed(script: str) -> float:
            t0 = time.monotonic()
            await sh(g, script)
            return time.monotonic() - t0
        url = f"http://{GATEWAY}:{SINK}/"
        for name, full, empty in (
                ("g2h", f"wget -q -O /dev/null --post-file /tmp/blob {url}",
                 f"wget -q -O /dev/null --post-file /tmp/empty {url}"),
                ("h2g", f"wget -q -O /dev/null {url}", f"wget -q -O /dev/null {url}empty")):
            took = min([await timed(full) for _ in range(2)])
            idle = min([await timed(empty) for _ in range(3)])
            out[f"{name}_MiB_s"] = round(BULK / MiB / max(took - idle, 1e-3), 1)
        timings.clear()
        out.update(latencies(g.host_port(GUEST_HTTP)))
        return out
    finally:
        g.stop()


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    srv = serve()
    httpd = host_httpd()
    try:
        time.sleep(0.3)
        res = {"arch": ARCH, "bulk_MiB": BULK // MiB, "requests": REQUESTS,
               "loopback": {**loopback_bulk(), **latencies(HOST_HTTP)}}
        print(f"loopback: {json.dumps(res['loopback'])}", flush=True)
        for peer in (VmmdGuest, QemuGuest):
            res[peer.vmm] = asyncio.run(measure(peer, kernel, initrd, rootfs))
            print(f"{peer.vmm}: {json.dumps(res[peer.vmm])}", flush=True)
        print("BENCH " + json.dumps(res), flush=True)
    finally:
        httpd.kill()
        httpd.wait()
        srv.shutdown()


if __name__ == "__main__":
    main()
