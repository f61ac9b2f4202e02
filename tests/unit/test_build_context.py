"""The build context (vmmd/images/context.py): hostile zips are refused before or while they are
extracted, with the entry's name; .dockerignore and COPY's globs work as Docker's; the digest
follows what a COPY reads and nothing else."""
import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile

import pytest

from vmmd.errors import InvalidArgument
from vmmd.images.context import Context, ContextError, Limits, archive_kind
from vmmd.images.patterns import IgnoreRules, copy_pattern


def make_zip(*entries, method=zipfile.ZIP_DEFLATED):
    """entries: (name, data) or (name, data, mode) with mode the full st_mode."""
    b = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # zipfile warns about duplicate names
        with zipfile.ZipFile(b, "w", method) as z:
            for name, data, *mode in entries:
                info = zipfile.ZipInfo(name)
                info.compress_type = method
                info.create_system = 3
                default = 0o40755 if name.endswith("/") else 0o100644
                info.external_attr = (mode[0] if mode else default) << 16
                z.writestr(info, data)
    return b.getvalue()


def link(name, target):
    return (name, target, 0o120777)


def refused(data, limits=Limits(), into=None):
    with pytest.raises(ContextError) as e:
        Context.from_zip(data, limits, into)
    return e.value


APP = make_zip(("app.py", "from flask import Flask\n"), ("requirements.txt", "flask\n"),
               ("templates/", b""), ("templates/index.html", "<h1>hi</h1>"),
               ("static/css/site.css", "body{}"), ("static/app.js", "x()"),
               ("run.sh", "#!/bin/sh\nexec python app.py\n", 0o100755),
               link("current", "static"), ("a.txt", "a"), ("b.txt", "b"), ("c.md", "c"))


@pytest.fixture
def ctx():
    with Context.from_zip(APP) as c:
        yield c


def rels(c, paths):
    return [p.relative_to(c.root).as_posix() for p in paths]


# ---- extraction -------------------------------------------------------------------------

def test_a_zip_extracts_with_its_modes_and_symlinks(ctx):
    assert (ctx.root / "app.py").read_text() == "from flask import Flask\n"
    assert stat.S_IMODE(os.stat(ctx.root / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(ctx.root / "app.py").st_mode) == 0o644
    assert os.readlink(ctx.root / "current") == "static"


def test_a_zip_on_disk_extracts_into_a_given_directory_and_close_leaves_it(tmp_path):
    (tmp_path / "c.zip").write_bytes(APP)
    (tmp_path / "out").mkdir()
    c = Context.from_zip(tmp_path / "c.zip", into=tmp_path / "out")
    c.close()
    assert (tmp_path / "out" / "templates" / "index.html").exists()


def test_close_removes_a_temporary_context():
    c = Context.from_zip(APP)
    c.close()
    assert not c.root.exists()


def test_set_uid_bits_are_dropped():
    with Context.from_zip(make_zip(("su", "x", 0o104755))) as c:
        assert stat.S_IMODE(os.stat(c.root / "su").st_mode) == 0o755


def test_context_errors_are_invalid_arguments():
    assert isinstance(refused(make_zip(("../x", "x"))), InvalidArgument)


def test_dot_dot_entries_are_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    e = refused(make_zip(("ok.txt", "fine"), ("sub/../../escape.txt", "x")), into=out)
    assert e.name == "sub/../../escape.txt" and "'..'" in e.message
    assert not (tmp_path / "escape.txt").exists()
    assert list(out.iterdir()) == []        # checked before anything was written


def test_absolute_entries_are_refused():
    e = refused(make_zip(("/etc/cron.d/evil", "x")))
    assert e.name == "/etc/cron.d/evil" and "absolute path" in e.message


@pytest.mark.parametrize("links, bad", [
    ([link("out", "../../etc")], "out"),
    ([link("abs", "/etc/passwd")], "abs"),
    ([link("sub/up", "../..")], "sub/up"),
    # each one looks harmless alone; resolved through each other they leave the context
    ([link("d/a", "b/../.."), link("d/b", ".")], "d/a"),
    ([link("x", "y/.."), link("y", "z"), link("z", "..")], "x"),
    ([link("loop1", "loop2"), link("loop2", "loop1")], "loop"),
])
def test_symlinks_that_resolve_outside_the_context_are_refused(tmp_path, links, bad):
    out = tmp_path / "out"
    out.mkdir()
    e = refused(make_zip(("ok", "x"), *links), into=out)
    assert e.name.startswith(bad) and "symlink" in e.message
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_a_file_under_a_symlink_is_refused_so_nothing_is_written_through_one(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    e = refused(make_zip(link("inside", "sub"), ("sub/", b""), ("inside/x", "payload")))
    assert e.name == "inside/x" and "a symlink" in e.message
    e = refused(make_zip(("f", "file"), ("f/x", "x")))
    assert e.name == "f/x" and "a file" in e.message


def test_symlinks_inside_the_context_are_kept():
    with Context.from_zip(make_zip(("lib/v1/x.so", "x"), link("lib/cur", "v1"),
                                   link("top", "lib/cur/x.so"), link("dangling", "nope"))) as c:
        assert (c.root / "top").read_text() == "x"
        assert os.readlink(c.root / "dangling") == "nope"


@pytest.mark.parametrize("mode, what", [(0o020644, "character device"), (0o060644, "block device"),
                                        (0o010644, "FIFO"), (0o140644, "socket")])
def test_device_files_are_refused(mode, what):
    e = refused(make_zip(("dev/thing", "", mode)))
    assert e.name == "dev/thing" and what in e.message


def test_duplicate_entries_are_refused():
    e = refused(make_zip(("app.py", "one"), ("./app.py", "two")))
    assert e.name == "app.py" and "twice" in e.message


def test_a_zip_bomb_by_declared_sizes_is_refused_before_extraction(tmp_path):
    zeros = b"\0" * (4 << 20)
    bomb = make_zip(*[(f"z{i}", zeros) for i in range(8)])     # 32 MiB from ~32 KiB
    assert len(bomb) < 100_000
    out = tmp_path / "out"
    out.mkdir()
    e = refused(bomb, Limits(max_bytes=16 << 20), into=out)
    assert e.name == "z4" and "add up past" in e.message
    assert list(out.iterdir()) == []


def lie_about_size(data, name, size):
    """Rewrite the uncompressed size of `name` in its local header and central directory entry."""
    b = bytearray(data)
    enc = name.encode()
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = b.find(sig)
        while i >= 0:
            n_off = 26 if sig == b"PK\x03\x04" else 28
            n = struct.unpack_from("<H", b, i + n_off)[0]
            start = i + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(b[start:start + n]) == enc:
                struct.pack_into("<I", b, i + at, size)
            i = b.find(sig, i + 4)
    return bytes(b)


def test_a_zip_bomb_with_lying_headers_stops_at_the_declared_size(tmp_path):
    liar = lie_about_size(make_zip(("small.txt", b"A" * (64 << 20)), ("after", "x")),
                          "small.txt", 1000)
    assert zipfile.ZipFile(io.BytesIO(liar)).getinfo("small.txt").file_size == 1000
    out = tmp_path / "out"
    out.mkdir()
    e = refused(liar, Limits(max_bytes=1 << 20), into=out)
    assert e.name == "small.txt" and "past the 1000 bytes its header declares" in e.message
    assert (out / "small.txt").stat().st_size <= 1000   # stopped as soon as it crossed
    assert not (out / "after").exists()


def test_a_stored_entry_longer_than_declared_is_refused():
    liar = lie_about_size(make_zip(("s", b"B" * 5000), method=zipfile.ZIP_STORED), "s", 10)
    assert "header declares" in refused(liar).message


def test_a_corrupted_entry_fails_its_crc():
    data = bytearray(make_zip(("f", b"hello world" * 10), method=zipfile.ZIP_STORED))
    i = data.find(b"hello world")
    data[i] = ord("J")
    e = refused(bytes(data))
    assert e.name == "f" and "CRC" in e.message


def test_entries_sharing_data_are_refused():
    data = bytearray(make_zip(("a", "x" * 100), ("b", "y" * 100)))
    cd = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", cd + 4)
    struct.pack_into("<I", data, second + 42, struct.unpack_from("<I", data, cd + 42)[0])
    e = refused(bytes(data))
    assert e.name == "b" and "shares its data" in e.message


def test_too_many_entries_are_refused():
    e = refused(make_zip(*[(f"f{i}", "") for i in range(11)]), Limits(max_entries=10))
    assert "11 entries, over the limit of 10" in e.message


def test_a_zip_over_the_size_limit_is_refused(tmp_path):
    big = make_zip(("r", os.urandom(200_000)))
    assert "over the limit of 100000" in refused(big, Limits(max_bytes=100_000)).message
    (tmp_path / "big.zip").write_bytes(big)
    assert "over the limit" in refused(tmp_path / "big.zip", Limits(max_bytes=100_000)).message


def test_not_a_zip_is_refused():
    assert "not a zip" in refused(b"PK but not really a zip at all").message


# ---- .dockerignore -------------------------------------------------------------------------

def test_dockerignore_leaves_files_out_and_exceptions_bring_them_back():
    ignore = "# build outputs\n*.pyc\n**/__pycache__\n/docs\n!docs/README.md\n.git\n"
    data = make_zip((".dockerignore", ignore), ("app.py", "x"), ("app.pyc", "x"),
                    ("pkg/__pycache__/m.cpython-311.pyc", "x"), ("pkg/m.py", "x"),
                    ("docs/guide.md", "x"), ("docs/README.md", "x"), (".git/HEAD", "x"))
    with Context.from_zip(data) as c:
        kept = sorted(p.relative_to(c.root).as_posix() for p in c.root.rglob("*")
                      if not p.is_dir())
        assert kept == [".dockerignore", "app.py", "docs/README.md", "pkg/m.py"]
        e = pytest.raises(ContextError, c.sources, ["app.pyc"]).value
        assert "not in the context (.dockerignore excludes it)" in e.message


@pytest.mark.parametrize("rules, path, out", [
    ("*.md", "a.md", True), ("*.md", "d/a.md", False), ("**/*.md", "d/e/a.md", True),
    ("d", "d/e/f", True), ("d/*", "d/e", True), ("d/*/f", "d/e/f", True),
    ("a?c", "abc", True), ("a[0-9]", "a5", True), ("a[^0-9]", "a5", False),
    ("*\n!keep", "keep", False), ("!keep\n*", "keep", True), ("./x/../y", "y", True),
    ("**", "any/thing", True), ("d\n!d/e\nd/e/x", "d/e/x", True)])
def test_dockerignore_patterns_as_docker_reads_them(rules, path, out):
    assert IgnoreRules(rules).excludes(path) is out


# ---- COPY sources ------------------------------------------------------------------------

def test_a_file_source(ctx):
    assert rels(ctx, ctx.sources(["app.py"])) == ["app.py"]
    assert rels(ctx, ctx.sources(["/requirements.txt", "./app.py"])) == ["app.py",
                                                                       "requirements.txt"]


def test_a_directory_copies_its_contents_recursively(ctx):
    assert rels(ctx, ctx.sources(["static"])) == ["static", "static/app.js", "static/css",
                                                  "static/css/site.css"]


def test_dot_is_the_whole_context(ctx):
    assert "templates/index.html" in rels(ctx, ctx.sources(["."]))


def test_globs_follow_go_filepath_match(ctx):
    assert rels(ctx, ctx.sources(["*.txt"])) == ["a.txt", "b.txt", "requirements.txt"]
    assert rels(ctx, ctx.sources(["[ab].txt"])) == ["a.txt", "b.txt"]
    assert rels(ctx, ctx.sources(["?.md"])) == ["c.md"]
    assert rels(ctx, ctx.sources(["static/*/*.css"])) == ["static/css/site.css"]
    assert copy_pattern("*.css").match("static/css/site.css") is None   # * stays in one component


def test_a_symlink_source_is_followed_within_the_context(ctx):
    assert rels(ctx, ctx.sources(["current"])) == rels(ctx, ctx.sources(["static"]))


def test_a_source_that_matches_nothing_names_itself(ctx):
    e = pytest.raises(ContextError, ctx.sources, ["app.py", "settings.py"]).value
    assert str(e).endswith("COPY settings.py: not in the context")
    e = pytest.raises(ContextError, ctx.sources, ["*.go"], "ADD").value
    assert e.message == "ADD *.go: not in the context"


def test_placements_follow_docker_s_copy_rule(ctx):
    r = ctx.root
    assert ctx.placements(["app.py"], "/srv/main.py", False) == [(r / "app.py", "/srv/main.py")]
    assert ctx.placements(["app.py"], "/srv", True) == [(r / "app.py", "/srv/app.py")]
    assert ctx.placements(["*.md", "templates"], "/srv", True) == [
        (r / "c.md", "/srv/c.md"), (r / "templates", "/srv")]


def test_a_symlinked_file_is_placed_under_its_own_name():
    with Context.from_zip(make_zip(("v1/app.bin", "x"), link("app", "v1/app.bin"))) as c:
        assert c.placements(["app"], "/opt/", True) == [(c.root / "v1/app.bin", "/opt/app")]


def test_add_sees_local_tar_archives(tmp_path):
    (tmp_path / "f").write_text("x")
    for mode, kind in (("w", "tar"), ("w:gz", "tar.gz"), ("w:bz2", "tar.bz2"),
                       ("w:xz", "tar.xz")):
        with tarfile.open(tmp_path / "a", mode) as t:
            t.add(tmp_path / "f", "f")
        assert archive_kind(tmp_path / "a") == kind
    assert archive_kind(tmp_path / "f") is None


# ---- digest --------------------------------------------------------------------------------

def digest_of(data, patterns):
    with Context.from_zip(data) as c:
        return c.digest(c.sources(patterns))


def test_digest_changes_when_a_copied_file_changes_and_not_when_another_does():
    base = [("app.py", "v1"), ("README.md", "docs"), ("lib/", b""), ("lib/u.py", "u")]
    d = digest_of(make_zip(*base), ["app.py", "lib"])
    assert d == digest_of(make_zip(*base), ["app.py", "lib"])
    assert d == digest_of(make_zip(("app.py", "v1"), ("README.md", "new docs"), ("lib/", b""),
                                   ("lib/u.py", "u")), ["app.py", "lib"])
    assert d != digest_of(make_zip(("app.py", "v1"), ("README.md", "docs"), ("lib/", b""),
                                   ("lib/u.py", "u2")), ["app.py", "lib"])


def test_digest_covers_names_modes_and_symlink_targets():
    d = digest_of(make_zip(("a", "x"), link("l", "a")), ["."])
    assert d != digest_of(make_zip(("b", "x"), link("l", "b")), ["."])
    assert d != digest_of(make_zip(("a", "x", 0o100755), link("l", "a")), ["."])
    assert d != digest_of(make_zip(("a", "x"), ("b", "x"), link("l", "b")), ["a", "l"])
    assert d.startswith("sha256:")


def test_digest_ignores_mtimes(ctx):
    paths = ctx.sources(["."])
    d = ctx.digest(paths)
    os.utime(ctx.root / "app.py", (1, 1))
    assert ctx.digest(paths) == d
