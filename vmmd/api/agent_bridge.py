"""The daemon's use of the guest agent (host side in vmmd/agent.py, written with the guest
agent). Everything the API needs from an agent goes through these few functions, so the
client's exact shape is adapted here and nowhere else.

Expected of vmmd.agent (asyncio), provided by its AgentClient:
    client = await AgentClient.connect(uds_path, port=1024)   # Firecracker hybrid vsock
    await client.ping()
    proc = await client.exec(argv, env=..., cwd=..., user=..., tty=..., rows=..., cols=...)
        await proc.write_stdin(data); await proc.close_stdin(); await proc.resize(rows, cols)
        await proc.signal(signo); async for kind, data in proc.output():
            kind "stdout" | "stderr" (bytes) | "exit" ((code, signal))
    async for chunk in client.read_file(path, offset=0, length=0)
    n = await client.write_file(path, chunks, mode=0o644, append=False, make_parents=False)
    reader, writer = await client.port_forward(port)
    await client.sync_after_restore()
    await client.close()
Errors the agent reports (AgentError with its errno name) map to gRPC statuses in `mapped`.
"""
from __future__ import annotations

import asyncio
import contextlib

from .. import agent as agent_mod
from ..errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

CONNECT_TIMEOUT = 10.0


def mapped(e: agent_mod.AgentError) -> Exception:
    """The gRPC-mapped error for what the agent said."""
    if isinstance(e, agent_mod.ProtocolError):
        return Unavailable(f"guest agent: {e}; the MicroVM may have stopped: check WatchEvents")
    if e.code in ("ENOENT", "ENOTDIR"):
        return NotFound(f"in the guest: {e}")
    if e.code in ("EINVAL", "ENAMETOOLONG", "EISDIR"):
        return InvalidArgument(f"in the guest: {e}")
    return FailedPrecondition(f"in the guest: {e}")


@contextlib.asynccontextmanager
async def errors_mapped():
    try:
        yield
    except agent_mod.AgentError as e:
        raise mapped(e) from None


async def connect(uds_path: str, agent: dict, timeout: float = CONNECT_TIMEOUT):
    """A client for the agent behind `uds_path`, once it answers a ping: right after a launch
    or a resume it may take a moment."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await agent_mod.AgentClient.connect(uds_path,
                                                       port=agent.get("vsock_port") or 1024)
        except OSError as e:
            if loop.time() > deadline:
                raise Unavailable(f"guest agent unreachable on {uds_path}: {e}; check that "
                                  "the image's agent starts at boot") from None
        await asyncio.sleep(0.02)


async def run_hook(uds_path: str, agent: dict, hook: dict) -> None:
    client = await connect(uds_path, agent)
    timeout = (hook.get("timeout_ms") or 5000) / 1000
    try:
        if "argv" in hook:
            async def run():
                proc = await client.exec(hook["argv"])
                async for kind, data in proc.output():
                    if kind == "exit" and data[0] != 0:
                        raise RuntimeError(f"hook {hook['argv']} exited with {data[0]}")
            await asyncio.wait_for(run(), timeout)
        elif "http_port" in hook:
            async def call():
                reader, writer = await client.port_forward(hook["http_port"])
                writer.write(f"{hook.get('http_method', 'POST')} {hook.get('http_path', '/')} "
                             "HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                status = await reader.readline()
                writer.close()
                if b" 2" not in status[:13]:
                    raise RuntimeError(f"hook answered {status[:64]!r}")
            await asyncio.wait_for(call(), timeout)
    finally:
        await client.close()
