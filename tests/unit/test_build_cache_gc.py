"""The build cache's collection (vmmd/images/cachegc.py): least recently used first, never an
entry a surviving entry names (a later step's layers live in earlier steps' entries), never the
build's own entries or what they need, each entry gone whole."""
from __future__ import annotations

import json
import os
import pathlib

from vmmd.images import cachegc

MiB = 1 << 20


def step(cache: pathlib.Path, name: str, used: float, mib: int, parents: tuple[str, ...] = ()):
    """A step entry of `mib` MiB whose layers live in `parents`' entries (and its own)."""
    e = cache / "steps" / name
    (e / "snap").mkdir(parents=True)
    with open(e / "snap" / "virtio-blk.0.disk", "wb") as f:
        f.write(os.urandom(mib * MiB))
    layers = [str(cache / "steps" / p / "snap" / "virtio-blk.0.disk") for p in parents]
    layers.append(str(e / "snap" / "virtio-blk.0.disk"))
    (e / "meta.json").write_text(json.dumps({"layers": layers, "snapshot": str(e / "snap")}))
    cachegc.touch(e)
    os.utime(e / cachegc.USED, (used, used))
    return e


def image(cache: pathlib.Path, name: str, used: float, mib: int):
    e = cache / "images" / name
    e.mkdir(parents=True)
    (e / "rootfs.ext4").write_bytes(os.urandom(mib * MiB))
    (e / "done").touch()
    os.utime(e / "done", (used, used))
    return e


def names(paths) -> list[str]:
    return [p.name for p in paths]


def test_least_recently_used_leaves_go_first_until_the_cache_fits(tmp_path):
    a = step(tmp_path, "a", 100, 2)
    step(tmp_path, "b", 300, 2, ("a",))      # b and c build on a
    step(tmp_path, "c", 200, 2, ("a",))
    image(tmp_path, "i1", 50, 2)
    gone = cachegc.collect(tmp_path, 5 * MiB)
    # a is the oldest step but b and c name it: the image goes, then c
    assert names(gone) == ["i1", "c"]
    assert (a / "meta.json").exists() and (tmp_path / "steps" / "b").exists()


def test_a_parent_goes_only_after_every_child(tmp_path):
    step(tmp_path, "a", 100, 1)
    step(tmp_path, "b", 400, 1, ("a",))
    gone = cachegc.collect(tmp_path, 0)
    assert names(gone) == ["b", "a"]
    assert not [p for p in (tmp_path / "steps").iterdir()]


def test_the_builds_own_entries_and_what_they_need_stay(tmp_path):
    step(tmp_path, "a", 100, 1)
    b = step(tmp_path, "b", 200, 1, ("a",))
    step(tmp_path, "old", 10, 1)
    made = image(tmp_path, "mine", 1, 1)
    gone = cachegc.collect(tmp_path, 0, keep={b, made})
    assert names(gone) == ["old"]
    assert {p.name for p in (tmp_path / "steps").iterdir()} == {"a", "b"}


def test_a_cache_within_its_limit_is_left_alone(tmp_path):
    step(tmp_path, "a", 100, 1)
    image(tmp_path, "i", 100, 1)
    assert cachegc.collect(tmp_path, 10 * MiB) == []


def test_entries_being_written_and_leftovers_of_a_cut_collection(tmp_path):
    step(tmp_path, "a", 100, 1)
    writing = tmp_path / "steps" / ".b.1234"            # a build's entry before its rename
    writing.mkdir()
    (writing / "meta.json").write_text("{}")
    cut = tmp_path / "steps" / ".gc-c-1"                 # renamed, never deleted
    cut.mkdir()
    (cut / "x").write_bytes(b"x" * 4096)
    gone = cachegc.collect(tmp_path, 0)
    assert names(gone) == ["a"]
    assert writing.exists() and not cut.exists()


def test_a_hit_makes_an_entry_recent(tmp_path):
    a = step(tmp_path, "a", 100, 1)
    step(tmp_path, "b", 200, 1)
    cachegc.touch(a)                                      # a build just took it
    assert names(cachegc.collect(tmp_path, 3 * MiB // 2)) == ["b"]
