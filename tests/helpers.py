"""Reading and rewriting vmstate files the way an attacker or a newer build would."""
from __future__ import annotations

import struct

import msgpack

HEADER = struct.Struct("<8sIIQ")


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def decode(blob: bytes) -> tuple[tuple, dict]:
    magic, fmt, arch, n = HEADER.unpack_from(blob)
    body = blob[HEADER.size:HEADER.size + n]
    return (magic, fmt, arch), msgpack.unpackb(body, raw=False, strict_map_key=False)


def encode(header: tuple, body: dict) -> bytes:
    magic, fmt, arch = header
    data = msgpack.packb(body, use_bin_type=True)
    out = HEADER.pack(magic, fmt, arch, len(data)) + data
    return out + struct.pack("<I", crc32c(out))


def rewrite(path, fn) -> None:
    """Decode the vmstate at `path`, let fn change (header, body), write it back, valid CRC."""
    with open(path, "rb") as f:
        header, body = decode(f.read())
    header, body = fn(list(header), body)
    with open(path, "wb") as f:
        f.write(encode(tuple(header), body))
