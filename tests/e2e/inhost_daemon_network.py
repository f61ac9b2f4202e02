"""Runs INSIDE the emulated x86_64 KVM host (tests/e2e/test_network.py starts it there): the
daemon's side of guest networking. `vmmd serve` with real workers (seccomp enforcing, each
starting its MicroVM's passt) launches a Linux MicroVM with a NIC from an image, with an egress
policy and an exposed port; the guest downloads from this host, a guest HTTP server is reached
through Connect(network), SetEgress takes effect at once, and after a suspend the woken MicroVM
has a new MAC and its network back. Prints `CHECK <name> <value>` lines and `TIME` lines.

Argv: kernel initrd rootfs.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from inhost_daemon_linux import SOCK, WORK, check, start_daemon, timing  # noqa: E402
from netpeer import FILES_PORT, GATEWAY, Counting, World  # noqa: E402
from vmmd.client import Client  # noqa: E402
from vmmd.microvm import LinuxSpec, MicroVM, NetOptions  # noqa: E402
from vmmd.net import EgressPolicy  # noqa: E402
from vmmd.v1 import images_pb2 as ipb  # noqa: E402
from vmmd.v1 import microvms_pb2 as mpb  # noqa: E402
from vmmd.v1 import types_pb2 as tpb  # noqa: E402

GUEST_HTTP = 8000


async def make_image_snapshot(kernel: str, initrd: str, rootfs: str) -> None:
    vm = MicroVM.boot(LinuxSpec("x86_64", kernel, initrd, rootfs, net=True), f"{WORK}/build",
                      NetOptions(EgressPolicy.deny_all()))
    try:
        await vm.wait_ready(300)
        await vm.snapshot(f"{WORK}/image-snap", keep_running=False)
    finally:
        vm.close()


def sh(c: Client, vm_id: str, script: str) -> tuple[str, int]:
    r = c.exec(vm_id, ["sh", "-c", script])
    return (r.stdout + r.stderr).decode(errors="replace"), r.code


def fetch(c: Client, vm_id: str, url: str) -> str:
    return sh(c, vm_id, f"timeout 8 wget -q -O - {url} 2>&1; echo rc=$?")[0]


def connect_network(vms, vm_id: str, port: int, payload: bytes) -> bytes:
    def reqs():
        yield mpb.ConnectRequest(start=mpb.ConnectStart(microvm_id=vm_id, port=port,
                                                        network=True))
        yield mpb.ConnectRequest(data=payload)
    out = b""
    for r in vms.Connect(reqs(), timeout=60):
        out += r.data
    return out


def port_forward_get(vm_id: str, network: bool) -> bytes:
    """`vmmctl port-forward VM 0:8000` listens on a free local port; one HTTP GET through it."""
    argv = [os.path.join(sys.prefix, "bin", "vmmctl"), "--socket", SOCK, "port-forward", vm_id,
            f"0:{GUEST_HTTP}"] + (["--network"] if network else [])
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        line = p.stderr.readline().decode()       # "forwarding 127.0.0.1:P -> ..."
        port = int(line.split("127.0.0.1:")[1].split()[0])
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        s.close()
        return out
    finally:
        p.kill()
        p.wait()


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    world = World(blob_bytes=8 << 20)
    asyncio.run(make_image_snapshot(kernel, initrd, rootfs))
    daemon = start_daemon()
    try:
        c = Client(SOCK)
        images, vms = c.images, c.vms
        img = images.RegisterImage(ipb.RegisterImageRequest(name="net", snapshot=ipb.SnapshotSource(
            snapshot_dir=f"{WORK}/image-snap", kernel=kernel, initrd=initrd, rootfs=rootfs,
            devices=ipb.DeviceConfig(linux=True, net=True), agent=ipb.GuestAgent(present=True))))
        check("image_net", img.devices.net)
        req = mpb.LaunchRequest(image_id=img.id)
        req.network.egress.allow.append(f"{GATEWAY}/32:{FILES_PORT}")
        req.network.expose_ports.append(GUEST_HTTP)
        t0 = time.monotonic()
        a = vms.Launch(req)
        timing("launch_with_network", t0)
        check("mac_set", len(a.network.mac) == 17)
        check("port_forwarded", [(p.guest_port, p.host_port > 0) for p in a.network.ports]
              == [(GUEST_HTTP, True)])
        out, code = sh(c, a.id, f"wget -q -O - http://files.vmmd.test:{FILES_PORT}/blob | sha256sum")
        check("download_intact", out.split()[0] == hashlib.sha256(Counting.blob).hexdigest())
        out, _ = sh(c, a.id, "cat /sys/class/net/eth0/address")
        check("guest_mac_is_launch_mac", out.strip() == a.network.mac)
        sh(c, a.id, f"mkdir -p /tmp/www && echo served-by-the-guest > /tmp/www/index.html && "
                    f"httpd -p {GUEST_HTTP} -h /tmp/www")
        body = connect_network(vms, a.id, GUEST_HTTP, b"GET /index.html HTTP/1.0\r\n\r\n")
        check("connect_network", body.endswith(b"served-by-the-guest\n"))
        for network in (True, False):       # vmmctl port-forward, through the NIC and the agent
            check(f"vmmctl_port_forward_{'network' if network else 'agent'}",
                  port_forward_get(a.id, network).endswith(b"served-by-the-guest\n"))
        try:
            connect_network(vms, a.id, 9, b"x")
            check("unexposed_port", "accepted")
        except grpc.RpcError as e:
            check("unexposed_port", e.code().name)

        deny = mpb.SetEgressRequest(microvm_id=a.id)
        deny.egress.deny_by_default = True
        deny.egress.no_dns = True
        got = vms.SetEgress(deny)
        check("egress_reported", got.network.egress.deny_by_default and got.network.egress.no_dns)
        hits = dict(Counting.hits)
        out = fetch(c, a.id, f"http://{GATEWAY}:{FILES_PORT}/")
        check("deny_all_blocks", "rc=0" not in out and Counting.hits == hits)
        try:
            bad = mpb.SetEgressRequest(microvm_id=a.id)
            bad.egress.allow.append("10.0.0.0/40")
            vms.SetEgress(bad)
            check("bad_entry", "accepted")
        except grpc.RpcError as e:
            check("bad_entry", e.code().name)
        allow = mpb.SetEgressRequest(microvm_id=a.id)
        allow.egress.allow.append(f"{GATEWAY}/32:{FILES_PORT}")
        vms.SetEgress(allow)
        out = fetch(c, a.id, f"http://{GATEWAY}:{FILES_PORT}/")
        check("allow_again", f"port {FILES_PORT}" in out)

        mac_before = a.network.mac
        vms.Suspend(mpb.SuspendRequest(microvm_id=a.id))
        check("suspended", tpb.MicroVMState.Name(vms.Get(mpb.GetRequest(microvm_id=a.id)).state))
        t0 = time.monotonic()
        out = fetch(c, a.id, f"http://files.vmmd.test:{FILES_PORT}/")     # wakes it
        timing("wake_to_http_answer", t0)
        check("network_after_wake", f"port {FILES_PORT}" in out and "rc=0" in out)
        woke = vms.Get(mpb.GetRequest(microvm_id=a.id))
        out, _ = sh(c, a.id, "cat /sys/class/net/eth0/address")
        check("new_mac_after_wake", woke.network.mac != mac_before and out.strip() == woke.network.mac)
        check("policy_kept_across_wake", list(woke.network.egress.allow) ==
              [f"{GATEWAY}/32:{FILES_PORT}"])
        body = connect_network(vms, a.id, GUEST_HTTP, b"GET /index.html HTTP/1.0\r\n\r\n")
        check("connect_network_after_wake", body.endswith(b"served-by-the-guest\n"))
        vms.Terminate(mpb.TerminateRequest(microvm_id=a.id))
        check("done", True)
    finally:
        daemon.terminate()
        daemon.wait(30)
        world.stop()
        print("--- vmmd log (tail) ---\n" + open(f"{WORK}/vmmd.log").read()[-4000:], flush=True)


if __name__ == "__main__":
    main()
