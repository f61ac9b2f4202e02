"""The Linux part of the main job; runs INSIDE the emulated x86_64 KVM host (scripts/demo.py
starts it there), the way an operator would use vmmd:

1. build an image: boot a Linux MicroVM (Debian's cloud kernel, vmmd's initramfs and agent, an
   ext4 root) with vmmd.microvm, let it settle, snapshot it;
2. start `vmmd serve` and talk to it over gRPC as a scheduler does (vmmd.client): register the
   snapshot as an image, launch two MicroVMs from it, exec real work in them, suspend one and
   exec again (which wakes it: its files are still there), list them with `vmmctl ls`;
3. the network (docs/network.md): each MicroVM has a NIC behind its own passt; one may fetch
   from a server on this host (its egress policy names it), the other may not (the default
   keeps the host out of reach); one serves HTTP through an exposed port, reached with
   Connect; after the suspend it fetches again with a new MAC.
Prints each call, what it returned, and how long it took. (vmmctl does the same from a shell;
inside the emulated host its Python start-up alone takes seconds, so the calls are timed here.)

4. image-then-launch (docs/images.md): a Flask app built from a Dockerfile and a zip with
   BuildImage (its Debian base pulled from a registry on this host's loopback, RUN steps in a
   build MicroVM), two sessions launched from it each answer an HTTP request through their
   NIC; the build, snapshot and launch times beside a cold boot of the same app.

Argv: kernel initrd rootfs [base-image-layout].
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import hashlib
import http.server
import threading

from vmmd.client import Client
from vmmd.microvm import LinuxSpec, MicroVM, NetOptions
from vmmd.net import EgressPolicy
from vmmd.v1 import images_pb2 as ipb
from vmmd.v1 import microvms_pb2 as mpb

WORK = "/tmp/vmmd-demo"
SOCK = f"{WORK}/vmmd.sock"
GATEWAY, FILES_PORT, GUEST_HTTP = "10.0.2.2", 8080, 8000     # hosts/init.sh, docs/network.md
FETCH = f"wget -q -O - http://{GATEWAY}:{FILES_PORT}/notes.txt | sha256sum 2>&1"
WORKLOAD = ("n=0; for f in /bin/*; do n=$((n+1)); done; "
            "echo \"$(uname -sr) on $(uname -m), $(nproc) vCPUs, $n programs in /bin\"; "
            "echo $((6 * 7)) > /data/answer; sha256sum /data/hello.txt")


async def build_image(kernel: str, initrd: str, rootfs: str) -> None:
    t0 = time.monotonic()
    vm = MicroVM.boot(LinuxSpec("x86_64", kernel, initrd, rootfs, mem_mib=128, net=True),
                      f"{WORK}/build", NetOptions(EgressPolicy.deny_all()))
    try:
        await vm.wait_ready(300)
        boot = time.monotonic() - t0
        t0 = time.monotonic()
        await vm.snapshot(f"{WORK}/image", keep_running=False)
        print(f"image: booted to agent-ready in {boot:.1f} s (guest CPU emulated here), "
              f"snapshot in {time.monotonic() - t0:.2f} s")
    finally:
        vm.close()


def step(what: str, t0: float, lines: str | bytes = "") -> None:
    print(f"  {what:52} {(time.monotonic() - t0) * 1000:8.0f} ms")
    if isinstance(lines, bytes):
        lines = lines.decode(errors="replace")
    for line in lines.rstrip().splitlines():
        print(f"      | {line}")


def file_server() -> bytes:
    """A web server on this host with one file: what MicroVMs may or may not fetch."""
    notes = b"vmmd release notes: MicroVMs have a network now\n" * 100
    os.makedirs(f"{WORK}/www")
    with open(f"{WORK}/www/notes.txt", "wb") as f:
        f.write(notes)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=f"{WORK}/www", **kw)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", FILES_PORT), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return notes


def connect_http(c: Client, vm_id: str, port: int = GUEST_HTTP) -> bytes:
    def reqs():
        yield mpb.ConnectRequest(start=mpb.ConnectStart(microvm_id=vm_id, port=port,
                                                        network=True))
        yield mpb.ConnectRequest(data=b"GET / HTTP/1.0\r\n\r\n")
    return b"".join(r.data for r in c.vms.Connect(reqs(), timeout=60))


FLASK_APP = """from flask import Flask
app = Flask(__name__)

@app.route("/")
def hello():
    return f"hello from Flask, MAC {open('/sys/class/net/eth0/address').read().strip()}\\n"

if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8000)
"""
FLASK_DOCKERFILE = """FROM {base}
WORKDIR /app
RUN python3 -c "import flask; print('flask', flask.__version__)"
COPY app.py .
EXPOSE 8000
CMD ["python3", "app.py"]
"""


def image_then_launch(c: Client, layout: str) -> None:
    import io
    import zipfile
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from images_support import push, registry
    print("\nImage-then-launch: a Flask app from a Dockerfile and a zip")
    with registry() as reg:
        base = reg.ref("debian-flask:latest")
        push(layout, base)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("app.py", FLASK_APP)
        t0 = time.monotonic()
        image, cold = None, 0.0
        req = ipb.BuildImageRequest(name="flask-app", dockerfile=FLASK_DOCKERFILE.format(base=base),
                                    context_zip=buf.getvalue())
        for ev in c.images.BuildImage(req, timeout=1500):
            if ev.HasField("image"):
                image = ev.image
            elif ev.seconds or ev.cached or ev.step in ("FROM", "initialize", "validate"):
                print(f"      | {ev.step:10} {ev.log[:70]:70} "
                      f"{'cached' if ev.cached else f'{ev.seconds:6.1f} s'}")
                if ev.step == "initialize":
                    cold = ev.seconds
        step(f"BuildImage -> {image.id[:16]}..", t0)
        for who in ("x", "y"):
            req = mpb.LaunchRequest(image_id=image.id, labels={"app": "flask", "who": who})
            req.network.expose_ports.append(8000)
            t0 = time.monotonic()
            vm = c.vms.Launch(req)
            launched = time.monotonic() - t0
            body = b""
            while b"hello from Flask" not in body and time.monotonic() - t0 < 120:
                try:
                    body = connect_http(c, vm.id, 8000)
                except Exception:  # noqa: BLE001 - not answering yet
                    time.sleep(0.1)
            answered = time.monotonic() - t0
            step(f"Launch {who} + HTTP GET / ({launched * 1000:.0f} ms to RUNNING)", t0,
                 body.split(b"\r\n\r\n", 1)[-1])
            print(f"      | launch to the app's first answer {answered:.2f} s; a cold boot of the "
                  f"same image to app-ready took {cold:.1f} s: {cold / answered:.0f}x")


def main() -> None:
    kernel, initrd, rootfs = sys.argv[1:4]
    layout = sys.argv[4] if len(sys.argv) > 4 else None
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    notes = file_server()
    asyncio.run(build_image(kernel, initrd, rootfs))
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):   # the host's init mounts none
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
    with open(f"{WORK}/vmmd.toml", "w") as f:
        # BuildImage's guest: the kernel and initramfs this demo was given (the host has no
        # compiler to build vmmd's initramfs itself)
        f.write(f'socket = "{SOCK}"\nreserved_memory_mib = 256\n'
                f'guest_kernel = "{kernel}"\nguest_initrd = "{initrd}"\n')
    log = open(f"{WORK}/vmmd.log", "ab")
    daemon = subprocess.Popen([sys.executable, "-m", "vmmd.cli", "serve", "--state-dir",
                               f"{WORK}/state", "--config", f"{WORK}/vmmd.toml"],
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        while not os.path.exists(SOCK):
            if daemon.poll() is not None:
                raise SystemExit(open(f"{WORK}/vmmd.log").read())
            time.sleep(0.1)
        print(f"vmmd serve: pid {daemon.pid}, {SOCK}")
        t0 = time.monotonic()
        c = Client(SOCK)
        t0 = time.monotonic()
        img = c.images.RegisterImage(ipb.RegisterImageRequest(
            name="busybox-demo", snapshot=ipb.SnapshotSource(
                snapshot_dir=f"{WORK}/image", kernel=kernel, initrd=initrd, rootfs=rootfs,
                devices=ipb.DeviceConfig(linux=True, net=True),
                agent=ipb.GuestAgent(present=True))))
        step(f"RegisterImage -> {img.id[:16]}..", t0, "(copies memory and disk into the store)")
        vms = []
        for who in ("a", "b"):
            req = mpb.LaunchRequest(image_id=img.id, labels={"who": who})
            if who == "a":      # may reach the host's file server, serves HTTP on GUEST_HTTP
                req.network.egress.allow.append(f"{GATEWAY}/32:{FILES_PORT}")
                req.network.expose_ports.append(GUEST_HTTP)
            t0 = time.monotonic()
            vm = c.vms.Launch(req)
            step(f"Launch {who} -> {vm.id} (MAC {vm.network.mac})", t0)
            vms.append(vm.id)
        t0 = time.monotonic()
        r = c.exec(vms[0], ["sh", "-c", WORKLOAD])
        step(f"Exec in {vms[0]}: a shell script", t0, r.stdout + r.stderr)
        for vm in vms:
            t0 = time.monotonic()
            r = c.exec(vm, ["cat", "/proc/sys/kernel/random/uuid"])
            step(f"Exec in {vm}: a fresh uuid", t0, r.stdout)
        print(f"  (the host's file has sha256 {hashlib.sha256(notes).hexdigest()})")
        for vm, why in zip(vms, ("its policy allows the host's server",
                                 "the default policy keeps the host out")):
            t0 = time.monotonic()
            r = c.exec(vm, ["sh", "-c", FETCH])
            step(f"Exec in {vm}: wget from the host ({why})", t0, r.stdout + r.stderr)
        c.exec(vms[0], ["sh", "-c", f"mkdir -p /tmp/www && echo hello from MicroVM a "
                                    f"> /tmp/www/index.html && httpd -p {GUEST_HTTP} -h /tmp/www"])
        t0 = time.monotonic()
        body = connect_http(c, vms[0])
        step(f"Connect {vms[0]}:{GUEST_HTTP} through its NIC: HTTP GET", t0,
             body.split(b"\r\n\r\n", 1)[-1])
        t0 = time.monotonic()
        c.vms.Suspend(mpb.SuspendRequest(microvm_id=vms[0]))
        step(f"Suspend {vms[0]} (to disk, worker ends)", t0)
        t0 = time.monotonic()
        r = c.exec(vms[0], ["cat", "/data/answer"])
        step(f"Exec in {vms[0]}: wakes it, reads its file", t0, r.stdout)
        t0 = time.monotonic()
        r = c.exec(vms[0], ["sh", "-c", FETCH])
        mac = c.vms.Get(mpb.GetRequest(microvm_id=vms[0])).network.mac
        step(f"Exec in {vms[0]}: wget again (new MAC {mac})", t0, r.stdout + r.stderr)
        out = subprocess.run([os.path.join(sys.prefix, "bin", "vmmctl"), "--socket", SOCK, "ls"],
                             capture_output=True, text=True)
        print("  $ vmmctl ls\n" + "\n".join(f"      {ln}" for ln in out.stdout.splitlines()))
        for vm in vms:
            c.vms.Terminate(mpb.TerminateRequest(microvm_id=vm))
        if layout:
            image_then_launch(c, layout)
    except BaseException:
        print("--- vmmd log (tail) ---\n" + open(f"{WORK}/vmmd.log").read()[-6000:])
        for d in sorted(os.listdir(f"{WORK}/state/vms")) if os.path.isdir(f"{WORK}/state/vms") else []:
            for f in ("worker.log", "serial.log"):
                path = f"{WORK}/state/vms/{d}/{f}"
                if os.path.exists(path):
                    print(f"--- {d}/{f} ---\n" + open(path, errors="replace").read()[-3000:])
        raise
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
