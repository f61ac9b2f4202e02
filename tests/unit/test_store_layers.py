"""The daemon's snapshot-layer housekeeping (vmmd/store.py): a full snapshot makes the older
memory layers unnecessary, but never the disk layers they hold, since a disk's chain of
copy-on-write layers does not restart at a full snapshot (docs/virtio.md)."""
from vmmd.store import drop_layer, is_disk_only


def make_layer(d, *files):
    d.mkdir()
    for f in files:
        (d / f).write_bytes(f.encode() * 100)
    return d


def test_dropping_a_layer_keeps_the_disk_layers_it_holds(tmp_path):
    d = make_layer(tmp_path / "3", "vmstate", "memory", "kind", "virtio-blk.0.disk")
    drop_layer(str(d))
    assert sorted(p.name for p in d.iterdir()) == ["kind", "virtio-blk.0.disk"]
    assert (d / "virtio-blk.0.disk").read_bytes() == b"virtio-blk.0.disk" * 100
    assert is_disk_only(str(d))


def test_a_layer_without_disks_goes_entirely(tmp_path):
    d = make_layer(tmp_path / "4", "vmstate", "memory", "kind")
    drop_layer(str(d))
    assert not d.exists()
    assert not is_disk_only(str(tmp_path / "4"))
    assert not is_disk_only(str(make_layer(tmp_path / "5", "vmstate", "kind")))
