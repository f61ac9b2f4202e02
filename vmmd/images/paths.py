"""Where the guest pieces live: the provisioned cache (hosts/provision.sh) and vmmd's own cache.

    $VMMD_CACHE (default ~/.cache/vmmd)
      hosts/v<HOSTS_VERSION>/guest-<arch>/   the pinned cloud kernel: vmlinux or Image, modules,
                                              config, kernel.json
      hosts/v<HOSTS_VERSION>/busybox-<deb>/   static busybox
      hosts/v<HOSTS_VERSION>/msgpack-<deb>/   msgpack-c headers and libmsgpackc.a
      guest/agent/<arch>-<hash>/vmmd-agent    built by vmmd.images.agentbuild
      guest/initramfs/<arch>-<hash>.cpio.gz   built by vmmd.images.initramfs
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARCHES = ("x86_64", "aarch64")
DEBARCH = {"x86_64": "amd64", "aarch64": "arm64"}
TRIPLET = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("VMMD_CACHE") or pathlib.Path.home() / ".cache" / "vmmd")


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "hosts" / "pins.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def provisioned() -> pathlib.Path:
    """The provisioned directory (hosts/provision.sh makes it; scripts/setup.sh runs that)."""
    d = (cache_root() / "hosts" / f"v{pins()['HOSTS_VERSION']}").resolve()
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is missing: run scripts/setup.sh (or hosts/provision.sh) "
                                "with the same VMMD_CACHE")
    return d


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHES}")
    return arch


@dataclasses.dataclass(frozen=True)
class GuestKernel:
    arch: str
    dir: pathlib.Path
    facts: dict

    @property
    def image(self) -> pathlib.Path:
        """vmlinux (x86_64, ELF with a PVH entry) or Image (aarch64)."""
        return self.dir / self.facts["image"]

    @property
    def release(self) -> str:
        return self.facts["release"]

    @property
    def modules(self) -> pathlib.Path:
        """A root with lib/modules/<release> (depmod -b'ed)."""
        return self.dir / "modules"


def guest_kernel(arch: str) -> GuestKernel:
    d = provisioned() / f"guest-{check_arch(arch)}"
    facts = json.loads((d / "kernel.json").read_text())
    return GuestKernel(arch, d, facts)


def busybox(arch: str) -> pathlib.Path:
    return provisioned() / f"busybox-{DEBARCH[check_arch(arch)]}" / "bin" / "busybox"


def msgpack_root(arch: str) -> pathlib.Path:
    return provisioned() / f"msgpack-{DEBARCH[check_arch(arch)]}"
