"""Debian's pinned guest kernels (hosts/pins.env), unpacked once into $VMMD_CACHE/boot-test:
the amd64 bzImage's ELF vmlinux (what the PVH loader boots) and the arm64 Image."""
from __future__ import annotations

import lzma
import os
import pathlib
import struct
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("VMMD_CACHE", pathlib.Path.home() / ".cache" / "vmmd"))


def pins() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (ROOT / "hosts" / "pins.env").read_text().split("\n")
                if "=" in line and not line.startswith("#"))


def hosts_dir() -> pathlib.Path:
    return CACHE / "hosts" / f"v{pins()['HOSTS_VERSION']}"


def kernel_deb(arch: str) -> pathlib.Path:
    """The pinned linux-image package (arch: amd64 or arm64) that provisioning downloaded."""
    debs, abi = hosts_dir() / "debs", pins()["KERNEL_ABI"]
    found = sorted(debs.glob(f"linux-image-{abi}-{arch}_*_{arch}.deb"))
    if not found:
        if os.environ.get("VMMD_SKIP_HOSTS") == "1":
            pytest.skip("VMMD_SKIP_HOSTS=1: the pinned Debian kernels were not downloaded")
        pytest.fail(f"no Debian {arch} kernel package in {debs} (scripts/setup.sh provisions it)")
    return found[-1]


def extract(deb: pathlib.Path, member: str) -> bytes:
    r = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO '{member}'", shell=True,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def cached(name: str, make) -> pathlib.Path:
    """Once per cache: the unpacked kernels take seconds to make and 60 MiB to keep."""
    path = CACHE / "boot-test" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(make())
        tmp.rename(path)
    return path


def vmlinux() -> pathlib.Path:
    """Debian's amd64 bzImage unpacked to its ELF vmlinux (its payload is xz)."""
    deb, abi = kernel_deb("amd64"), pins()["KERNEL_ABI"]

    def make() -> bytes:
        bz = extract(deb, f"./boot/vmlinuz-{abi}-amd64")
        setup_sects = bz[0x1F1] or 4
        offset, length = struct.unpack_from("<II", bz, 0x248)   # payload_offset/_length
        start = (setup_sects + 1) * 512 + offset
        payload = bz[start:start + length]
        assert payload[:6] == b"\xfd7zXZ\x00", "Debian's amd64 kernels are xz-compressed"
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    return cached(f"vmlinux-{abi}-amd64", make)


def arm64_image() -> pathlib.Path:
    """Debian's arm64 vmlinuz is already the uncompressed Image (with an EFI stub)."""
    deb, abi = kernel_deb("arm64"), pins()["KERNEL_ABI"]
    return cached(f"Image-{abi}-arm64", lambda: extract(deb, f"./boot/vmlinuz-{abi}-arm64"))


def busybox_initrd(deb_arch: str, init: str, modules: list[str], tmp: pathlib.Path) -> pathlib.Path:
    """A gzipped cpio: busybox, /init, and these modules of the pinned kernel's drivers/virtio in
    /mods (the init loads them); cached by the init's text."""
    import hashlib
    deb, abi = kernel_deb(deb_arch), pins()["KERNEL_ABI"]
    busybox = hosts_dir() / f"busybox-{deb_arch}" / "bin" / "busybox"

    def make() -> bytes:
        root = tmp / f"initrd-{deb_arch}"
        for d in ("bin", "proc", "sys", "dev", "mods", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "bin" / "busybox").write_bytes(busybox.read_bytes())
        (root / "bin" / "busybox").chmod(0o755)
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        mods = f"./lib/modules/{abi}-{deb_arch}/kernel/drivers/virtio"
        if modules:
            subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{root}' "
                           + " ".join(f"'{mods}/{m}.ko'" for m in modules), shell=True, check=True)
        for m in modules:
            (root / mods / f"{m}.ko").rename(root / "mods" / f"{m}.ko")
        r = subprocess.run("find . -path ./lib -prune -o -print | cpio -o -H newc --quiet | gzip -1",
                           shell=True, cwd=root, capture_output=True, check=True)
        return r.stdout
    tag = hashlib.sha256((init + " ".join(modules)).encode()).hexdigest()[:12]
    return cached(f"initrd-{abi}-{deb_arch}-{tag}.gz", make)
