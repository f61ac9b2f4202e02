"""Unpacks a pinned Debian kernel package into the form a MicroVM boots (docs/guest.md):

  x86_64   vmlinux   the ELF kernel, decompressed from the bzImage's payload once (the kernel's
                     own scripts/extract-vmlinux idea, with the boot header's payload fields)
  aarch64  Image     the flat arm64 image (Debian's vmlinuz is already one; gunzipped if not)
  both     config, modules/lib/modules/<release> (depmod -b'ed), kernel.json (facts, below)

kernel.json holds what the VMM and the docs need: release, image file name, the PVH entry
(XEN_ELFNOTE_PHYS32_ENTRY, x86_64) and, for each CONFIG_ option the guest relies on, whether it
is built in ("y"), a module ("m") or missing (null).

  python3 guest_kernel.py ARCH DEB OUTDIR
"""
from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

# What the guest needs from its kernel (docs/guest.md says why each one).
CONFIG = ["VIRTIO", "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VSOCKETS",
          "VIRTIO_VSOCKETS", "HW_RANDOM_VIRTIO", "EXT4_FS", "BLK_DEV_INITRD", "RD_GZIP",
          "DEVTMPFS", "UNIX98_PTYS", "ACPI", "PVH", "X86_MPPARSE", "SERIAL_8250",
          "SERIAL_AMBA_PL011", "RTC_DRV_PL031", "VMGENID", "KVM_GUEST", "PTP_1588_CLOCK_KVM"]
XEN_ELFNOTE_PHYS32_ENTRY = 18
# Compressed-payload magics, as in scripts/extract-vmlinux; each with its Debian decompressor.
MAGICS = [(b"\x02\x21\x4c\x18", ["lz4", "-dc"]), (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
          (b"\xfd7zXZ\x00", ["xz", "-dc"]), (b"\x1f\x8b\x08", ["gzip", "-dc"])]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF inside an x86 bzImage. Boot protocol >= 2.08 says where the payload is; older
    images (or a lying header) fall back to scanning for each magic, as extract-vmlinux does."""
    candidates = []
    if bzimage[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", bzimage, 0x206)[0] >= 0x208:
        setup = ((bzimage[0x1F1] or 4) + 1) * 512
        off, length = struct.unpack_from("<II", bzimage, 0x248)
        candidates.append(bzimage[setup + off:setup + off + length])
    for magic, _ in MAGICS:
        at = bzimage.find(magic)
        if at >= 0:
            candidates.append(bzimage[at:])
    for payload in candidates:
        for magic, tool in MAGICS:
            if not payload.startswith(magic):
                continue
            # trailing bytes (the kernel appends the decompressed size) make some tools complain
            # after they have written everything: judge by the output, not the exit status
            out = subprocess.run(tool, input=payload, capture_output=True).stdout
            if out[:4] == b"\x7fELF":
                return out
    raise RuntimeError("no decompressible ELF payload in the bzImage")


def elf_notes(elf: bytes):
    """(owner, type, desc) of every note in an ELF64 little-endian file's PT_NOTE segments."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:       # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name_at = pos + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            owner = elf[name_at:name_at + namesz].rstrip(b"\0").decode(errors="replace")
            yield owner, ntype, elf[desc_at:desc_at + descsz]
            pos = desc_at + (descsz + 3) // 4 * 4


def pvh_entry(vmlinux: bytes) -> int | None:
    for owner, ntype, desc in elf_notes(vmlinux):
        if owner == "Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
            return int.from_bytes(desc[:8], "little") if len(desc) >= 4 else None
    return None


def config_facts(config_text: str) -> dict[str, str | None]:
    found = {}
    for line in config_text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line[7:].split("=", 1)
            found[k] = v
    return {k: found.get(k) for k in CONFIG}


def unpack(arch: str, deb: pathlib.Path, out: pathlib.Path) -> dict:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root = pathlib.Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        release, = os.listdir(root / "lib" / "modules")
        subprocess.run(["depmod", "-b", str(root), release], check=True)
        stage = pathlib.Path(tmp) / "out"
        (stage / "modules" / "lib" / "modules").mkdir(parents=True)
        shutil.move(str(root / "lib" / "modules" / release), stage / "modules" / "lib" / "modules")
        config = (root / "boot" / f"config-{release}").read_text()
        (stage / "config").write_text(config)
        vmlinuz = (root / "boot" / f"vmlinuz-{release}").read_bytes()
        facts = {"arch": arch, "release": release, "package": deb.name,
                 "config": config_facts(config)}
        if arch == "x86_64":
            elf = extract_vmlinux(vmlinuz)
            (stage / "vmlinux").write_bytes(elf)
            entry = pvh_entry(elf)
            facts.update(image="vmlinux", elf_entry=struct.unpack_from("<Q", elf, 0x18)[0],
                         pvh_entry=entry)
            if entry is None:
                print(f"guest kernel: WARNING {release} has no PVH entry note", file=sys.stderr)
        elif arch == "aarch64":
            image = gzip.decompress(vmlinuz) if vmlinuz[:2] == b"\x1f\x8b" else vmlinuz
            if image[0x38:0x3C] != b"ARM\x64":
                raise RuntimeError("the arm64 vmlinuz is not an arm64 Image (no ARM\\x64 magic)")
            (stage / "Image").write_bytes(image)
            facts.update(image="Image", gzipped_in_package=vmlinuz[:2] == b"\x1f\x8b",
                         text_offset=struct.unpack_from("<Q", image, 8)[0],
                         image_size=struct.unpack_from("<Q", image, 16)[0])
        else:
            raise ValueError(f"unknown arch {arch}")
        (stage / "kernel.json").write_text(json.dumps(facts, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    return facts


if __name__ == "__main__":
    arch, deb, outdir = sys.argv[1:4]
    facts = unpack(arch, pathlib.Path(deb), pathlib.Path(outdir))
    print(json.dumps({k: v for k, v in facts.items() if k != "config"}))
