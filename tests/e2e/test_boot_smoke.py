"""Debian's own kernels boot on the pure boot builders (native/arch/boot.h) inside the emulated
KVM hosts. tests/e2e/boot_smoke.c (x86_64) and boot_smoke_arm64.c are the least VMMs around the
builders: KVM, CPUID or vGICv3, a 16550, virtio-mmio windows that read as zero (so virtio_mmio's
probe of each described device says "Wrong magic value"), the ACPI sleep ports or PSCI. What the
kernel logs shows it took our entry, memory map, tables or device tree, the initrd, brought every
vCPU up, found every device where we said, and powered off cleanly.

The guest console is slow inside the emulated hosts (every byte is a nested MMIO or PIO exit),
so the kernel boots `quiet` and the init forwards the log lines that matter at a loud level.
"""
import pathlib
import re
import shlex
import subprocess

import pytest

import debian_kernels
import guests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

HERE = pathlib.Path(__file__).resolve().parent
NATIVE = HERE.parents[1] / "native"
INTERESTING = ("BIOS-e820|ACPI: (RSDP|XSDT|FACP|DSDT|APIC) |RAMDISK|smpboot: Allowing|"
               "smp: Brought up|PnP ACPI: found|ttyS0 at|virtio-mmio|ACPI: PM: \\(supports|"
               "Command line|Hypervisor detected|Machine model|psci: |GICv3: CPU|arch_timer:|"
               "rtc-pl031|WARNING|BUG|Unknown symbol|panic|Oops|error|fail")
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "<2>SMOKE: $*" > /dev/kmsg; }
for m in @MODULES@; do insmod /mods/$m.ko || say "insmod $m failed"; done
dmesg | grep -E '@INTERESTING@' | while read -r line; do say "log: $line"; done
say "nproc=$(nproc)"
say "lnro: $(ls -d /sys/bus/acpi/devices/LNRO0005:* 2>&1 | tr '\n' ' ')"
say "vmgenid: $(ls /sys/bus/acpi/drivers/vmgenid 2>&1 | tr '\n' ' ')"
say "ged: $(ls /sys/bus/platform/drivers/acpi-ged 2>&1 | tr '\n' ' ')"
sleep 2    # x86: the VMM changes the VMGenID when it sees the line above
say "fork: $(dmesg | grep -c 'virtual machine fork')"
say "rtc: $(cat /sys/class/rtc/rtc0/name 2>&1)"
say "initrd done"
poweroff -f
"""
ARCHES = {
    "x86_64": dict(deb="amd64", cc="gcc", runner="boot_smoke.c",
                   builders=("arch/x86_64/acpi.c", "arch/x86_64/boot.c"),
                   modules="virtio_ring virtio virtio_mmio", kernel=debian_kernels.vmlinux,
                   cmdline="console=ttyS0 quiet panic=-1 reboot=k"),
    "aarch64": dict(deb="arm64", cc="aarch64-linux-gnu-gcc", runner="boot_smoke_arm64.c",
                    builders=("arch/aarch64/fdt.c", "arch/aarch64/image.c"),
                    modules="virtio_mmio", kernel=debian_kernels.arm64_image,     # virtio built in
                    cmdline="console=ttyS0 quiet panic=-1"),
}


def smoke_binary(arch: str) -> pathlib.Path:
    a = ARCHES[arch]
    out = debian_kernels.CACHE / "boot-test" / f"boot_smoke-{arch}"   # next to the kernel
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([a["cc"], "-static", "-O2", "-Wall", "-D_GNU_SOURCE",
                        '-DVMM_NATIVE_VERSION="smoke"', "-I", str(NATIVE), "-o", str(out),
                        str(HERE / a["runner"]),
                        *[str(NATIVE / s) for s in ("bootdesc.c", *a["builders"])],
                        "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def smoke_initrd(arch: str, tmp: pathlib.Path) -> pathlib.Path:
    """busybox, the virtio modules of the same kernel, an init that reports and powers off."""
    a = ARCHES[arch]
    init = INIT.replace("@MODULES@", a["modules"]).replace("@INTERESTING@", INTERESTING)
    return debian_kernels.busybox_initrd(a["deb"], init, a["modules"].split(), tmp)


def boot(testhost, arch: str, tmp_path: pathlib.Path) -> str:
    host = testhost(arch)
    a = ARCHES[arch]
    binary, initrd, kernel = smoke_binary(arch), smoke_initrd(arch, tmp_path), a["kernel"]()
    cmd = " ".join(shlex.quote(str(x)) for x in (binary, kernel, initrd, a["cmdline"], 2, 256, 500))
    guests.cache_dir().mkdir(parents=True, exist_ok=True)     # testhost binds it
    # a normal run is 25-35 s; pytest's 900 s leaves room for the fixture's rerun of a broken host
    r = host.run(f"{cmd} 2>&1; echo boot_smoke_status=$?", binds=[str(binary.parent)], timeout=240)
    (tmp_path / "output.txt").write_text(r.output + "\n--- host console ---\n" + r.console)
    assert "boot_smoke_status=0" in r.output, r.output[-6000:] + r.console[-3000:]
    return r.output


def common_checks(out: str, lines):
    """The init's report; no kernel trouble anywhere in the log it forwarded."""
    assert "SMOKE: nproc=2" in out and "SMOKE: initrd done" in out
    assert "smp: Brought up 1 node, 2 CPUs" in out
    assert "Unknown symbol" not in out and "Kernel panic" not in out and "Oops" not in out
    assert not [l for l in lines if re.search(r"\bBUG\b|\berror\b|fail", l) and
                "insmod" not in l], lines
    # the one warning seen: the XSAVE size in the CPUID the emulated host's KVM reports (leaf
    # 0xd), from the runner's plain CPUID, not from what is under test; SRSO is the host CPU
    assert all("fpu__init_system_xstate" in w or "XSAVE consistency" in w or "srso" in w
               for w in re.findall(r"WARNING: .*", out)), re.findall(r"WARNING: .*", out)


def test_debian_amd64_kernel_boots_on_our_acpi_and_pvh(testhost, tmp_path):
    out = boot(testhost, "x86_64", tmp_path)
    lines = [l for l in out.splitlines() if "SMOKE: log:" in l]
    common_checks(out, lines)
    assert "Command line: " + ARCHES["x86_64"]["cmdline"] in out
    assert "Hypervisor detected: KVM" in out
    # our memory map, as the kernel read it from hvm_start_info
    assert "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable" in out
    assert "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved" in out
    assert "BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved" in out
    assert re.search(r"ACPI: RSDP 0x00000000000E0000 000024 \(v02 VMMD", out)
    for sig in ("XSDT", "FACP", "DSDT", "APIC"):
        assert re.search(rf"ACPI: {sig} 0x00000000000E0\w+ \w+ \(v0\d VMMD", out), sig
    assert "RAMDISK: [mem 0x" in out
    assert "smpboot: Allowing 2 CPUs, 0 hotplug CPUs" in out
    assert "pnp: PnP ACPI: found 1 devices" in out
    assert re.search(r"00:00: ttyS0 at I/O 0x3f8 \(irq = \d+", out)     # COM1 through PNP0501
    for i in range(3):
        assert f"virtio-mmio LNRO0005:0{i}: Wrong magic value 0x00000000!" in out, i
    assert "SMOKE: lnro: /sys/bus/acpi/devices/LNRO0005:00 /sys/bus/acpi/devices/LNRO0005:01 " \
           "/sys/bus/acpi/devices/LNRO0005:02" in out
    assert re.search(r"SMOKE: vmgenid: .*VMGENCTR:00", out)
    assert re.search(r"SMOKE: ged: .*ACPI0013:00", out)
    # new id + GSI edge -> GED _EVT -> Notify(VGEN, 0x80) -> vmgenid -> the kernel reseeds
    assert "boot_smoke: new VMGenID, GSI 9 pulsed" in out
    assert "SMOKE: fork: 1" in out
    assert "ACPI: PM: (supports S0 S5)" in out
    assert "boot_smoke: sleep control 0x34" in out and "boot_smoke: S5 power-off" in out


def test_debian_arm64_kernel_boots_on_our_fdt_and_image_placement(testhost, tmp_path):
    out = boot(testhost, "aarch64", tmp_path)
    lines = [l for l in out.splitlines() if "SMOKE: log:" in l]
    common_checks(out, lines)
    m = re.search(r"boot_smoke: Image 0x80000000-0x[0-9a-f]+, DTB (0x[0-9a-f]+) .*initrd "
                  r"(0x[0-9a-f]+)\+(\d+)", out)
    assert m and int(m.group(1), 16) == 0x80000000 + (254 << 20)
    assert "Machine model: vmmd" in out
    assert "psci: Using standard PSCI v0.2 function IDs" in out
    assert "GICv3: CPU1: found redistributor 1 region 0:0x00000000080c0000" in out
    assert re.search(r"arch_timer: cp15 timer\(s\) running at [\d.]+MHz \(virt\)", out)
    assert "40001000.uart: ttyS0 at MMIO 0x40001000" in out
    assert "rtc-pl031 40002000.rtc: registered as rtc0" in out     # primecell + apb_pclk
    assert "SMOKE: rtc: rtc-pl031 40002000.rtc" in out
    for base in ("40010000", "40011000", "40012000"):
        assert f"virtio-mmio {base}.virtio_mmio: Wrong magic value 0x00000000!" in out, base
    assert "boot_smoke: PSCI system event 1 (SYSTEM_OFF)" in out
