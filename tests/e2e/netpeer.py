"""The far side of a MicroVM's network inside an emulated KVM host (docs/network.md, "In the
emulated hosts"): HTTP servers and a DNS server on this host, which guests reach through their
passt (the gateway 10.0.2.2 is this host's loopback), and WORLD, an address added to dummy0 that
stands for a destination outside the protected ranges."""
from __future__ import annotations

import http.server
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import threading
import time

GATEWAY = "10.0.2.2"            # hosts/init.sh: dummy0 10.0.2.15/24, default via 10.0.2.2
GUEST_ADDR = "10.0.2.15"
WORLD = "198.51.100.7"          # TEST-NET-2
FILES_PORT, OTHER_PORT = 8080, 8081
NAMES = {b"files.vmmd.test": GATEWAY, b"world.vmmd.test": WORLD}


class Counting(http.server.SimpleHTTPRequestHandler):
    """GET /blob: the blob; /slow: a download that never ends; anything else: "port N"."""
    hits: dict[int, int] = {}
    blob = b""
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        port = self.server.server_address[1]
        Counting.hits[port] = Counting.hits.get(port, 0) + 1
        if self.path == "/slow":       # a byte every 0.2 s, for a connection open at a snapshot
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b".")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return
        body = Counting.blob if self.path == "/blob" else f"port {port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Dns(socketserver.BaseRequestHandler):
    """A records for NAMES, NXDOMAIN for anything else: enough for busybox's nslookup/wget.
    A datagram that is no query is counted in `malformed` and dropped."""
    queries = 0
    malformed = 0

    def handle(self):
        data, sock = self.request
        Dns.queries += 1
        i, labels = 12, []
        while i < len(data) and data[i]:
            labels.append(data[i + 1:i + 1 + data[i]])
            i += 1 + data[i]
        if len(data) < 12 or i + 5 > len(data):
            Dns.malformed += 1
            return
        qid = struct.unpack(">H", data[:2])[0]
        qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
        question = data[12:i + 5]
        addr = NAMES.get(b".".join(labels).lower())
        if addr and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(addr)
            head = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0)
        else:          # a known name without an A record: no answer; unknown: NXDOMAIN
            answer = b""
            head = struct.pack(">HHHHHH", qid, 0x8180 if addr else 0x8183, 1, 0, 0, 0)
        sock.sendto(head + question + answer, self.client_address)


def tool(*argv: str) -> None:
    """A system tool: the machine's own in the x86_64 host, busybox's in the arm64 userland."""
    exe = shutil.which(argv[0])
    subprocess.run([exe, *argv[1:]] if exe else ["busybox", *argv], check=True,
                   capture_output=True)


class World:
    """Starts the servers; `stop()` ends them."""

    def __init__(self, blob_bytes: int = 50 << 20):
        Counting.blob = os.urandom(blob_bytes)
        tool("ip", "addr", "add", f"{WORLD}/32", "dev", "dummy0")
        # passt relays the guests' DNS to the host's resolver (resolv.conf): ours
        if os.path.exists("/etc/resolv.conf"):
            with open("/tmp/resolv.conf", "w") as f:
                f.write("nameserver 127.0.0.1\n")
            tool("mount", "--bind", "/tmp/resolv.conf", "/etc/resolv.conf")
        else:      # the arm64 userland has none, and its /etc is read-only: a copy with one
            shutil.copytree("/etc", "/tmp/etc", symlinks=True)
            with open("/tmp/etc/resolv.conf", "w") as f:
                f.write("nameserver 127.0.0.1\n")
            tool("mount", "--bind", "/tmp/etc", "/etc")
        self.servers = [http.server.ThreadingHTTPServer(("0.0.0.0", p), Counting)
                        for p in (FILES_PORT, OTHER_PORT)]
        self.servers.append(socketserver.ThreadingUDPServer(("127.0.0.1", 53), Dns))
        for s in self.servers:
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()
