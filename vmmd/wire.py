"""Length-prefixed msgpack frames between the daemon, the zygote and the workers.

A frame is a 4-byte big-endian length followed by one msgpack map. Frames above MAX_FRAME are
refused on both sides, so a confused or hostile peer cannot make the other allocate without
bound. Blocking helpers for the worker and zygote (no event loop there); asyncio helpers for the
daemon.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct

import msgpack

MAX_FRAME = 16 << 20
_LEN = struct.Struct(">I")


class WireError(ConnectionError):
    """The peer closed the connection or sent something that is not a frame."""


def unix_path(path: str) -> tuple[str, int | None]:
    """A path for bind/connect under the 108-byte sun_path limit: long paths go through
    /proc/self/fd/<dir fd>/<name>. Close the returned fd (if any) after the call."""
    if len(path.encode()) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


async def open_unix(path: str):
    """asyncio.open_unix_connection that works for long paths."""
    short, fd = unix_path(path)
    try:
        return await asyncio.open_unix_connection(short)
    finally:
        if fd is not None:
            os.close(fd)


def pack(msg: dict) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _LEN.pack(len(body)) + body


def unpack(body: bytes) -> dict:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise WireError(f"undecodable frame: {e}") from None
    if not isinstance(msg, dict):
        raise WireError(f"frame holds a {type(msg).__name__}, not a map")
    return msg


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise WireError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def send(sock: socket.socket, msg: dict) -> None:
    sock.sendall(pack(msg))


def recv(sock: socket.socket) -> dict:
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if n > MAX_FRAME:
        raise WireError(f"peer announced a {n}-byte frame (limit {MAX_FRAME})")
    return unpack(_recv_exact(sock, n))


async def aread(reader: asyncio.StreamReader) -> dict:
    try:
        head = await reader.readexactly(4)
        (n,) = _LEN.unpack(head)
        if n > MAX_FRAME:
            raise WireError(f"peer announced a {n}-byte frame (limit {MAX_FRAME})")
        return unpack(await reader.readexactly(n))
    except asyncio.IncompleteReadError:
        raise WireError("peer closed the connection") from None


def awrite(writer: asyncio.StreamWriter, msg: dict) -> None:
    writer.write(pack(msg))
