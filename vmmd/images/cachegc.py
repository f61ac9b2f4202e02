"""Garbage collection of the build cache (docs/images.md, "The build cache"): after each build,
while the cache holds more than its limit, the least recently used entry that nothing depends on
goes, whole.

Collected: `steps/<key>/` (a step's snapshot and its disk layer; later steps' entries name the
layers and snapshots of earlier ones in their meta.json, so an entry goes only after every entry
that names it) and `images/<key>/` (initialized images, named by nothing). Never collected: the
entries of the build that just ran (`keep`), the base root filesystems under `bases/` (the step
keys are bound to the exact base file, so a base made again only misses the cache), the pulled
OCI blobs. An entry disappears by one rename before it is deleted, so a build never sees half
of one. One build at a time per cache (the Builder's rule) makes this safe to run at its end.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from dataclasses import dataclass, field

from vmmd.store import remove_tree

USED = "used"           # touched in an entry each time a build takes it from the cache


def touch(entry: pathlib.Path) -> None:
    try:
        (entry / USED).touch()
    except OSError:
        pass            # an entry that went meanwhile is simply a miss next time


@dataclass
class Entry:
    path: pathlib.Path
    size: int
    used: float
    deps: set[pathlib.Path] = field(default_factory=set)    # entries this one names


def _allocated(path: pathlib.Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _last_used(path: pathlib.Path, marker: str) -> float:
    for name in (USED, marker):
        try:
            return os.stat(path / name).st_mtime
        except OSError:
            pass
    return 0.0


def scan(cache: pathlib.Path) -> dict[pathlib.Path, Entry]:
    entries: dict[pathlib.Path, Entry] = {}
    cache = pathlib.Path(os.path.realpath(cache))
    steps = cache / "steps"
    for kind, marker in (("steps", "meta.json"), ("images", "done")):
        root = cache / kind
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.name.startswith(".") or not (p / marker).exists():
                continue      # being written, or being collected
            e = Entry(p, _allocated(p), _last_used(p, marker))
            if kind == "steps":
                try:
                    meta = json.loads((p / "meta.json").read_text())
                except (OSError, ValueError):
                    meta = {}
                for ref in [*meta.get("layers", []), meta.get("snapshot") or ""]:
                    rel = pathlib.Path(os.path.realpath(ref)) if ref else None
                    if rel is not None and rel.is_relative_to(steps):
                        e.deps.add(steps / rel.relative_to(steps).parts[0])
                e.deps.discard(p)
            entries[p] = e
    return entries


def collect(cache: str | os.PathLike, max_bytes: int,
            keep: set[pathlib.Path] = frozenset()) -> list[pathlib.Path]:
    """Deletes least recently used entries until the collectable ones fit in `max_bytes`, or
    only kept entries and the ones they need remain. Returns what went, in order."""
    cache = pathlib.Path(os.path.realpath(cache))
    for kind in ("steps", "images"):    # what a collection cut short left
        for p in (cache / kind).glob(".gc-*"):
            remove_tree(str(p))
    entries = scan(cache)
    keep = {pathlib.Path(os.path.realpath(p)) for p in keep}
    needed: set[pathlib.Path] = set()
    todo = [p for p in keep if p in entries]
    while todo:                         # what the kept entries need stays too
        p = todo.pop()
        if p not in needed:
            needed.add(p)
            todo.extend(d for d in entries[p].deps if d in entries)
    total = sum(e.size for e in entries.values())
    gone: list[pathlib.Path] = []
    while total > max_bytes:
        named = {d for e in entries.values() for d in e.deps}
        free = [e for p, e in entries.items() if p not in needed and p not in named]
        if not free:
            break
        victim = min(free, key=lambda e: (e.used, str(e.path)))
        hidden = victim.path.with_name(f".gc-{victim.path.name}-{time.monotonic_ns()}")
        try:
            os.rename(victim.path, hidden)
        except OSError:
            del entries[victim.path]
            continue
        remove_tree(str(hidden))
        gone.append(victim.path)
        total -= victim.size
        del entries[victim.path]
    return gone
