"""ADD of a local tar archive (vmmd/images/archive.py): members land under the destination with
their own owners and modes; names and hard links that leave it, bombs, too many members and
broken archives are refused with a message; nothing is written on the host."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from vmmd.images.archive import ArchiveError, add_extracted
from vmmd.images.context import Limits


def member(name: str, data: bytes | None = b"", **kw) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    if data is not None and info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(data)
    return info, data


def archive(path, members, mode: str = "w:gz") -> str:
    with tarfile.open(path, mode) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return str(path)


def unpack(src, dest: str = "/opt/app", limits: Limits = Limits()) -> dict[str, tarfile.TarInfo]:
    """What the build VM would unpack: name -> TarInfo; DATA: name -> a file's bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        add_extracted(out, src, dest, limits)
    buf.seek(0)
    DATA.clear()
    with tarfile.open(fileobj=buf) as t:
        got = {m.name: m for m in t.getmembers()}
        DATA.update({n: t.extractfile(m).read() for n, m in got.items() if m.isreg()})
    return got


DATA: dict[str, bytes] = {}


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_members_land_under_the_destination_with_their_owners_and_modes(tmp_path, mode):
    src = archive(tmp_path / "a", [
        member("./", type=tarfile.DIRTYPE, mode=0o700),
        member("bin/", type=tarfile.DIRTYPE, mode=0o755),
        member("bin/run", b"#!/bin/sh\necho hi\n", mode=0o751, uid=1000, gid=1001,
               uname="alice", gname="staff"),
        member("/etc/abs.conf", b"absolute names are relative to the destination"),
        member("bin/link", None, type=tarfile.SYMTYPE, linkname="/usr/bin/python3"),
        member("bin/hard", None, type=tarfile.LNKTYPE, linkname="bin/run"),
    ], mode)
    got = unpack(src)
    assert set(got) == {"opt/app/bin", "opt/app/bin/run", "opt/app/etc/abs.conf",
                        "opt/app/bin/link", "opt/app/bin/hard"}
    run = got["opt/app/bin/run"]
    assert (DATA[run.name], run.mode, run.uid, run.gid, run.uname) == \
        (b"#!/bin/sh\necho hi\n", 0o751, 1000, 1001, "")
    assert got["opt/app/bin/link"].linkname == "/usr/bin/python3"
    assert got["opt/app/bin/hard"].linkname == "opt/app/bin/run"


def test_the_root_destination_unpacks_at_the_top(tmp_path):
    src = archive(tmp_path / "a", [member("srv/x", b"x")])
    assert set(unpack(src, "/")) == {"srv/x"}


@pytest.mark.parametrize("name,link", [("../escape", None), ("a/../../escape", None),
                                       ("ok", "../../etc/passwd")])
def test_names_and_hard_links_that_leave_the_destination_are_refused(tmp_path, name, link):
    m = member(name, b"x") if link is None else \
        member(name, None, type=tarfile.LNKTYPE, linkname=link)
    src = archive(tmp_path / "a", [m])
    e = pytest.raises(ArchiveError, unpack, src).value
    assert "leaves the destination" in str(e)


def test_a_bomb_stops_at_the_limit_without_being_unpacked(tmp_path):
    zeros = bytes(1 << 20)
    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("big")
        info.size = 64 << 20

        class Zeros(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, b):
                b[:len(b)] = zeros[:len(b)]
                return len(b)
        t.addfile(info, io.BufferedReader(Zeros()))
    assert os.path.getsize(tmp_path / "bomb.tar.gz") < 1 << 20
    e = pytest.raises(ArchiveError, unpack, tmp_path / "bomb.tar.gz",
                      limits=Limits(max_bytes=8 << 20)).value
    assert "expands past 8388608 bytes" in str(e)


def test_too_many_members_are_refused(tmp_path):
    src = archive(tmp_path / "a", [member(f"f{i}", b"") for i in range(20)])
    e = pytest.raises(ArchiveError, unpack, src, limits=Limits(max_entries=10)).value
    assert "more than 10 members" in str(e)


def test_a_truncated_archive_is_refused_with_a_message(tmp_path):
    src = archive(tmp_path / "a", [member("f", os.urandom(200_000))], mode="w")
    with open(src, "r+b") as f:
        f.truncate(100_000)
    with pytest.raises(ArchiveError):
        unpack(src)
    gz = archive(tmp_path / "b", [member("f", os.urandom(200_000))])
    with open(gz, "r+b") as f:
        f.truncate(100_000)
    with pytest.raises(ArchiveError):
        unpack(gz)
