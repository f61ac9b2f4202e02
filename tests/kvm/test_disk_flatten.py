"""A build's disk, flattened (vmmd/images/flatten.py): the base plus the layers the VMM sealed
at each snapshot, newest last, is byte for byte the disk the guest saw; a damaged or unsealed
layer is refused by name."""
import os
import shutil

import pytest

from test_virtio import MODE_SERVE, Serving, blk, boot, devices, make_base
from vmmd.images.flatten import LayerError, flatten
from vmmd.native import VM

pytestmark = pytest.mark.kvm
SECTOR, FIRST, N = 512, 8, 16


def pattern(seed):
    return bytes((i * 13 + seed) & 0xff for i in range(N * SECTOR))


def test_flattened_chain_is_the_disk_the_guest_wrote(tmp_path):
    base = make_base(tmp_path / "base.img")
    snaps = [tmp_path / "s1", tmp_path / "s2"]
    with VM.create(1, 64 << 20, devices=devices(blk(base, tmp_path / "ov"))) as vm:
        boot(vm, MODE_SERVE, n=N)
        g = Serving(vm)
        for seed, snap in zip((1, 2), snaps):
            g.write(seed)
            snap.mkdir()
            vm.pause()
            vm.snapshot(snap)
            vm.resume()
    layers = [s / "virtio-blk.0.disk" for s in snaps]
    with open(base, "rb") as f:
        base_bytes = f.read()
    for upto, seed in ((1, 1), (2, 2)):
        out = tmp_path / f"flat{upto}.img"
        assert flatten(base, layers[:upto], out) > 0
        data = out.read_bytes()
        assert len(data) == len(base_bytes)
        assert data[FIRST * SECTOR:(FIRST + N) * SECTOR] == pattern(seed)
        assert data[:FIRST * SECTOR] == base_bytes[:FIRST * SECTOR]      # the base shows through
        assert data[(FIRST + N) * SECTOR:] == base_bytes[(FIRST + N) * SECTOR:]
    assert open(base, "rb").read() == base_bytes                         # never written


def test_damaged_or_foreign_layers_are_refused_by_name(tmp_path):
    base = make_base(tmp_path / "base.img")
    snap = tmp_path / "s"
    snap.mkdir()
    with VM.create(1, 64 << 20, devices=devices(blk(base, tmp_path / "ov"))) as vm:
        boot(vm, MODE_SERVE, n=N)
        Serving(vm).write(3)
        vm.pause()
        vm.snapshot(snap)
    layer = snap / "virtio-blk.0.disk"
    cut = tmp_path / "cut.disk"
    shutil.copyfile(layer, cut)
    os.truncate(cut, os.path.getsize(layer) - 4096)
    with pytest.raises(LayerError, match="cut.disk: its geometry"):
        flatten(base, [cut], tmp_path / "out.img")
    unsealed = tmp_path / "unsealed.disk"
    shutil.copyfile(layer, unsealed)
    with open(unsealed, "r+b") as f:
        f.seek(72)
        f.write(b"\0\0\0\0")
    with pytest.raises(LayerError, match="not sealed"):
        flatten(base, [unsealed], tmp_path / "out.img")
    (tmp_path / "junk.disk").write_bytes(os.urandom(8192))
    with pytest.raises(LayerError, match="junk.disk: not a version-1"):
        flatten(base, [tmp_path / "junk.disk"], tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()
