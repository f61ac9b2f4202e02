"""Durable state: SQLite (WAL, synchronous=FULL) in <state>/vmmd.db plus files.

The database says what exists; files are made durable before the row that points at them is
committed, and rows are marked before files are deleted, so a crash at any point leaves either
the old or the new state and recovery (vmmd/sessions.py) can tell them apart:
- an image directory becomes visible only when its row is committed, after write + fsync +
  rename of the directory; an image directory without a row is a half-registered image and is
  deleted at start;
- a suspend's snapshot layer is renamed into place and fsync'ed before the row naming it;
- a terminate marks the row TERMINATED first, then kills the worker and deletes the files.

Layout: images/<id>/snapshot/{vmstate,memory}, images/<id>/{kernel,initrd,rootfs,working_set};
vms/<id>/{layers/<n>/, worker.sock, worker.log, serial.log}.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from typing import Any, Iterator

from .digest import FileDigest, data_chunks

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL, created REAL NOT NULL,
    meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY, image_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    created REAL NOT NULL, state_since REAL NOT NULL, last_activity REAL NOT NULL,
    running_s REAL NOT NULL, running_since REAL, suspends INTEGER NOT NULL, chain TEXT NOT NULL,
    worker_pid INTEGER NOT NULL, spec TEXT NOT NULL, request_id TEXT, force_full INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vms_request ON vms(request_id);
CREATE INDEX IF NOT EXISTS vms_state ON vms(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, vm_id TEXT NOT NULL, ts REAL NOT NULL,
    type TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL, reason TEXT NOT NULL,
    exit_code INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_vm ON events(vm_id, seq);
"""

VM_FIELDS = ("id", "image_id", "state", "reason", "created", "state_since", "last_activity",
             "running_s", "running_since", "suspends", "chain", "worker_pid", "spec",
             "request_id", "force_full")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def remove_tree(path: str) -> None:
    """Deletes a directory that may hold snapshots. Their memory files are immutable while a VM
    may map them (docs/native-core.md), so each is released first; the caller deletes only what
    no VM uses any more. Nothing there is fine."""
    if not os.path.isdir(path):
        return
    from .native import VmmError, snapshot_release
    for dirpath, _, files in os.walk(path):
        if "memory" in files:
            try:
                snapshot_release(dirpath)
            except (VmmError, OSError):
                pass
    shutil.rmtree(path, ignore_errors=True)


def copy_sparse(src: str, dst: str, hasher=None, chunk: int = 1 << 20) -> int:
    """Copies a regular file keeping its holes (SEEK_DATA/SEEK_HOLE), fsyncs it; returns bytes
    allocated. `hasher` gets the content in vmmd/digest.py's canonical form: equal content
    hashes equal however it is stored, and a hole is never read."""
    import stat as _stat
    st = os.stat(src, follow_symlinks=False)
    if not _stat.S_ISREG(st.st_mode):
        raise OSError(f"{src} is not a regular file")
    size = st.st_size
    d = FileDigest(hasher, size) if hasher is not None else None
    written = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for pos, buf in data_chunks(fi.fileno(), size, src, chunk):
            if d is not None:
                d.data(pos, buf)
            os.pwrite(fo.fileno(), buf, pos)
            written += len(buf)
        if d is not None:
            d.end()
        fo.truncate(size)
        fo.flush()
        os.fsync(fo.fileno())
    return written


class Store:
    def __init__(self, state_dir: str):
        self.dir = state_dir
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        for sub in ("images", "vms"):
            os.makedirs(os.path.join(state_dir, sub), mode=0o700, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(state_dir, "vmmd.db"), isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")       # a commit is on disk when it returns
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def image_dir(self, image_id: str) -> str:
        return os.path.join(self.dir, "images", image_id)

    def vm_dir(self, vm_id: str) -> str:
        return os.path.join(self.dir, "vms", vm_id)

    # --- images ---

    def put_image(self, image_id: str, name: str, digest: str, meta: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO images VALUES (?,?,?,?,?)",
                        (image_id, name, digest, time.time(), json.dumps(meta)))

    def images(self) -> list[dict]:
        out = []
        for r in self.db.execute("SELECT * FROM images ORDER BY created"):
            d = dict(r)
            d["meta"] = json.loads(d["meta"])
            out.append(d)
        return out

    def delete_image(self, image_id: str) -> None:
        self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    # --- MicroVMs ---

    def put_vm(self, rec: dict[str, Any]) -> None:
        row = dict(rec)
        row["chain"] = json.dumps(row["chain"])
        row["spec"] = json.dumps(row["spec"])
        self.db.execute(f"INSERT OR REPLACE INTO vms ({','.join(VM_FIELDS)}) "
                        f"VALUES ({','.join('?' * len(VM_FIELDS))})",
                        tuple(row[f] for f in VM_FIELDS))

    def vms(self) -> list[dict]:
        out = []
        for r in self.db.execute("SELECT * FROM vms ORDER BY created"):
            d = dict(r)
            d["chain"] = json.loads(d["chain"])
            d["spec"] = json.loads(d["spec"])
            out.append(d)
        return out

    def prune_terminated(self, keep: int = 10000) -> None:
        self.db.execute("DELETE FROM vms WHERE state = 'TERMINATED' AND id NOT IN "
                        "(SELECT id FROM vms WHERE state = 'TERMINATED' "
                        "ORDER BY state_since DESC LIMIT ?)", (keep,))

    # --- events ---

    def add_event(self, vm_id: str, ts: float, type_: str, from_state: str, to_state: str,
                  reason: str, exit_code: int = 0) -> int:
        cur = self.db.execute(
            "INSERT INTO events (vm_id, ts, type, from_state, to_state, reason, exit_code) "
            "VALUES (?,?,?,?,?,?,?)", (vm_id, ts, type_, from_state, to_state, reason, exit_code))
        return cur.lastrowid

    def events_since(self, seq: int, vm_id: str = "") -> Iterator[dict]:
        if vm_id:
            q = self.db.execute("SELECT * FROM events WHERE seq > ? AND vm_id = ? ORDER BY seq",
                                (seq, vm_id))
        else:
            q = self.db.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq", (seq,))
        for r in q:
            yield dict(r)


def drop_layer(path: str) -> None:
    """Removes a snapshot layer a full snapshot made unnecessary, except the disk layers it
    holds (`*.disk`): a disk's chain does not restart at a full snapshot (docs/virtio.md), so
    they stay, in the directory marked "disk-only"."""
    disks = [f for f in os.listdir(path) if f.endswith(".disk")] if os.path.isdir(path) else []
    if not disks:
        remove_tree(path)
        return
    from .native import VmmError, snapshot_release
    if os.path.exists(os.path.join(path, "memory")):
        try:
            snapshot_release(path)          # memory files are immutable while mappable
        except (VmmError, OSError):
            pass
    write_atomic(os.path.join(path, "kind"), b"disk-only")
    for f in os.listdir(path):
        p = os.path.join(path, f)
        if f in disks or f == "kind":
            continue
        if os.path.isdir(p) and not os.path.islink(p):
            remove_tree(p)
        else:
            os.unlink(p)
    fsync_dir(path)


def is_disk_only(path: str) -> bool:
    try:
        with open(os.path.join(path, "kind"), "rb") as f:
            return f.read() == b"disk-only"
    except OSError:
        return False
