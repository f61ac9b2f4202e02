"""The VMM worker: one process per MicroVM, the only code that touches vmmd.native.

A worker is forked from the zygote (vmmd/zygote.py) and runs `main(conf, fd)`:
  1. leaves the daemon's session, joins its cgroup, sets rlimits, closes every fd it was not
     given (close_range), names itself;
  2. listens on <vm dir>/worker.sock (so a restarted daemon can re-attach: the socketpair fd it
     was born with dies with the old daemon);
  3. with a network, starts the MicroVM's passt (vmmd.net); restores the VM from the top of its
     snapshot chain, applies the egress policy, installs the seccomp filter (TSYNC), starts the
     vCPUs and reports "running" with its timings (and its MAC and port forwards);
  4. serves requests (pause, resume, snapshot, stats, net_policy, net_stats, stop) until told
     to exit.

Messages are length-prefixed msgpack maps (vmmd/wire.py):
  daemon -> worker  {"id": n, "op": "...", ...}
  worker -> daemon  {"id": n, "ok": true, ...} | {"id": n, "ok": false, "error": str, "errno": int}
                    {"event": "running" | "stopped" | "hello" | "serial", ...}
Events raised while no daemon is connected are kept (bounded) and sent on the next connection.

Devices come from the image's configuration, never from its snapshot: an image made from the
test guests ("debug" devices) gets the debug port and the MMIO test device, which exist only in
the test build of the native core (VMMD_NATIVE=test); the production core refuses them.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
import traceback

from . import seccomp, wire
from . import native

MAX_QUEUED_EVENTS = 256
SERIAL_LOG_CAP = 1 << 20
PR_SET_NAME = 15


def _prctl_name(name: str) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except OSError:
        pass


def inspect_snapshot(directory: str) -> dict:
    """What the daemon needs to know about a snapshot before registering it as an image."""
    info = native.snapshot_info(directory)
    return {"mem_size": info.mem_size, "vcpus": info.vcpus, "diff": info.diff,
            "pages": info.pages, "depth": info.depth}


def devices_of(config: dict | None, vm_dir: str = "", rootfs: str = "",
               mac: bytes | None = None) -> tuple:
    """The native device list an image's device configuration stands for (a Linux MicroVM's
    files, its disk layer, vsock socket and NIC backend, in its directory)."""
    config = config or {}
    if config.get("debug"):
        return (native.Device(native.DeviceType.DEBUG), native.Device(native.DeviceType.TESTDEV))
    if config.get("linux"):
        from .microvm import linux_devices
        if config.get("net") and mac is None:
            raise native.VmmError(errno.EINVAL, "the image has a network: the worker needs "
                                  "its MAC and policy (conf['network'])")
        return linux_devices(os.uname().machine, vm_dir, rootfs or None,
                             mac=mac if config.get("net") else None)
    return ()


def _restore(conf: dict, mac: bytes | None = None) -> native.VM:
    """Restores the VM at the top of the chain, with the image's devices passed explicitly."""
    backend = {"mmap": native.Backend.MMAP, "uffd": native.Backend.UFFD}[conf["backend"]]
    if (conf.get("devices") or {}).get("linux"):
        # a previous worker's socket, and its writable layer: empty after a suspend (the
        # snapshot sealed what it held); after a crash it holds writes no snapshot has, which
        # the restored memory does not know about: kept aside, never mixed in
        sock = os.path.join(conf["vm_dir"], "vsock.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        overlay = os.path.join(conf["vm_dir"], "disk.overlay")
        if os.path.exists(overlay):
            if os.path.getsize(overlay) == 0:
                os.unlink(overlay)
            else:
                os.rename(overlay, f"{overlay}.orphaned-{int(time.time())}")
    kw = {"track_dirty": True,
          "devices": devices_of(conf.get("devices"), conf.get("vm_dir", ""), conf.get("rootfs"),
                                mac)}
    if conf.get("working_set") and backend == native.Backend.UFFD:
        kw["working_set"] = conf["working_set"]
    if conf.get("root"):
        kw["root"] = conf["root"]
    return native.VM.restore(conf["snapshot"], backend, **kw)


class Worker:
    def __init__(self, conf: dict, fd: int | None):
        self.conf = conf
        self.vm_id = conf["vm_id"]
        self.dir = conf["vm_dir"]
        self.conn = socket.socket(fileno=fd) if fd is not None else None
        self.send_lock = threading.Lock()
        self.pending: collections.deque = collections.deque(maxlen=MAX_QUEUED_EVENTS)
        self.vm: native.VM | None = None
        self.listener: socket.socket | None = None
        self.stopped: dict | None = None
        self.exit_after_reply = False
        self.timings: dict[str, float] = {}
        self.serial_lock = threading.Lock()
        self.serial_file = None
        self.passt = None
        self.net: dict | None = None     # {"mac": "aa:bb:..", "forwards": [[guest, host]]}

    # --- links to the daemon ---

    def emit(self, msg: dict) -> None:
        with self.send_lock:
            if self.conn is not None:
                try:
                    wire.send(self.conn, msg)
                    return
                except OSError:
                    self._drop_conn()
            if "event" in msg:
                self.pending.append(msg)

    def _drop_conn(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def listen(self) -> None:
        # relative names: the worker runs in its VM directory, and absolute paths may exceed
        # the 108 bytes of sun_path
        os.chdir(self.dir)
        tmp = f"worker.sock.{os.getpid()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.bind(tmp)
        os.chmod(tmp, 0o600)
        s.listen(4)
        os.rename(tmp, "worker.sock")        # a daemon never sees a socket nobody listens on
        self.listener = s

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        with self.send_lock:
            self._drop_conn()                # a new daemon replaces the old one
            self.conn = conn
            hello = {"event": "hello", "vm_id": self.vm_id, "pid": os.getpid(),
                     "state": self.state_name(), "stopped": self.stopped,
                     "timings": self.timings, "net": self.net, "queued": list(self.pending)}
            self.pending.clear()
            try:
                wire.send(conn, hello)
            except OSError:
                self._drop_conn()

    # --- the VM ---

    def state_name(self) -> str:
        if self.vm is None:
            return "none"
        try:
            return self.vm.state.name.lower()
        except native.VmmError:
            return "failed"

    def launch(self) -> None:
        t0 = time.monotonic()
        netconf = self.conf.get("network")
        mac = None
        if netconf:
            from . import net
            # passt is this worker's child, in its cgroup; it serves the one connection the NIC
            # makes and exits when the VM closes it (or this worker dies)
            self.passt = net.Passt(self.dir, tuple(netconf.get("expose", ()))).start()
            mac = bytes.fromhex(netconf["mac"])
        tn = time.monotonic()
        self.vm = _restore(self.conf, mac)
        if netconf:
            self._set_policy(netconf["rules"], netconf["default_allow"])
        t1 = time.monotonic()
        seccomp.install(self.conf.get("seccomp", "enforce"),
                        children=(self.passt.proc.pid,) if self.passt else ())
        t2 = time.monotonic()
        self.vm.start()
        t3 = time.monotonic()
        self.timings = {"isolate_s": self.conf.get("isolate_s", 0.0), "net_s": tn - t0,
                        "restore_s": t1 - tn, "seccomp_s": t2 - t1, "start_s": t3 - t2,
                        "spawned_at": self.conf.get("spawned_at", 0.0)}
        threading.Thread(target=self._wait_vm, name="vm-wait", daemon=True).start()
        threading.Thread(target=self._drain_serial, name="serial", daemon=True).start()
        fault = self.conf.get("fault")
        if fault:
            threading.Thread(target=self._fault, args=(fault,), daemon=True).start()
        if self.passt:
            self.net = {"mac": net.mac_text(mac),
                        "forwards": [[g, h] for h, g in self.passt.forwards.items()]}
        self.emit({"event": "running", "timings": self.timings, "net": self.net})

    def _set_policy(self, rules: list, default_allow: bool) -> None:
        self.vm.net_set_policy(0, [native.NetRule(
            network=r["network"], proto=r["proto"], ports=tuple(r["ports"]),
            sports=tuple(r.get("sports", (0, 0))), replies=bool(r.get("replies")),
            allow=r["allow"]) for r in rules], bool(default_allow))

    def _wait_vm(self) -> None:
        try:
            info = self.vm.wait()
        except native.VmmError as e:
            info = None
            self.stopped = {"state": "failed", "reason": "error", "exit_code": -1,
                            "message": str(e)}
        if info is not None:
            self.stopped = {"state": info.state.name.lower(), "reason": info.reason.name.lower(),
                            "exit_code": info.exit_code, "message": info.message}
        self.emit({"event": "stopped", **self.stopped})

    def _drain_serial(self) -> None:
        path = os.path.join(self.dir, "serial.log")
        written = os.path.getsize(path) if os.path.exists(path) else 0
        with open(path, "ab") as f:
            while self.vm is not None and self.stopped is None:
                time.sleep(0.2)
                with self.serial_lock:
                    try:
                        data = self.vm.serial_read() if self.vm is not None else b""
                    except native.VmmError:
                        return
                if data and written < SERIAL_LOG_CAP:
                    data = data[:SERIAL_LOG_CAP - written]
                    f.write(data)
                    f.flush()
                    written += len(data)

    def _fault(self, fault: str) -> None:
        """Test-only fault injection (daemon config `worker_fault`), never set in production."""
        time.sleep(0.2)
        if fault == "forbidden_syscall":
            os.getpgid(0)      # not on the allow-list: the filter kills this worker
        elif fault == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)

    # --- requests ---

    def handle(self, msg: dict) -> dict:
        op = msg.get("op")
        vm = self.vm
        if op == "ping":
            return {"state": self.state_name()}
        if vm is None:
            raise native.VmmError(errno.ENODEV, "worker has no VM")
        if op == "pause":
            vm.pause()
            return {"state": self.state_name()}
        if op == "resume":
            vm.resume()
            return {"state": self.state_name()}
        if op == "snapshot":
            t0 = time.monotonic()
            vm.snapshot(msg["dir"], diff=bool(msg.get("diff")))
            info = native.snapshot_info(msg["dir"])
            return {"seconds": time.monotonic() - t0, "pages": info.pages, "depth": info.depth,
                    "diff": info.diff}
        if op == "stats":
            st = vm.stats()
            with open("/proc/self/statm") as f:
                rss_pages = int(f.read().split()[1])
            st.update(state=self.state_name(), rss=rss_pages * os.sysconf("SC_PAGE_SIZE"),
                      maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            return st
        if op == "net_policy":
            self._set_policy(msg["rules"], msg["default_allow"])
            return {}
        if op == "net_stats":
            import dataclasses
            return dataclasses.asdict(vm.net_stats(0))
        if op == "stop":
            self.exit_after_reply = True
            return {"state": self.state_name()}
        raise native.VmmError(errno.EINVAL, f"unknown worker op {op!r}")

    def serve(self) -> None:
        while True:
            fds = [self.listener] + ([self.conn] if self.conn is not None else [])
            ready, _, _ = select.select(fds, [], [])
            if self.listener in ready:
                self.accept()
                continue
            try:
                msg = wire.recv(self.conn)
            except (OSError, wire.WireError):
                with self.send_lock:
                    self._drop_conn()        # the daemon went away: keep the VM, wait for it
                continue
            reply = {"id": msg.get("id")}
            try:
                reply.update(self.handle(msg), ok=True)
            except Exception as e:  # every failure goes back to the daemon as a reply
                reply.update(ok=False, error=str(e), errno=getattr(e, "errno", None) or 0)
            self.emit(reply)
            if self.exit_after_reply:
                return

    def shutdown(self) -> None:
        vm, self.vm = self.vm, None
        if vm is not None:
            try:
                vm.stop()
            except native.VmmError:
                pass
            with self.serial_lock:
                vm.close()
        if self.passt is not None:
            self.passt.stop()        # it is leaving already: the NIC's connection closed
        for name in ("worker.sock",):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass


def _isolate(conf: dict, keep: set[int]) -> None:
    os.setsid()                              # no signal to the daemon's group reaches us
    # stdio: the daemon's may be a pipe that dies with it; the worker's own log outlives it
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(os.path.join(conf["vm_dir"], "worker.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if conf.get("vm_dir") else null
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for f in conf.get("cgroup_procs", []):
        with open(f, "w") as fh:
            fh.write(str(os.getpid()))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nofile = conf.get("rlimit_nofile") or 4096
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if conf.get("rlimit_nproc"):
        n = conf["rlimit_nproc"]
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    # close_range: nothing of the daemon's or the zygote's survives but what we were given
    lo = 3
    for fd in sorted(keep):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    _prctl_name(f"vmmd-w {conf['vm_id'][-8:]}")


def main(conf: dict, fd: int | None) -> int:
    """Runs one worker to its end; returns the process exit code."""
    keep = {fd} if fd is not None else set()
    try:
        t0 = time.monotonic()
        _isolate(conf, keep)
        conf["isolate_s"] = time.monotonic() - t0
        if conf.get("mode") == "inspect":
            conn = socket.socket(fileno=fd)
            try:
                wire.send(conn, {"ok": True, **inspect_snapshot(conf["snapshot"])})
            except Exception as e:  # a hostile snapshot dir: tell the daemon what was wrong
                wire.send(conn, {"ok": False, "error": str(e), "errno": getattr(e, "errno", 0) or 0})
            return 0
        w = Worker(conf, fd)
        w.listen()
        try:
            w.launch()
        except Exception as e:  # restore failures are the caller's to report
            w.emit({"event": "failed", "error": str(e), "errno": getattr(e, "errno", 0) or 0})
            w.shutdown()
            return 3
        w.serve()
        w.shutdown()
        return 0
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return 2
