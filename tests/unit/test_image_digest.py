"""An image's digest (vmmd/digest.py) depends on its files' content only: holes and written
zeros hash alike, however the extents fall; any byte or the size changing changes it; the copy
keeps content and holes; a hole is never read."""
from __future__ import annotations

import hashlib
import os

import pytest

from vmmd.digest import BLOCK, hash_file
from vmmd.store import copy_sparse

MiB = 1 << 20


def make(path, size: int, pieces: dict[int, bytes], zeros_written: tuple = ()) -> str:
    """A file of `size` bytes: `pieces` at their offsets, holes elsewhere, and the (offset,
    length) ranges in `zeros_written` written as explicit zeros."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in zeros_written:
            os.pwrite(f.fileno(), bytes(n), off)
        for off, data in pieces.items():
            os.pwrite(f.fileno(), data, off)
    return str(path)


def digest(path) -> str:
    h = hashlib.sha256()
    hash_file(str(path), h)
    return h.hexdigest()


def test_holes_and_written_zeros_hash_alike(tmp_path):
    pieces = {5 * MiB + 123: b"abc" * 1000, 9 * MiB - 7: b"straddles a block edge"}
    a = make(tmp_path / "a", 64 * MiB, pieces)
    b = make(tmp_path / "b", 64 * MiB, pieces, zeros_written=((0, 12 * MiB), (40 * MiB, MiB)))
    assert os.stat(b).st_blocks > os.stat(a).st_blocks
    assert digest(a) == digest(b)


def test_one_byte_changes_the_digest(tmp_path):
    a = make(tmp_path / "a", 8 * MiB, {3 * MiB: b"\x01"})
    b = make(tmp_path / "b", 8 * MiB, {3 * MiB: b"\x02"})
    c = make(tmp_path / "c", 8 * MiB, {3 * MiB + 1: b"\x01"})
    assert len({digest(a), digest(b), digest(c)}) == 3


def test_zero_block_and_data_block_differ_even_when_the_data_spells_the_marker(tmp_path):
    # "z" for a zero block must not collide with a block whose bytes hash like the marker
    a = make(tmp_path / "a", 2 * MiB, {})
    b = make(tmp_path / "b", 2 * MiB, {0: b"z"})
    assert digest(a) != digest(b)


def test_the_size_counts_even_when_the_tail_is_zeros(tmp_path):
    a = make(tmp_path / "a", 3 * MiB, {0: b"x"})
    b = make(tmp_path / "b", 3 * MiB + 1, {0: b"x"})
    c = make(tmp_path / "c", 4 * MiB, {0: b"x"})
    assert len({digest(a), digest(b), digest(c)}) == 3


def test_empty_and_unaligned_files(tmp_path):
    assert digest(make(tmp_path / "e", 0, {})) != digest(make(tmp_path / "z", 1, {}))
    odd = make(tmp_path / "odd", BLOCK + 17, {BLOCK + 16: b"!"})
    assert digest(odd) == digest(make(tmp_path / "odd2", BLOCK + 17, {BLOCK + 16: b"!"},
                                      zeros_written=((0, BLOCK + 17),)))


def test_copy_keeps_content_and_holes_and_hashes_like_hash_file(tmp_path):
    src = make(tmp_path / "src", 256 * MiB, {MiB: os.urandom(3 * MiB), 200 * MiB: b"tail"})
    h = hashlib.sha256()
    written = copy_sparse(src, str(tmp_path / "dst"), h)
    assert h.hexdigest() == digest(src)
    assert open(src, "rb").read() == open(tmp_path / "dst", "rb").read()
    assert written < 8 * MiB
    assert os.stat(tmp_path / "dst").st_blocks * 512 < 8 * MiB


def test_a_large_sparse_file_is_hashed_without_reading_its_holes(tmp_path, monkeypatch):
    # 32 GiB, the largest disk a MicroVM may have: only its data is read
    src = make(tmp_path / "big", 32 << 30, {7 << 30: b"data"})
    read = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: read.append(n) or real(fd, n, off))
    digest(src)
    assert sum(read) <= 2 * BLOCK


def test_a_file_that_shrinks_meanwhile_fails_the_copy_instead_of_copying_short(tmp_path,
                                                                             monkeypatch):
    src = make(tmp_path / "src", 4 * MiB, {0: os.urandom(3 * MiB)})
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: b"" if off >= 2 * MiB else real(fd, n, off))
    with pytest.raises(OSError, match="shrank while being read"):
        copy_sparse(src, str(tmp_path / "dst"), hashlib.sha256())
    with pytest.raises(OSError, match="shrank while being read"):
        digest(src)
