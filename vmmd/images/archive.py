"""ADD of a local tar archive (plain, gzip, bzip2 or xz): its members re-emitted, under the
destination, into the tar the build VM unpacks (vmmd/images/build.py), as Docker extracts them.

The archive is the user's and hostile to us, though what it holds only lands inside their build
VM: nothing of it is written on the host, the decompressed stream is capped (a small .tar.gz can
expand to terabytes, and tarfile reads some headers into memory), so is the number of members,
and no member may leave the destination (an absolute name is taken relative to it, as Docker
does; `..` past it is refused, for names and hard links alike). Owners and modes are the
archive's; symlink targets are kept as they are (they resolve inside the image).
"""
from __future__ import annotations

import bz2
import copy
import gzip
import io
import lzma
import posixpath
import tarfile
import zlib
from pathlib import Path

from .context import Limits, archive_kind

_OPENERS = {"tar": lambda p: open(p, "rb"), "tar.gz": gzip.open, "tar.bz2": bz2.open,
            "tar.xz": lzma.open}
_KINDS = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
          tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE)


class ArchiveError(Exception):
    """What is wrong with the archive, for the builder's message."""


class _Capped(io.RawIOBase):
    """The decompressed stream, failing once it passes `cap` bytes."""

    def __init__(self, f, cap: int):
        self.f, self.cap, self.total = f, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.f.read(len(b))
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ArchiveError(f"it does not decompress ({e})") from None
        self.total += len(data)
        if self.total > self.cap:
            raise ArchiveError(f"it expands past {self.cap} bytes, the context's limit; make it "
                               "smaller or raise the limit")
        b[:len(data)] = data
        return len(data)


def _inside(name: str, dest: str, what: str) -> str | None:
    """`name` from the archive as a path under `dest` (no leading "/"); None for the archive's
    root itself; refused if it leaves it."""
    rel = posixpath.normpath(name.lstrip("/"))
    if rel in ("", "."):
        return None
    if rel == ".." or rel.startswith("../") or "\0" in rel:
        raise ArchiveError(f"{what} {name!r} leaves the destination; archives for ADD must keep "
                           "their members inside it")
    return posixpath.join(dest, rel) if dest else rel


def add_extracted(out: tarfile.TarFile, src: Path, dest: str, limits: Limits) -> int:
    """Writes the members of the archive `src` into `out`, each under `dest` (an absolute path in
    the image, the directory the archive is unpacked into). Returns the number of members."""
    kind = archive_kind(src)
    if kind is None:
        raise ArchiveError("it is not a tar archive")
    base = dest.strip("/")
    n = 0
    with _OPENERS[kind](src) as raw:
        capped = io.BufferedReader(_Capped(raw, limits.max_bytes), 1 << 16)
        try:
            with tarfile.open(fileobj=capped, mode="r|") as tar:
                for m in tar:
                    n += 1
                    if n > limits.max_entries:
                        raise ArchiveError(f"more than {limits.max_entries} members, the "
                                           "context's limit")
                    if m.type not in _KINDS or m.issparse():
                        raise ArchiveError(f"member {m.name!r} is of a kind ADD does not unpack "
                                           f"(tar type {m.type!r})")
                    info = copy.copy(m)
                    name = _inside(m.name, base, "member")
                    if name is None:                # "./": the destination keeps its own mode
                        continue
                    info.name = name
                    if m.islnk():
                        target = _inside(m.linkname, base, "hard link target")
                        if target is None:
                            raise ArchiveError(f"hard link {m.name!r} points at the archive's "
                                               "root")
                        info.linkname = target
                    info.uname = info.gname = ""    # the image's ids, not names of this host
                    info.pax_headers = {}
                    if m.isreg():
                        out.addfile(info, tar.extractfile(m))
                    else:
                        out.addfile(info)
        except tarfile.TarError as e:
            raise ArchiveError(f"it is not a readable tar archive ({e})") from None
        except EOFError:
            raise ArchiveError("it ends in the middle of a member") from None
    return n
