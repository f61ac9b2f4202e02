"""What a COPY/ADD step hands the build VM (vmmd/images/build.py, Builder._copy): one tar the
guest's busybox unpacks at /, and the chown that follows. The agent here only records what it
is sent; tests/e2e/test_build.py runs the same steps in a real build VM."""
from __future__ import annotations

import asyncio
import io
import tarfile
import types
import zipfile

import pytest

from vmmd.images import build, context as ctxmod, dockerfile as dfmod


class RecordingAgent:
    def __init__(self):
        self.files, self.runs = {}, []

    async def write_file(self, path, data):
        self.files[path] = data

    async def run(self, argv):
        self.runs.append(argv)
        return types.SimpleNamespace(code=0, stdout=b"", stderr=b"")


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid = len(data), 1234
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def copy_step(dockerfile: str, files: dict[str, bytes], limits=ctxmod.Limits()):
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    df = dfmod.parse(dockerfile, {})
    agent = RecordingAgent()
    builder = build.Builder.__new__(build.Builder)     # _copy needs none of its cache
    with ctxmod.Context.from_zip(z.getvalue()) as ctx:
        st = [s for s in df.steps if s.kind in ("COPY", "ADD")][0]
        asyncio.run(builder._copy(types.SimpleNamespace(agent=agent), ctx, st, limits))
    with tarfile.open(fileobj=io.BytesIO(agent.files["/run/vmmd/copy.tar"])) as t:
        members = {m.name: m for m in t.getmembers()}
    return members, agent.runs[-1][-1]


def test_add_unpacks_an_archive_and_chowns_only_the_other_sources():
    members, script = copy_step(
        "FROM scratch\nWORKDIR /app\nADD --chown=1:1 assets.tar.gz app.py assets/\n",
        {"assets.tar.gz": tgz({"motd.txt": b"hi\n"}), "app.py": b"print(1)\n"})
    assert set(members) == {"app/assets/motd.txt", "app/assets/app.py"}
    assert members["app/assets/motd.txt"].uid == 1234
    assert script.endswith("chown -R 1:1 /app/assets/app.py")


def test_copy_does_not_unpack_an_archive():
    members, _ = copy_step("FROM scratch\nCOPY assets.tar.gz /srv/\n",
                           {"assets.tar.gz": tgz({"motd.txt": b"hi\n"})})
    assert set(members) == {"srv/assets.tar.gz"}


def test_an_archive_over_the_context_limit_fails_the_step_with_its_line():
    with pytest.raises(build.BuildError, match=r"line 2: ADD big.tar.gz: .*expands past"):
        copy_step("FROM scratch\nADD big.tar.gz /srv/\n",
                  {"big.tar.gz": tgz({"zeros": bytes(4 << 20)})},
                  ctxmod.Limits(max_bytes=1 << 20))
