"""Reading and rewriting vmstate files the way an attacker or a newer build would."""
from __future__ import annotations

import hashlib
import random
import struct
import time

import msgpack

from guests import DATA

MEM = 64 << 20
PAGE = 4096
FILLED = 8192                       # 32 MiB of distinct data pages

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


# ---------- shared by the KVM snapshot tests ----------

def page_hashes(vm, size=MEM):
    data = vm.mem_read(0, size)
    return [hashlib.blake2b(data[i:i + PAGE], digest_size=16).digest()
            for i in range(0, size, PAGE)]


def run_then_snapshot(microvm_factory, tmp_path, name="base", **kw):
    vm = microvm_factory("counter", start=True, **kw)
    vm.wait_result_above(100_000)
    time.sleep(random.uniform(0.001, 0.05))      # an arbitrary moment
    vm.pause()
    snap = tmp_path / name
    vm.snapshot(snap)
    return vm, snap


def run_more(vm, count=1_000_000):
    """Resumes (or starts) the counter guest, lets it count `count` more, pauses it again."""
    from vmmd.native import State
    if vm.state == State.CREATED:
        vm.start()
    else:
        vm.resume()
    vm.wait_result_above(vm.result() + count)
    vm.pause()


def fill(vm, pages=FILLED):
    chunk = 1024
    for first in range(0, pages, chunk):
        vm.mem_write(DATA + first * PAGE, b"".join(
            (i + 1).to_bytes(8, "little") * (PAGE // 8) for i in range(first, first + chunk)))
