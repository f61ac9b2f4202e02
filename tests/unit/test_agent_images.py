"""The guest pieces as built on this machine: kernels unpacked by provisioning, the agent for
both arches, the initramfs (contents, module order, reproducibility)."""
from __future__ import annotations

import gzip
import importlib.util
import pathlib
import stat
import subprocess

import pytest

from vmmd.images import agentbuild, initramfs, paths

ROOT = pathlib.Path(__file__).resolve().parents[2]


def guest_kernel_module():
    spec = importlib.util.spec_from_file_location("guest_kernel", ROOT / "hosts" / "guest_kernel.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def read_cpio(raw: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, rdev) of a newc archive."""
    out, pos = {}, 0
    while True:
        assert raw[pos:pos + 6] == b"070701", f"bad cpio magic at {pos}"
        f = [int(raw[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = raw[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = raw[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data, (rmaj, rmin))


def test_x86_64_guest_kernel_is_an_elf_with_a_pvh_entry():
    k = paths.guest_kernel("x86_64")
    gk = guest_kernel_module()
    head = k.image.read_bytes()
    assert head[:4] == b"\x7fELF"
    assert gk.pvh_entry(head) == k.facts["pvh_entry"] != None  # noqa: E711
    assert k.facts["config"]["VIRTIO_MMIO"] in ("y", "m")
    assert k.facts["config"]["VIRTIO_MMIO_CMDLINE_DEVICES"] is None   # ACPI is the only way in


def test_aarch64_guest_kernel_is_a_flat_image():
    k = paths.guest_kernel("aarch64")
    with open(k.image, "rb") as f:
        head = f.read(64)
    assert head[0x38:0x3C] == b"ARM\x64"
    assert k.facts["config"]["EXT4_FS"] == "y"


@pytest.mark.parametrize("arch,machine", [("x86_64", "x86-64"), ("aarch64", "aarch64")])
def test_agent_builds_static_for_both_arches(arch, machine):
    out = subprocess.run(["file", "-b", str(agentbuild.build(arch))], capture_output=True,
                         text=True).stdout
    assert "statically linked" in out and machine in out.replace("ARM aarch64", "aarch64")


@pytest.mark.parametrize("arch", paths.ARCHES)
def test_initramfs_holds_init_agent_and_modules_in_dependency_order(arch):
    path = initramfs.build(arch)
    files = read_cpio(gzip.decompress(path.read_bytes()))
    assert files["init"][1] == initramfs.INIT.read_bytes()
    assert files["sbin/vmmd-agent"][1] == agentbuild.build(arch).read_bytes()
    assert stat.S_ISCHR(files["dev/console"][0]) and files["dev/console"][2] == (5, 1)
    order = [pathlib.PurePath(m).name for m in files["etc/vmmd/modules"][1].decode().split()]
    for m in files["etc/vmmd/modules"][1].decode().split():
        assert f"lib/modules/{m}" in files
    for before, after in [("virtio_ring.ko", "virtio.ko"), ("virtio.ko", "virtio_mmio.ko"),
                          ("vsock.ko", "vmw_vsock_virtio_transport_common.ko"),
                          ("vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko"),
                          ("virtio.ko", "virtio_blk.ko"), ("virtio.ko", "virtio-rng.ko")]:
        assert order.index(before) < order.index(after), order
    assert len(order) == len(set(order))


def test_initramfs_is_the_same_bytes_for_the_same_inputs():
    a = initramfs.archive("x86_64")
    b = initramfs.archive("x86_64")
    assert a == b
    assert initramfs.build("x86_64").name.startswith("x86_64-")


def test_bzimage_extraction_finds_the_payload_by_scanning_too():
    """An old boot header (no payload fields) falls back to scanning for the magic."""
    gk = guest_kernel_module()
    elf = b"\x7fELF" + bytes(range(256)) * 64
    lz4 = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True).stdout
    fake = b"\0" * 0x400 + lz4 + (len(elf)).to_bytes(4, "little")
    assert gk.extract_vmlinux(fake) == elf
