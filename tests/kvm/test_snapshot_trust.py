"""A snapshot directory is untrusted input: parents are the very snapshots recorded, nothing is
followed through a symlink or read from a FIFO, devices come from the host's configuration,
temp files never follow links, and every field is checked against the others."""
import errno
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from guests import devices
from helpers import decode, page_hashes, rewrite, run_more, run_then_snapshot
from vmmd.native import Backend, Device, DeviceType, VM, VmmError, snapshot_info


pytestmark = [pytest.mark.kvm, pytest.mark.timeout(60)]
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def refused(path, backend=Backend.MMAP, **kw) -> VmmError:
    kw.setdefault("devices", devices())
    with pytest.raises(VmmError) as e:
        VM.restore(path, backend, **kw)
    return e.value


@pytest.fixture
def chain(microvm_factory, tmp_path):
    """(vm, base, diff): a full snapshot and a diff on top of it, the VM paused at the diff."""
    vm, base = run_then_snapshot(microvm_factory, tmp_path, pages=64)
    run_more(vm)
    vm.snapshot(tmp_path / "diff", diff=True)
    return vm, base, tmp_path / "diff"


# ---------- parents ----------

def test_diff_parent_replaced_is_refused(chain, tmp_path):
    vm, base, diff = chain
    run_more(vm)
    vm.snapshot(tmp_path / "other")               # a real snapshot, just not the parent
    os.rename(base, tmp_path / "old-base")
    os.rename(tmp_path / "other", base)
    e = refused(diff)
    assert e.errno == errno.ESTALE and "was replaced" in str(e)


def test_diff_parent_with_changed_vmstate_is_refused(chain):
    _, base, diff = chain

    def edit(h, b):
        b["vcpu"][0]["regs"] = bytes(len(b["vcpu"][0]["regs"]))   # same id, other state
        return h, b
    rewrite(base / "vmstate", edit)
    assert "was replaced" in str(refused(diff))


def test_relative_parent_resolves_against_the_child_not_the_cwd(chain, tmp_path, monkeypatch):
    vm, base, diff = chain

    def relative(h, b):
        b["memory"]["parent"]["path"] = "../base"
        return h, b
    rewrite(diff / "vmstate", relative)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "base").mkdir(parents=True)      # a decoy where a cwd-relative lookup would go
    monkeypatch.chdir(elsewhere)
    copy = VM.restore(diff, Backend.MMAP, devices=devices())
    assert page_hashes(copy) == page_hashes(vm)
    copy.close()


def test_parent_through_a_symlink_is_refused(chain, tmp_path):
    _, base, diff = chain
    os.symlink(base, tmp_path / "link")

    def via_link(h, b):
        b["memory"]["parent"]["path"] = str(tmp_path / "link")
        return h, b
    rewrite(diff / "vmstate", via_link)
    assert "symlink" in str(refused(diff))


def test_chain_outside_the_root_is_refused(chain, tmp_path):
    vm, base, diff = chain
    root = tmp_path / "root"
    root.mkdir()
    shutil.move(diff, root / "diff")              # the parent stays outside the root
    e = refused(root / "diff", root=root)
    assert e.errno == errno.EXDEV and "not beneath the snapshot root" in str(e)
    assert "not beneath" in str(refused(base, root=root))
    shutil.move(base, root / "base")              # moved inside, and the diff told where

    def inside(h, b):
        b["memory"]["parent"]["path"] = str(root / "base")
        return h, b
    rewrite(root / "diff" / "vmstate", inside)
    copy = VM.restore(root / "diff", Backend.MMAP, root=root, devices=devices())
    assert page_hashes(copy) == page_hashes(vm)
    copy.close()


# ---------- files ----------

@pytest.mark.parametrize("name", ["memory", "vmstate"])
def test_symlinked_snapshot_file_is_refused(chain, tmp_path, name):
    _, base, _ = chain
    target = tmp_path / "diff" / name
    os.unlink(base / name)
    os.symlink(target, base / name)
    assert "symlink" in str(refused(base))


@pytest.mark.parametrize("name", ["memory", "vmstate"])
def test_fifo_in_place_of_a_snapshot_file_is_refused_without_hanging(chain, name):
    _, base, _ = chain
    os.unlink(base / name)
    os.mkfifo(base / name)
    assert "FIFO" in str(refused(base, Backend.UFFD))


def test_fifo_in_place_of_the_working_set_is_refused_without_hanging(chain, tmp_path):
    _, base, _ = chain
    os.mkfifo(tmp_path / "ws")
    assert "FIFO" in str(refused(base, Backend.UFFD, working_set=tmp_path / "ws"))


def test_directory_in_place_of_memory_is_refused(chain):
    _, base, _ = chain
    os.unlink(base / "memory")
    os.mkdir(base / "memory")
    assert "a directory" in str(refused(base))


def test_snapshot_writes_never_follow_planted_symlinks(microvm_factory, tmp_path):
    vm, _ = run_then_snapshot(microvm_factory, tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    d = tmp_path / "new"
    d.mkdir()
    for name in (".memory.tmp", ".vmstate.tmp", "memory"):   # names temp files once had
        os.symlink(victim, d / name)
    vm.snapshot(d)
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(d / "memory") and not os.path.islink(d / "vmstate")
    copy = microvm_factory.restore(d, Backend.MMAP)
    assert page_hashes(copy) == page_hashes(vm)


# ---------- devices ----------

def test_restore_takes_devices_from_the_host_not_the_file(chain):
    _, base, _ = chain
    e = refused(base, devices=())
    assert "restore with the devices the VM was created with" in str(e)
    e = refused(base, devices=(Device(DeviceType.DEBUG),))
    assert "testdev" in str(e)


def test_snapshot_claiming_other_devices_is_refused(chain):
    _, base, _ = chain

    def no_testdev(h, b):
        b["config"]["devices"] = [d for d in b["config"]["devices"] if d[0] != "testdev"]
        return h, b
    rewrite(base / "vmstate", no_testdev)
    assert "restore with the devices" in str(refused(base))


def test_two_devices_of_a_type_have_their_own_windows_and_sections(tmp_path):
    two = (*devices(), Device(DeviceType.TESTDEV, 1))
    vm = VM.create(1, 16 << 20, devices=two)
    vm.snapshot(tmp_path / "s")
    _, body = decode((tmp_path / "s" / "vmstate").read_bytes())
    tdevs = [d for d in body["config"]["devices"] if d[0] == "testdev"]
    assert [d[1] for d in tdevs] == [0, 1] and tdevs[0][3] != tdevs[1][3]
    assert {"testdev.0", "testdev.1", "serial.0", "debug.0"} <= set(body["devices"])
    VM.restore(tmp_path / "s", Backend.MMAP, devices=two).close()
    assert "restore with the devices" in str(refused(tmp_path / "s"))
    vm.close()


def test_duplicate_device_ids_are_refused():
    with pytest.raises(VmmError, match="two testdev devices with id 0"):
        VM.create(1, 16 << 20, devices=(Device(DeviceType.TESTDEV), Device(DeviceType.TESTDEV)))


PRODUCTION = textwrap.dedent("""
    import os
    os.environ.pop("VMMD_NATIVE", None)
    from vmmd.native import VM, Device, DeviceType, TEST_BUILD, VmmError, lib
    assert not TEST_BUILD
    assert not hasattr(lib, "vmm_inject") and not hasattr(lib, "vmm_bench_floor")
    try:
        VM.create(1, 16 << 20, devices=[Device(DeviceType.DEBUG)])
    except VmmError as e:
        print("REFUSED", e.errno, e)
    VM.create(1, 16 << 20).close()
    print("OK")
""")


def test_production_build_has_no_test_devices_or_entry_points():
    env = {k: v for k, v in os.environ.items() if k != "VMMD_NATIVE"}
    p = subprocess.run([sys.executable, "-c", PRODUCTION], capture_output=True, text=True,
                       timeout=60, env=env, cwd=os.path.dirname(TESTS))
    assert p.returncode == 0, p.stderr
    assert f"REFUSED {errno.ENOTSUP}" in p.stdout and "test build" in p.stdout, p.stdout
    assert p.stdout.strip().endswith("OK")


# ---------- fields checked against each other ----------

def edited(base, fn):
    rewrite(base / "vmstate", fn)
    return refused(base, Backend.UFFD)


def test_mem_size_smaller_than_the_memory_file_is_refused(chain):
    _, base, _ = chain

    def smaller(h, b):   # one page less: the bitmap keeps its length, the file its size
        b["config"]["mem_size"] -= 4096
        b["memory"]["size"] -= 4096
        return h, b
    assert "memory file is" in str(edited(base, smaller))


def test_bitmap_listing_pages_past_the_end_is_refused(chain):
    _, base, _ = chain

    def past(h, b):
        b["config"]["mem_size"] -= 4096
        b["memory"]["size"] -= 4096
        bm = bytearray(b["memory"]["bitmap"])
        if not bm[-1] & 0x80:
            bm[-1] |= 0x80
            b["memory"]["pages"] += 1
        b["memory"]["bitmap"] = bytes(bm)
        return h, b
    assert "past the end" in str(edited(base, past))


def test_page_count_disagreeing_with_the_bitmap_is_refused(chain):
    _, base, _ = chain

    def more(h, b):
        b["memory"]["pages"] += 1
        return h, b
    assert "its bitmap lists" in str(edited(base, more))


@pytest.mark.parametrize("value", [2**32, 2**32 + 1, 7])
def test_mp_state_out_of_range_is_refused(chain, value):
    _, base, _ = chain

    def mp(h, b):
        b["vcpu"][0]["mp_state"] = value
        return h, b
    assert "mp_state" in str(edited(base, mp))


def test_full_snapshot_naming_a_parent_is_refused(chain):
    _, base, diff = chain
    _, d = decode((diff / "vmstate").read_bytes())

    def adopt(h, b):
        b["memory"]["parent"] = d["memory"]["parent"]
        return h, b
    assert "names a parent" in str(edited(base, adopt))


def test_info_names_the_snapshot_by_id_and_checksum(chain):
    _, base, diff = chain
    b, d = snapshot_info(base), snapshot_info(diff)
    _, body = decode((diff / "vmstate").read_bytes())
    assert body["memory"]["parent"]["id"] == b.id and body["memory"]["parent"]["checksum"] == b.checksum
    assert d.id != b.id and d.depth == 1


FUZZ = textwrap.dedent("""
    import os, random, shutil, sys
    sys.path.insert(0, {tests!r})
    os.environ["VMMD_NATIVE"] = "test"
    from guests import devices
    from helpers import decode, encode, page_hashes, run_then_snapshot
    from vmmd.native import VM, Backend, VmmError, snapshot_release
    src, work, seed, rounds = {src!r}, {work!r}, {seed}, {rounds}
    rng = random.Random(seed)
    header, body = decode(open(os.path.join(src, "vmstate"), "rb").read())
    INTERESTING = [0, 1, 2, 7, 255, 4096, 2**16, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]

    def leaves(node, path=()):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, (dict, list)):
                yield from leaves(v, path + (k,))
            else:
                yield path + (k,), v

    all_leaves = list(leaves(body))
    accepted = 0
    for i in range(rounds):
        b = decode(encode(header, body))[1]
        for _ in range(rng.randint(1, 3)):
            path, v = rng.choice(all_leaves)
            node = b
            for k in path[:-1]:
                node = node[k]
            if isinstance(v, int):
                node[path[-1]] = rng.choice(INTERESTING + [v + 1, max(v - 1, 0), v ^ 1])
            elif isinstance(v, bytes):
                op = rng.randrange(3)
                node[path[-1]] = (v[:rng.randrange(len(v) + 1)] if op == 0 else
                                  v + bytes(rng.randrange(1, 64)) if op == 1 else
                                  bytes(x ^ (rng.randrange(256) if rng.random() < 0.05 else 0)
                                        for x in v))
            elif isinstance(v, str):
                node[path[-1]] = rng.choice(["", "/", "..", "/dev/zero", v + "x"])
        d = os.path.join(work, str(i))
        os.mkdir(d)
        os.link(os.path.join(src, "memory"), os.path.join(d, "memory"))
        open(os.path.join(d, "vmstate"), "wb").write(encode(header, b))
        print("ROUND", i, flush=True)
        try:
            vm = VM.restore(d, rng.choice([Backend.MMAP, Backend.UFFD]), devices=devices())
            accepted += 1
            vm.close()
        except VmmError as e:
            assert str(e), "a refusal without a message"
        snapshot_release(d)     # the memory file is shared by hard links: free it again
    print("DONE", accepted)
""")


def test_mutated_vmstates_with_valid_checksums_never_crash(chain, tmp_path):
    _, base, _ = chain
    work = tmp_path / "fuzz"
    work.mkdir()
    p = subprocess.run([sys.executable, "-c", FUZZ.format(tests=TESTS, src=str(base),
                                                         work=str(work), seed=1234, rounds=300)],
                       capture_output=True, text=True, timeout=240,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(TESTS)})
    last = p.stdout.strip().splitlines()[-1:] or ["nothing"]
    assert p.returncode == 0, f"child died ({p.returncode}) after {last}: {p.stderr[-2000:]}"
    assert last[0].startswith("DONE"), last
    assert 0 < int(last[0].split()[1]) < 300, last   # both refusals and acceptances were seen
