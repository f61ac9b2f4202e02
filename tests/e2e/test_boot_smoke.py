"""Debian's amd64 kernel boots on the pure boot builders (native/arch/boot.h) inside the emulated
x86_64 host: tests/e2e/boot_smoke.c is the least VMM around them (KVM, CPUID, a 16550, the ACPI
sleep ports, virtio-mmio windows that read as zero). What the kernel prints shows it took the
PVH entry, our memory map, MADT (every vCPU up), the DSDT (COM1 via PNP, each LNRO0005 probed by
virtio_mmio at its window, VMGenID bound, the GED), the initrd, and powered off through \\_S5.
"""
import hashlib
import pathlib
import re
import shlex
import subprocess

import pytest

import debian_kernels
import guests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HERE = pathlib.Path(__file__).resolve().parent
NATIVE = HERE.parents[1] / "native"
CMDLINE = "earlycon=uart8250,io,0x3f8 console=ttyS0 panic=-1 reboot=k"
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "SMOKE: $*" > /dev/kmsg; }
for m in virtio_ring virtio virtio_mmio; do insmod /mods/$m.ko || say "insmod $m failed"; done
say "nproc=$(nproc)"
say "lnro: $(ls -d /sys/bus/acpi/devices/LNRO0005:* | tr '\n' ' ')"
say "vmgenid: $(ls /sys/bus/acpi/drivers/vmgenid 2>&1 | tr '\n' ' ')"
say "ged: $(ls /sys/bus/platform/drivers/acpi-ged 2>&1 | tr '\n' ' ')"
say "initrd done"
poweroff -f
"""


@pytest.fixture(scope="module")
def smoke_binary():
    out = debian_kernels.CACHE / "boot-test" / "boot_smoke"     # next to the kernel: one bind
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["gcc", "-O2", "-Wall", "-D_GNU_SOURCE", '-DVMM_NATIVE_VERSION="smoke"',
                        "-I", str(NATIVE), "-o", str(out), str(HERE / "boot_smoke.c"),
                        *[str(NATIVE / s) for s in ("bootdesc.c", "arch/x86_64/acpi.c",
                                                    "arch/x86_64/boot.c", "util.c")],
                        "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def smoke_initrd(tmp_path_factory):
    """busybox, the three virtio modules of the same kernel, an init that reports and powers off."""
    deb, abi = debian_kernels.kernel_deb("amd64"), debian_kernels.pins()["KERNEL_ABI"]
    busybox = debian_kernels.hosts_dir() / "busybox-amd64" / "bin" / "busybox"

    def make() -> bytes:
        root = tmp_path_factory.mktemp("initrd")
        for d in ("bin", "proc", "sys", "dev", "mods"):
            (root / d).mkdir()
        (root / "bin" / "busybox").write_bytes(busybox.read_bytes())
        (root / "bin" / "busybox").chmod(0o755)
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        mods = f"./lib/modules/{abi}-amd64/kernel/drivers/virtio"
        subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{root}' '{mods}/virtio.ko' "
                       f"'{mods}/virtio_ring.ko' '{mods}/virtio_mmio.ko'", shell=True, check=True)
        for m in ("virtio", "virtio_ring", "virtio_mmio"):
            (root / mods / f"{m}.ko").rename(root / "mods" / f"{m}.ko")
        r = subprocess.run("find . -path ./lib -prune -o -print | cpio -o -H newc --quiet | gzip -1",
                           shell=True, cwd=root, capture_output=True, check=True)
        return r.stdout
    tag = hashlib.sha256(INIT.encode()).hexdigest()[:12]
    return debian_kernels.cached(f"smoke-initrd-{abi}-amd64-{tag}.gz", make)


def test_debian_kernel_boots_on_our_acpi_and_pvh_tables(testhost, smoke_binary, smoke_initrd):
    host = testhost("x86_64")
    debian_vmlinux = debian_kernels.vmlinux()
    cmd = " ".join(shlex.quote(str(a)) for a in
                   (smoke_binary, debian_vmlinux, smoke_initrd, CMDLINE, 2, 256, 240))
    guests.cache_dir().mkdir(parents=True, exist_ok=True)     # testhost binds it
    r = host.run(f"{cmd} 2>&1; echo boot_smoke_status=$?", binds=[str(smoke_binary.parent)],
                 timeout=420)
    out = r.output
    assert "boot_smoke_status=0" in out, out[-6000:] + r.console[-3000:]
    assert "Command line: " + CMDLINE in out
    # our memory map, as the kernel read it from hvm_start_info
    assert "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable" in out
    assert "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved" in out
    assert "BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved" in out
    assert re.search(r"ACPI: RSDP 0x00000000000E0000 000024 \(v02 VMMD", out)
    for sig in ("XSDT", "FACP", "DSDT", "APIC"):
        assert re.search(rf"ACPI: {sig} 0x00000000000E0", out), sig
    assert "RAMDISK: [mem 0x" in out
    assert "smpboot: Allowing 2 CPUs" in out and "smp: Brought up 1 node, 2 CPUs" in out
    assert "pnp: PnP ACPI: found 1 devices" in out
    assert re.search(r"00:00: ttyS0 at I/O 0x3f8 \(irq = \d+", out)     # COM1 through PNP0501
    for i, base in enumerate(("d0000000", "d0001000", "d0002000")):
        assert f"virtio-mmio LNRO0005:0{i}: Wrong magic value 0x00000000!" in out, base
    assert "SMOKE: nproc=2" in out
    assert "SMOKE: lnro: /sys/bus/acpi/devices/LNRO0005:00 /sys/bus/acpi/devices/LNRO0005:01 " \
           "/sys/bus/acpi/devices/LNRO0005:02" in out
    assert re.search(r"SMOKE: vmgenid: .*VMGENCTR:00", out)
    assert re.search(r"SMOKE: ged: .*ACPI0013:00", out)
    assert "ACPI: PM: (supports S0 S5)" in out
    assert "boot_smoke: S5 power-off" in out
    assert "Kernel panic" not in out and "BUG:" not in out and "Unknown symbol" not in out
    # The one warning seen comes from the CPUID the emulated host's KVM reports (XSAVE size of
    # leaf 0xd), not from what is under test; any other is a failure.
    warnings = re.findall(r"WARNING: .*", out)
    assert all("fpu__init_system_xstate" in w or "srso" in w for w in warnings), warnings
