"""The content digest of an image's files: SHA-256 over a canonical form of each file, in which
every all-zero 1 MiB block is one byte instead of a mebibyte of zeros.

Images are mostly holes: a 4 GiB root filesystem with 300 MiB of data, a guest memory file with
what the guest touched. Hashing the holes as zeros made registering a built image cost minutes
in the emulated hosts; here a hole costs nothing, and the digest still depends only on the
content (a hole and written zeros hash alike, however the file's extents fall).

Form, per file: for each aligned block of BLOCK bytes (the last one shorter), b"z" if it is all
zeros, else b"d" and its bytes; then b"size" and the size as 8 little-endian bytes.
"""
from __future__ import annotations

import os

BLOCK = 1 << 20
_ZEROS = bytes(BLOCK)


class FileDigest:
    """Feeds one file into `hasher` in the canonical form. Give it the file's data in increasing
    offsets (`data`); what it is not given is zeros; `end` closes the file."""

    def __init__(self, hasher, size: int):
        self.h, self.size = hasher, size
        self.block = 0                       # index of the block being assembled
        self.buf = bytearray(BLOCK)
        self.dirty = False                   # buf holds something not yet known to be zeros

    def _flush_to(self, block: int) -> None:
        """Closes every block before `block`: the one being assembled, then holes."""
        block = min(block, -(-self.size // BLOCK))
        if self.block >= block:
            return
        n = min(BLOCK, self.size - self.block * BLOCK)
        if self.dirty and self.buf[:n] != _ZEROS[:n]:
            self.h.update(b"d")
            self.h.update(memoryview(self.buf)[:n])
        else:
            self.h.update(b"z")
        if self.dirty:
            self.buf[:] = _ZEROS
            self.dirty = False
        self.block += 1
        if block > self.block:               # holes: one byte each, nothing read
            self.h.update(b"z" * (block - self.block))
            self.block = block

    def data(self, offset: int, buf) -> None:
        if offset < self.block * BLOCK:
            raise ValueError(f"data at {offset} after block {self.block} was closed")
        mv = memoryview(buf)
        while len(mv):
            b, at = divmod(offset, BLOCK)
            self._flush_to(b)
            n = min(len(mv), BLOCK - at)
            self.buf[at:at + n] = mv[:n]
            self.dirty = True
            mv, offset = mv[n:], offset + n

    def end(self) -> None:
        self._flush_to(-(-self.size // BLOCK))
        self.h.update(b"size" + self.size.to_bytes(8, "little"))


def data_chunks(fd: int, size: int, name: str, chunk: int = BLOCK):
    """(offset, bytes) of an open file's data, in order, holes skipped (SEEK_DATA/SEEK_HOLE).
    A file that shrinks meanwhile raises: a copy or a digest is exact or fails, never short."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:                      # ENXIO: no data past pos
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        pos = start
        while pos < end:
            buf = os.pread(fd, min(chunk, end - pos), pos)
            if not buf:
                raise OSError(f"{name} shrank while being read")
            yield pos, buf
            pos += len(buf)


def hash_file(path: str, hasher) -> None:
    """Feeds a file into `hasher` in the canonical form, reading only its data."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        d = FileDigest(hasher, size)
        for pos, buf in data_chunks(f.fileno(), size, path):
            d.data(pos, buf)
        d.end()
