"""`vmmd serve`: uvloop + grpc.aio, signals, sd_notify, graceful stop (DESIGN §2).

Start: state dir and store, cgroups detected (v2 or v1), zygote forked, workers of the last
run re-attached, timers re-armed, then the gRPC server listens (Unix socket by default, TCP
optional) and READY=1 goes to systemd. SIGTERM/SIGINT: STOPPING=1, new work answers
UNAVAILABLE for the drain grace, then the server stops; running MicroVMs keep running in their
workers for the next daemon to re-attach. WATCHDOG=1 every WatchdogSec/2 while the loop turns.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import __version__
from .api import servicers
from .api.server import handler
from .cgroups import Cgroups
from .limits import Config
from .sessions import Manager
from .store import Store
from .v1 import host_pb2, images_pb2, microvms_pb2

log = logging.getLogger("vmmd")
MAX_MESSAGE = 8 << 20
SERVICES = ("vmmd.v1.ImageService", "vmmd.v1.MicroVMService", "vmmd.v1.HostService")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and any `extra` fields."""
    SKIP = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, r: logging.LogRecord) -> str:
        out = {"ts": round(r.created, 6), "level": r.levelname.lower(), "logger": r.name,
               "msg": r.getMessage()}
        out.update({k: v for k, v in vars(r).items() if k not in self.SKIP})
        if r.exc_info:
            out["exc"] = self.formatException(r.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level.upper())


def sd_notify(msg: str) -> bool:
    """The systemd notify protocol: one datagram to $NOTIFY_SOCKET ('@' = abstract)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(msg.encode(), path)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)
            return False
    return True


def watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def serve(cfg: Config) -> int:
    os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    store = Store(cfg.state_dir)
    cgroups = None
    if cfg.cgroups != "off":
        try:
            cgroups = Cgroups.detect(cfg.state_dir, cfg.cgroup_parent)
        except OSError as e:
            log.error("cgroups unavailable: %s", e)
            raise SystemExit(f"vmmd: {e}")
    m = Manager(cfg, store, cgroups)
    t0 = time.monotonic()
    await m.start()
    log.info("sessions recovered", extra={"sessions": len(m.sessions),
                                          "seconds": round(time.monotonic() - t0, 3),
                                          "cgroup_version": cgroups.version if cgroups else 0})

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE)])
    draining = lambda: m.draining  # noqa: E731
    ro = servicers.READ_ONLY
    server.add_generic_rpc_handlers((
        handler(images_pb2.DESCRIPTOR.services_by_name["ImageService"],
                servicers.ImageService(m), ro, draining),
        handler(microvms_pb2.DESCRIPTOR.services_by_name["MicroVMService"],
                servicers.MicroVMService(m), ro, draining),
        handler(host_pb2.DESCRIPTOR.services_by_name["HostService"],
                servicers.HostService(m), ro, draining),
    ))
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICES + (health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server)

    sock = cfg.socket_path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    server.add_insecure_port(f"unix:{sock}")
    tcp_port = None
    if cfg.tcp:
        tcp_port = server.add_insecure_port(cfg.tcp)
    await server.start()
    os.chmod(sock, 0o660)
    for svc in SERVICES + ("",):
        await _set_health(health_servicer, svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"socket": sock, "tcp": cfg.tcp, "tcp_port": tcp_port,
                               "version": __version__, "pid": os.getpid()})
    sd_notify(f"READY=1\nSTATUS=serving on {sock}\nMAINPID={os.getpid()}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    wd = watchdog_interval() if cfg.watchdog else None
    wd_task = loop.create_task(_watchdog(wd)) if wd else None

    await stop.wait()
    log.info("draining", extra={"grace_s": cfg.drain_grace_s})
    sd_notify("STOPPING=1\nSTATUS=draining")
    m.drain()
    for svc in SERVICES + ("",):
        await _set_health(health_servicer, svc, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(cfg.drain_grace_s)
    if wd_task:
        wd_task.cancel()
    await m.stop()
    store.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    log.info("stopped; MicroVMs keep running in their workers",
             extra={"workers": sum(1 for s in m.sessions.values() if s.worker_pid)})
    return 0


async def _set_health(h, svc: str, status) -> None:
    r = h.set(svc, status)
    if asyncio.iscoroutine(r):
        await r


async def _watchdog(interval: float) -> None:
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def run(cfg: Config) -> int:
    setup_logging(cfg.log_level)
    import uvloop
    return uvloop.run(serve(cfg))
