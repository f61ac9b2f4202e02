"""The build context: the user's zip, extracted safely into a directory, with .dockerignore
applied; then the files a COPY/ADD reads (Docker's glob rules) and their content digest for the
step cache (docs/images.md).

The zip is hostile. Its central directory is read with zipfile, but the data is read by this
module: each entry is inflated in bounded chunks and the extraction stops as soon as an entry
produces more than its header declared (or the whole more than the limit), and the CRC is checked.
Names are checked before anything is written: no absolute paths, no `..`, no duplicates, no
entry under a file or a symlink, no device files; symlinks must resolve inside the context
(following the other symlinks in the zip) and are created last, so extraction never writes
through one. Set-uid, set-gid and sticky bits are dropped on extraction: the daemon runs as root."""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from vmmd.errors import InvalidArgument
from vmmd.images.patterns import IgnoreRules, copy_pattern, has_magic

CHUNK = 1 << 16
MAX_NAME = 4096
MAX_COMPONENT = 255
MAX_LINK_HOPS = 40
MAX_CENTRAL_DIRECTORY = 64 << 20    # parsed into memory before any other check can run
MAX_DOCKERIGNORE = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 1 << 30        # the zip's size, and the sum of what it extracts to
    max_entries: int = 100_000


class ContextError(InvalidArgument):
    def __init__(self, name: str, message: str):
        super().__init__(f"build context: {name}: {message}")
        self.name = name
        self.message = message


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    rel: str                        # normalised, no leading/trailing "/"
    kind: int                       # stat.S_IFREG, S_IFDIR or S_IFLNK
    mode: int                       # permission bits kept (0o777)
    target: str = ""                # a symlink's


def _open(data: bytes | os.PathLike[str] | str, limits: Limits) -> io.BufferedIOBase:
    if isinstance(data, (bytes, bytearray, memoryview)):
        size = len(data)
        f: io.BufferedIOBase = io.BytesIO(bytes(data))
    else:
        f = open(data, "rb")    # noqa: SIM115 - closed by the caller
        size = os.fstat(f.fileno()).st_size
    if size > limits.max_bytes:
        f.close()
        raise ContextError("(the zip)", f"{size} bytes, over the limit of {limits.max_bytes}; "
                           "leave build outputs and data out (.dockerignore does not shrink the "
                           "zip) or raise the limit")
    return f


def _central_directory(f: io.BufferedIOBase, limits: Limits) -> zipfile.ZipFile:
    end = zipfile._EndRecData(f)    # the end record, before zipfile reads every entry into memory
    if end is None:
        raise ContextError("(the zip)", "not a zip file (no end of central directory record)")
    count, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    if count > limits.max_entries:
        raise ContextError("(the zip)", f"{count} entries, over the limit of "
                           f"{limits.max_entries}; zip fewer files")
    if size > MAX_CENTRAL_DIRECTORY:
        raise ContextError("(the zip)", f"a central directory of {size} bytes, over "
                           f"{MAX_CENTRAL_DIRECTORY}")
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ContextError("(the zip)", f"not a readable zip: {e}") from None
    if len(zf.infolist()) > limits.max_entries:
        raise ContextError("(the zip)", f"more than {limits.max_entries} entries; zip fewer files")
    return zf


def _classify(info: zipfile.ZipInfo) -> _Entry | None:
    name = info.filename
    if "\0" in name:
        raise ContextError(repr(name), "a NUL in the name")
    if name.startswith("/") or name.startswith("\\"):
        raise ContextError(name, "an absolute path; zip the context with names relative to its "
                           "top directory (cd app && zip -r ../app.zip .)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ContextError(name, "a '..' component would write outside the context; remove it")
    if len(name.encode()) > MAX_NAME or any(len(p.encode()) > MAX_COMPONENT for p in parts):
        raise ContextError(name[:200], "the name is too long")
    if info.flag_bits & 0x1:
        raise ContextError(name, "encrypted entries are not supported")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ContextError(name, f"compression method {info.compress_type}: vmmd reads stored "
                           "and deflated entries (zip's default)")
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    fmt = stat.S_IFMT(mode)
    if fmt == 0:
        fmt = stat.S_IFDIR if name.endswith("/") else stat.S_IFREG
        mode |= 0o755 if fmt == stat.S_IFDIR else 0o644
    if fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        what = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}.get(fmt, f"type {fmt:o}")
        raise ContextError(name, f"{what}; a context holds files, directories and symlinks only")
    if name.endswith("/") and fmt != stat.S_IFDIR:
        fmt = stat.S_IFDIR
    if not parts:
        if fmt != stat.S_IFDIR:
            raise ContextError(name, "an empty name")
        return None                 # the context's own top directory
    return _Entry(info, "/".join(parts), fmt, mode & 0o777)


def _escapes(link: str, target: str, links: dict[str, str]) -> str | None:
    """Why the symlink at `link` resolves outside the context (None if it stays inside), following
    the zip's other symlinks the way the kernel would once they are written."""
    if target.startswith("/"):
        return f"points to the absolute path {target}"
    cur = link.split("/")[:-1]
    todo = deque(target.split("/"))
    hops = 0
    while todo:
        p = todo.popleft()
        if p in ("", "."):
            continue
        if p == "..":
            if not cur:
                return f"points to {target}, outside the context"
            cur.pop()
            continue
        cur.append(p)
        nxt = links.get("/".join(cur))
        if nxt is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return "is part of a symlink loop"
            if nxt.startswith("/"):
                return f"goes through {'/'.join(cur)}, which points to the absolute path {nxt}"
            cur.pop()
            todo.extendleft(reversed(nxt.split("/")))
    return None


class _Reader:
    """Reads entries' data from the zip itself, never more than their headers declare."""

    def __init__(self, f: io.BufferedIOBase, limits: Limits):
        self.f, self.limits, self.total = f, limits, 0

    def data_offset(self, e: _Entry) -> int:
        self.f.seek(e.info.header_offset)
        hdr = self.f.read(30)
        if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
            raise ContextError(e.rel, "a bad local header (the zip is corrupt)")
        n, m = struct.unpack("<HH", hdr[26:30])
        name = self.f.read(n)
        if name.decode("utf-8" if e.info.flag_bits & 0x800 else "cp437") != e.info.orig_filename:
            raise ContextError(e.rel, "the local header names another file than the central "
                               "directory (a crafted zip?)")
        return e.info.header_offset + 30 + n + m

    def chunks(self, e: _Entry):
        """The entry's bytes, in chunks, stopping with ContextError as soon as it yields more
        than declared or the context passes the limit."""
        declared = e.info.file_size
        self.f.seek(self.data_offset(e))
        left = e.info.compress_size
        inflate = zlib.decompressobj(-15) if e.info.compress_type == zipfile.ZIP_DEFLATED else None
        got, crc, pending = 0, 0, b""
        while True:
            if not pending:
                if left <= 0 or (inflate is not None and inflate.eof):
                    break
                pending = self.f.read(min(CHUNK, left))
                if not pending:
                    raise ContextError(e.rel, "the zip ends inside this entry (truncated)")
                left -= len(pending)
            if inflate is None:
                out, pending = pending, b""
            else:
                try:
                    out = inflate.decompress(pending, declared - got + 1)
                except zlib.error as err:
                    raise ContextError(e.rel, f"bad deflate data: {err}") from None
                pending = inflate.unconsumed_tail
            got += len(out)
            self.total += len(out)
            if got > declared:
                raise ContextError(e.rel, f"its data expands past the {declared} bytes its "
                                   "header declares (a zip bomb?); extraction stopped")
            if self.total > self.limits.max_bytes:
                raise ContextError(e.rel, f"the context expands past {self.limits.max_bytes} "
                                   "bytes; extraction stopped")
            crc = zlib.crc32(out, crc)
            if out:
                yield out
        if got != declared:
            raise ContextError(e.rel, f"{got} bytes of data where the header declares {declared}")
        if crc != e.info.CRC:
            raise ContextError(e.rel, "bad CRC-32 (the zip is corrupt)")

    def read_small(self, e: _Entry, limit: int) -> bytes:
        if e.info.file_size > limit:
            raise ContextError(e.rel, f"over {limit} bytes")
        return b"".join(self.chunks(e))


class Context:
    """An extracted build context. `root` holds exactly what COPY and ADD may read."""

    def __init__(self, root: Path, ignored: frozenset[str] = frozenset(),
                 rules: IgnoreRules | None = None, owned: bool = False):
        self.root = Path(root).resolve()
        self.ignored = ignored          # context-relative names .dockerignore left out
        self.rules = rules or IgnoreRules()
        self._owned = owned

    def close(self) -> None:
        if self._owned:
            _remove(self.root)

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_zip(cls, data: bytes | os.PathLike[str] | str, limits: Limits = Limits(),
                 into: Path | None = None) -> "Context":
        """Extract into `into` (an empty directory) or a new temporary one, which close()
        removes. Raises ContextError naming the entry and what to change; nothing is left in a
        temporary directory on error."""
        owned = into is None
        root = Path(tempfile.mkdtemp(prefix="vmmd-context-")) if owned else Path(into)
        try:
            with _open(data, limits) as f:
                ignored, rules = _extract(f, limits, root)
        except BaseException:
            if owned:
                _remove(root)
            raise
        return cls(root, frozenset(ignored), rules, owned)

    # ---- what a COPY reads ----------------------------------------------------------------
    def _rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()

    def _inside(self, p: Path, pattern: str, instruction: str) -> Path:
        real = p.resolve()
        if real != self.root.resolve() and self.root.resolve() not in real.parents:
            raise ContextError(pattern, f"{instruction} {pattern}: resolves outside the context")
        return real

    def _matches(self, pattern: str, instruction: str) -> list[Path]:
        rel = posixpath.normpath(pattern.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise ContextError(pattern, f"{instruction} {pattern}: outside the build context")
        if rel == ".":
            return [self.root]
        if not has_magic(rel):
            p = self.root / rel
            return [p] if os.path.lexists(p) else []
        try:
            rx = copy_pattern(rel)
        except ValueError as e:
            raise ContextError(pattern, f"{instruction} {pattern}: {e}") from None
        out = []
        for d, dirs, files in os.walk(self.root):
            for n in dirs + files:
                p = Path(d) / n
                if rx.match(self._rel(p)):
                    out.append(p)
        return sorted(out)

    def matches(self, patterns: list[str], instruction: str = "COPY") -> list[Path]:
        """The top-level paths each pattern names (a symlink is followed, within the context,
        as Docker follows a source); a pattern that matches nothing is an error naming it."""
        return [real for _, real in self._tops(patterns, instruction)]

    def _tops(self, patterns: list[str], instruction: str) -> list[tuple[Path, Path]]:
        """(the path as matched, where it resolves) for each top-level match."""
        out: list[tuple[Path, Path]] = []
        for pattern in patterns:
            found = self._matches(pattern, instruction)
            if not found:
                rel = posixpath.normpath(pattern.lstrip("/") or ".")
                hint = (" (.dockerignore excludes it)" if rel in self.ignored or
                        self.rules.excludes(rel) else "")
                raise ContextError(pattern, f"{instruction} {pattern}: not in the context{hint}")
            out += [(p, self._inside(p, pattern, instruction)) for p in found]
        return out

    def sources(self, patterns: list[str], instruction: str = "COPY") -> list[Path]:
        """Every path a COPY/ADD of `patterns` reads: matched files, and matched directories with
        everything under them; sorted, each once."""
        seen: set[Path] = set()
        for top in self.matches(patterns, instruction):
            seen.add(top)
            if top.is_dir():
                for d, dirs, files in os.walk(top):
                    seen.update(Path(d) / n for n in dirs + files)
        seen.discard(self.root)
        return sorted(seen, key=self._rel)

    def placements(self, patterns: list[str], dest: str, dest_is_dir: bool,
                   instruction: str = "COPY") -> list[tuple[Path, str]]:
        """Docker's COPY rule as (source, target in the image) pairs: a directory's contents go
        into the target (copy it as a tree), a file goes to the target itself, or into it when
        the destination is a directory or several paths match. A builder must also copy into
        `dest` when it already exists as a directory in the image."""
        tops = self._tops(patterns, instruction)
        into = dest_is_dir or len(tops) > 1
        out = []
        for named, real in tops:
            if real.is_dir():
                out.append((real, dest))
            else:   # a symlinked file keeps the name it was copied by, with the target's bytes
                out.append((real, posixpath.join(dest, named.name) if into else dest))
        return out

    def digest(self, paths: list[Path]) -> str:
        """sha256 over each path's context-relative name, type, permission bits and content (a
        symlink's target); not mtimes or owners, which the zip does not carry reliably."""
        h = hashlib.sha256()
        for p in sorted(set(paths), key=self._rel):
            st = os.lstat(p)
            rel = self._rel(p).encode()
            if stat.S_ISLNK(st.st_mode):
                kind, body = b"L", os.readlink(p).encode()
            elif stat.S_ISDIR(st.st_mode):
                kind, body = b"D", b""
            else:
                kind, fh = b"F", hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        fh.update(chunk)
                body = fh.digest()
            for field in (rel, kind, b"%o" % stat.S_IMODE(st.st_mode), body):
                h.update(struct.pack("<Q", len(field)))
                h.update(field)
        return "sha256:" + h.hexdigest()


def archive_kind(path: Path) -> str | None:
    """What ADD does with a local file: a tar archive (plain, gzip, bzip2 or xz) is extracted
    into the destination, as Docker does; anything else (None) is copied. The extraction itself
    is the builder's, into the image, with the same care as this module's."""
    try:
        with tarfile.open(path, "r:*") as t:
            if t.next() is None:
                return None
        return _compression(path)
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return None


def _compression(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    return "tar"


def _extract(f: io.BufferedIOBase, limits: Limits, root: Path) -> tuple[set[str], IgnoreRules]:
    zf = _central_directory(f, limits)
    entries: dict[str, _Entry] = {}
    offsets: set[int] = set()
    declared = 0
    for info in zf.infolist():
        e = _classify(info)
        if e is None:
            continue
        if e.rel in entries:
            raise ContextError(e.rel, "appears twice in the zip; keep one")
        if e.kind != stat.S_IFDIR:
            if info.header_offset in offsets:
                raise ContextError(e.rel, "shares its data with another entry (an overlapping "
                                   "zip bomb?)")
            offsets.add(info.header_offset)
        declared += info.file_size
        if declared > limits.max_bytes:
            raise ContextError(e.rel, f"the entries' sizes add up past {limits.max_bytes} bytes "
                               "(a zip bomb, or a context over the limit); leave big files out")
        entries[e.rel] = e
    for rel, e in entries.items():
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = entries.get("/".join(parts[:i]))
            if parent is not None and parent.kind != stat.S_IFDIR:
                what = "a symlink" if parent.kind == stat.S_IFLNK else "a file"
                raise ContextError(rel, f"is under {parent.rel}, which is {what} in the zip")

    reader = _Reader(f, limits)
    rules = IgnoreRules()
    if ".dockerignore" in entries and entries[".dockerignore"].kind == stat.S_IFREG:
        text = reader.read_small(entries[".dockerignore"], MAX_DOCKERIGNORE)
        try:
            rules = IgnoreRules(text.decode("utf-8", "replace"))
        except ValueError as err:
            raise ContextError(".dockerignore", str(err)) from None
    ignored = {rel for rel in entries if rules.excludes(rel)}
    kept = [e for rel, e in entries.items() if rel not in ignored]

    links: dict[str, str] = {}
    for e in kept:
        if e.kind == stat.S_IFLNK:
            raw = reader.read_small(e, MAX_NAME)
            try:
                e.target = raw.decode()
            except UnicodeDecodeError:
                raise ContextError(e.rel, "a symlink whose target is not UTF-8") from None
            if not e.target or "\0" in e.target:
                raise ContextError(e.rel, "a symlink with an empty or NUL target")
            links[e.rel] = e.target
    for rel, target in links.items():
        why = _escapes(rel, target, links)
        if why:
            raise ContextError(rel, f"a symlink that {why}; replace it with the file it points "
                               "to, or make it relative and inside the context")

    # no symlink exists under root until every file is written, and names have no '..', so the
    # O_NOFOLLOW|O_EXCL opens below cannot be steered out of root
    dirs: list[_Entry] = []
    for e in sorted(kept, key=lambda e: e.info.header_offset):
        path = root / e.rel
        if e.kind == stat.S_IFDIR:
            path.mkdir(parents=True, exist_ok=True)
            dirs.append(e)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if e.kind == stat.S_IFLNK:
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            for chunk in reader.chunks(e):
                _write_all(fd, chunk)
            os.fchmod(fd, e.mode)
        finally:
            os.close(fd)
    for e in kept:
        if e.kind == stat.S_IFLNK:
            os.symlink(e.target, root / e.rel)
    for e in sorted(dirs, key=lambda e: -e.rel.count("/")):
        os.chmod(root / e.rel, e.mode)
    return ignored, rules


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _remove(root: Path) -> None:
    """rmtree, after making the directories writable (a context may hold 0o555 directories)."""
    for d, dirs, _ in os.walk(root):
        for n in dirs:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(root, ignore_errors=True)
