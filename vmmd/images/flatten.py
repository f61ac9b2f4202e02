"""A disk as its VM saw it, written out as one plain image: the read-only base plus sealed
virtio-blk layers (docs/virtio.md, "Layer file format"), newest last. A build's steps leave a
layer each; the image's root filesystem is their flattening, so every session of the image
starts from one shared base with no chain behind it.

Each layer is checked as the VMM checks it (magic, version, geometry, sealed, the file's exact
size, no bit past the disk's end); a layer that fails is an error naming it, never skipped.
"""
from __future__ import annotations

import os
import pathlib
import struct

from vmmd.store import copy_sparse

MAGIC = b"VMMDDISK"
HEADER = struct.Struct("<8sIIQQQQQ16sII")      # 80 bytes
BLOCK = 4096


class LayerError(ValueError):
    pass


class Layer:
    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            raise LayerError(f"{self.path}: too short for a disk layer")
        (magic, version, block, self.disk_size, self.blocks, bm_off, bm_len, self.data_off,
         self.id, sealed, _) = HEADER.unpack(head)
        if magic != MAGIC or version != 1 or block != BLOCK:
            raise LayerError(f"{self.path}: not a version-1 vmmd disk layer of 4 KiB blocks")
        if not sealed:
            raise LayerError(f"{self.path}: the layer is not sealed (still a VM's writable layer)")
        if (self.blocks != (self.disk_size + BLOCK - 1) // BLOCK or bm_off != BLOCK
                or bm_len < (self.blocks + 7) // 8
                or self.data_off != BLOCK + (bm_len + BLOCK - 1) // BLOCK * BLOCK
                or self.path.stat().st_size != self.data_off + self.blocks * BLOCK):
            raise LayerError(f"{self.path}: its geometry does not add up (a damaged layer)")
        with open(self.path, "rb") as f:
            f.seek(bm_off)
            self.bitmap = f.read(bm_len)
        if len(self.bitmap) != bm_len:
            raise LayerError(f"{self.path}: its bitmap is cut short")
        tail = self.bitmap[self.blocks // 8:]
        if tail and (tail[0] >> (self.blocks % 8) or any(tail[1:])):
            raise LayerError(f"{self.path}: its bitmap names blocks past the disk's end")

    def runs(self):
        """(first block, count) of each run of blocks this layer holds."""
        bm, i, n = self.bitmap, 0, self.blocks
        while i < n:
            byte = bm[i >> 3]
            if byte == 0 and i % 8 == 0:
                i += 8
                continue
            if not byte >> (i & 7) & 1:
                i += 1
                continue
            start = i
            while i < n and bm[i >> 3] >> (i & 7) & 1:
                i += 1
            yield start, i - start


def flatten(base: str | os.PathLike, layers: list[str | os.PathLike],
            out: str | os.PathLike) -> int:
    """Writes base + layers (oldest first) to `out` as a sparse raw image of the disk's size;
    returns the blocks taken from layers. `out` appears only when complete."""
    out = pathlib.Path(out)
    parsed = [Layer(p) for p in layers]
    size = parsed[-1].disk_size if parsed else os.path.getsize(base)
    for layer in parsed:
        if layer.disk_size != size:
            raise LayerError(f"{layer.path}: a disk of {layer.disk_size} bytes, the chain's is "
                             f"{size}: not one disk's layers")
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    written = 0
    try:
        copy_sparse(str(base), str(tmp))        # an ext4 image is mostly holes: keep them
        with open(tmp, "r+b") as dst:
            dst.truncate(size)
            for layer in parsed:
                with open(layer.path, "rb") as f:
                    for first, count in layer.runs():
                        left, blk = count, first
                        while left:
                            n = min(left, 256)
                            data = os.pread(f.fileno(), n * BLOCK, layer.data_off + blk * BLOCK)
                            os.pwrite(dst.fileno(), data, blk * BLOCK)
                            blk, left, written = blk + n, left - n, written + n
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
