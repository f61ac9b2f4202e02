"""The boot-time builders (native/arch/boot.h) against the real tools and the real kernels.

tests/unit/c/test_boot.c runs the builders in plain C (ASan + UBSan) with hostile input and dumps
the ACPI tables and device trees it made; here those dumps go through the tools the kernel's own
developers use: ACPICA's `iasl` (disassemble, recompile to the same bytes) and `acpiexec` (load the
namespace and run the AML), and `dtc`. The ELF and Image loaders are fed Debian's own kernels,
and every source must also compile for aarch64.
"""
import importlib.util
import pathlib
import re
import shutil
import struct
import subprocess

import pytest

import debian_kernels

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
SOURCES = ["bootdesc.c", "arch/x86_64/acpi.c", "arch/x86_64/boot.c", "arch/aarch64/fdt.c",
           "arch/aarch64/image.c"]
CPUS = (1, 2, 16)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed (scripts/setup.sh installs acpica-tools and "
                    f"device-tree-compiler)")
    return path


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def boot_binary(tmp_path_factory):
    tool("gcc")
    out = tmp_path_factory.mktemp("boot") / "test_boot"
    cmd = ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE",
           '-DVMM_NATIVE_VERSION="test"', "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-I", str(NATIVE), "-o", str(out),
           str(pathlib.Path(__file__).parent / "c" / "test_boot.c"),
           *[str(NATIVE / s) for s in SOURCES], "-lpthread"]
    r = run(cmd)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def dumps(boot_binary, tmp_path_factory):
    out = tmp_path_factory.mktemp("dumps")
    r = run([str(boot_binary), "run", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].endswith(" 0 failed"), r.stdout
    return out


def test_boot_builders_pass_their_c_tests_under_sanitizers(dumps):
    assert sorted(p.name for p in dumps.iterdir()) == sorted(
        [f"acpi-{n}" for n in CPUS] + [f"fdt-{n}.dtb" for n in CPUS])


def cross_cc() -> str:
    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.fail("aarch64-linux-gnu-gcc is needed (hosts/provision.sh installs it)")
    return cc


def test_boot_sources_cross_compile_for_aarch64(tmp_path):
    for src in SOURCES:
        r = run([cross_cc(), "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE",
                 '-DVMM_NATIVE_VERSION="x"', "-I", str(NATIVE), "-c", str(NATIVE / src),
                 "-o", str(tmp_path / "x.o")])
        assert r.returncode == 0, f"{src}:\n{r.stderr}"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_boot_sources_are_picked_up_and_link_in_each_arch_build(arch, tmp_path, monkeypatch):
    """native/build.py selects the files by directory; what it selects for an arch must hold
    every boot file of that arch, and they must need nothing but libc and vmm_err."""
    monkeypatch.setenv("VMMD_TARGET_ARCH", arch)
    spec = importlib.util.spec_from_file_location(f"build_{arch}", NATIVE / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    ours = [s for s in SOURCES if "/" not in s or f"/{arch}/" in s]
    assert all(f"native/{s}" in build.SOURCES for s in ours), build.SOURCES
    cc = "gcc" if arch == "x86_64" else cross_cc()
    sink = tmp_path / "sink.c"            # vmm_err is all they may need from the rest
    sink.write_text("int vmm_err(int err, const char *fmt, ...) { (void)fmt; return -err; }\n")
    r = run([cc, "-std=gnu11", "-O2", "-shared", "-fPIC", "-Wl,--no-undefined", "-D_GNU_SOURCE",
             '-DVMM_NATIVE_VERSION="x"', "-I", str(NATIVE), "-o", str(tmp_path / "boot.so"),
             *[str(NATIVE / s) for s in ours], str(sink)])
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------- ACPI

def disassemble(table: pathlib.Path) -> str:
    r = run([tool("iasl"), "-d", table.name], cwd=table.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rror" not in r.stdout + r.stderr and "arning" not in r.stdout + r.stderr, r.stdout
    return table.with_suffix(".dsl").read_text()


def checksum_ok(data: bytes) -> bool:
    return sum(data) % 256 == 0


@pytest.mark.parametrize("vcpus", CPUS)
def test_acpi_rsdp_points_through_xsdt_to_fadt_and_madt(dumps, vcpus):
    d = dumps / f"acpi-{vcpus}"
    rsdp = (d / "rsdp.dat").read_bytes()
    # iasl cannot read a bare RSDP from a file; check it by hand: both checksums, v2, XSDT
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2 and len(rsdp) == 36
    assert checksum_ok(rsdp[:20]) and checksum_ok(rsdp)
    xsdt_gpa = struct.unpack_from("<Q", rsdp, 24)[0]
    assert xsdt_gpa % 16 == 0 and 0xE0000 < xsdt_gpa < 0x100000
    dsl = disassemble(d / "xsdt.dat")
    entries = re.findall(r"ACPI Table Address\s+\d+ : ([0-9A-F]{16})", dsl)
    assert len(entries) == 2 and all(0xE0000 < int(e, 16) < 0x100000 for e in entries)


@pytest.mark.parametrize("vcpus", CPUS)
def test_acpi_madt_has_a_local_apic_per_vcpu_and_the_ioapic(dumps, vcpus):
    dsl = disassemble(dumps / f"acpi-{vcpus}" / "apic.dat")
    assert "Incorrect checksum" not in dsl
    assert re.search(r"Local Apic Address : FEE00000", dsl)
    ids = re.findall(r"Local Apic ID : ([0-9A-F]{2})", dsl)
    assert [int(i, 16) for i in ids] == list(range(vcpus))
    assert len(re.findall(r"Processor Enabled : 1", dsl)) == vcpus
    assert re.search(r"Subtable Type : 01 \[I/O APIC\]", dsl)
    assert re.search(r"Address : FEC00000\n.*Interrupt : 00000000", dsl)
    assert "PC-AT Compatibility : 0" in dsl


@pytest.mark.parametrize("vcpus", CPUS)
def test_acpi_fadt_is_hardware_reduced_with_sleep_registers(dumps, vcpus):
    dsl = disassemble(dumps / f"acpi-{vcpus}" / "facp.dat")
    assert "Incorrect checksum" not in dsl
    for flag in ("Hardware Reduced (V5) : 1", "VGA Not Present (V4) : 1",
                 "CMOS RTC Not Present (V5) : 1", "Legacy Devices Supported (V2) : 0",
                 "8042 Present on ports 60/64 (V2) : 0", "FADT Minor Revision : 05"):
        assert flag in dsl, flag
    assert re.search(r"Revision : 06", dsl)
    # X_DSDT inside the table area; the sleep control/status registers are I/O ports 0x600/0x601
    dsdt = re.findall(r"DSDT Address : ([0-9A-F]+)", dsl)
    assert int(dsdt[-1], 16) >= 0xE0000
    assert re.search(r"Sleep Control Register.*?Space ID : 01.*?Address : 0000000000000600",
                     dsl, re.S)
    assert re.search(r"Sleep Status Register.*?Space ID : 01.*?Address : 0000000000000601",
                     dsl, re.S)


def test_acpi_dsdt_lists_every_device_with_its_resources(dumps):
    dsl = disassemble(dumps / "acpi-2" / "dsdt.dat")
    assert "Incorrect checksum" not in dsl
    devices = re.findall(r"Device \((\w+)\)", dsl)
    assert devices == ["COM1", "V000", "V001", "V002", "VGEN", "GED0"]
    assert dsl.count('Name (_HID, "LNRO0005")') == 3
    for i in range(3):
        assert re.search(
            rf'Device \(V00{i}\)\s*\{{\s*Name \(_HID, "LNRO0005"\).*?'
            rf"Memory32Fixed \(ReadWrite,\s*0xD000{i}000,\s*// Address Base\s*"
            rf"0x00000200,.*?Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)"
            rf"\s*\{{\s*0x0000000{5 + i},", dsl, re.S), f"V00{i}"
    assert re.search(r'EisaId \("PNP0501"\).*?IO \(Decode16,\s*0x03F8,\s*// Range Minimum'
                     r'.*?0x08,\s*// Length.*?\{\s*0x00000004,', dsl, re.S)
    assert re.search(r'"VMGENCTR".*?_CID, "VM_Gen_Counter".*?Name \(ADDR, Package \(0x02\)'
                     r'\s*\{\s*0x0009FC00,\s*Zero', dsl, re.S)
    assert re.search(r'"ACPI0013".*?\{\s*0x00000009,.*?Method \(_EVT, 1, Serialized\).*?'
                     r'If \(\(Arg0 == 0x09\)\)\s*\{\s*Notify \(\\_SB\.VGEN, 0x80\)', dsl, re.S)
    assert re.search(r"Name \(_S5, Package \(0x04\)[^\n]*\n\s*\{\s*0x05,", dsl)


@pytest.mark.parametrize("vcpus", CPUS)
def test_acpi_tables_recompile_to_the_same_bytes(dumps, vcpus, tmp_path):
    """Disassemble with iasl, compile back without optimizations: byte for byte what we built
    (bar the compiler id in the header). The only waived diagnostic is 6035: iasl wants an _HID
    of four letters and four hex digits, and Linux's vmgenid driver matches "VMGENCTR"."""
    d = dumps / f"acpi-{vcpus}"
    for name in ("dsdt", "facp", "apic", "xsdt"):
        disassemble(d / f"{name}.dat")
        shutil.copy(d / f"{name}.dsl", tmp_path / f"{name}.dsl")
        flags = ["-oa", "-vw", "6035"] if name == "dsdt" else []
        r = run([tool("iasl"), *flags, f"{name}.dsl"], cwd=tmp_path)
        assert r.returncode == 0 and "0 Errors, 0 Warnings" in r.stdout, r.stdout + r.stderr
        ours, theirs = (d / f"{name}.dat").read_bytes(), (tmp_path / f"{name}.aml").read_bytes()
        assert ours[:9] == theirs[:9] and ours[10:28] == theirs[10:28], name   # sig ... OEM rev
        assert ours[36:] == theirs[36:], name
        assert checksum_ok(ours) and checksum_ok(theirs)


def test_acpi_namespace_loads_and_vmgenid_notify_runs(dumps):
    """ACPICA's own interpreter loads our DSDT (via our FADT) and evaluates it."""
    d = dumps / "acpi-16"
    cmds = r"evaluate \_SB.V002._CRS; evaluate \_SB.VGEN.ADDR; evaluate \_SB.GED0._EVT 9; " \
           r"evaluate \_SB.GED0._EVT 5; evaluate \_S5"
    r = run([tool("acpiexec"), "-b", cmds, "dsdt.dat", "facp.dat", "apic.dat"], cwd=d)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "successfully acquired and loaded" in out and "6 Devices" in out
    assert not re.search(r"\b(Error|Exception|AE_[A-Z_]+)\b", out.replace("AE_OK", "")), out
    # _CRS: Memory32Fixed 0xD0002000+0x200, Extended IRQ edge/high/exclusive GSI 7, end tag
    assert "86 09 00 01 00 20 00 D0 00 02 00 00 89 06 00 03" in out
    assert "01 07 00 00 00 79 00" in out
    assert re.search(r"\[Integer\] = 000000000009FC00\s+\[Integer\] = 0000000000000000", out)
    # _EVT(9) notifies VGEN once; _EVT(5) does nothing
    assert out.count("Received a Device Notify on [VGEN]") == 1
    assert "Value 0x80" in out
    assert "ACPI: No outstanding allocations" in out or "Outstanding allocations" in out


# ---------------------------------------------------------------------------- FDT

def decompile(dtb: pathlib.Path) -> str:
    r = run([tool("dtc"), "-I", "dtb", "-O", "dts", str(dtb)])
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr          # dtc's checks: no warnings at all
    return r.stdout


def node(dts: str, name: str) -> str:
    m = re.search(rf"\n\t+{re.escape(name)} \{{\n(.*?)\n\t+\}};", dts, re.S)
    assert m, f"no node {name}"
    return m.group(1)


@pytest.mark.parametrize("vcpus", CPUS)
def test_fdt_decompiles_with_every_node_linux_needs(dumps, vcpus):
    dts = decompile(dumps / f"fdt-{vcpus}.dtb")
    assert re.search(r'compatible = "linux,dummy-virt";\s*model = "vmmd";\s*'
                     r'#address-cells = <0x02>;\s*#size-cells = <0x02>;\s*'
                     r'interrupt-parent = <0x01>;', dts)
    cpus = re.findall(r"cpu@([0-9a-f]+) \{\s*device_type = \"cpu\";\s*compatible = "
                      r"\"arm,arm-v8\";\s*enable-method = \"psci\";\s*reg = <0x00 (0x[0-9a-f]+)>",
                      dts)
    # KVM's MPIDRs: Aff0 counts to 15, then Aff1
    assert [int(r, 16) for _, r in cpus] == [(i >> 4) << 8 | (i & 15) for i in range(vcpus)]
    assert all(int(u, 16) == int(r, 16) for u, r in cpus)
    assert "reg = <0x00 0x80000000 0x00 0x20000000>;" in node(dts, "memory@80000000")
    chosen = node(dts, "chosen")
    assert 'bootargs = "console=ttyS0 panic=1";' in chosen
    assert "linux,initrd-start = <0x00 0x9f000000>;" in chosen
    assert "linux,initrd-end = <0x00 0x9f123456>;" in chosen
    assert 'stdout-path = "serial0";' in chosen and "rng-seed = <" in chosen
    assert 'serial0 = "/uart@40001000";' in node(dts, "aliases")
    gic = node(dts, "intc@8000000")
    assert 'compatible = "arm,gic-v3";' in gic and "interrupt-controller;" in gic
    assert "#interrupt-cells = <0x03>;" in gic and "phandle = <0x01>;" in gic
    assert f"reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 {hex(0x20000 * vcpus)}>;" in gic
    timer = node(dts, "timer")
    assert 'compatible = "arm,armv8-timer";' in timer
    assert "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;" in timer
    psci = node(dts, "psci")
    assert 'compatible = "arm,psci-0.2";' in psci and 'method = "hvc";' in psci
    clk = node(dts, "apb-pclk")
    assert 'compatible = "fixed-clock";' in clk and "phandle = <0x02>;" in clk
    uart = node(dts, "uart@40001000")
    assert 'compatible = "ns16550a";' in uart and "clock-frequency = <0x1c2000>;" in uart
    assert "interrupts = <0x00 0x01 0x04>;" in uart            # SPI 1, level high
    rtc = node(dts, "rtc@40002000")
    assert 'compatible = "arm,pl031\\0arm,primecell";' in rtc
    assert "clocks = <0x02>;" in rtc and 'clock-names = "apb_pclk";' in rtc
    for i in range(3):
        v = node(dts, f"virtio_mmio@4001{i}000")
        assert 'compatible = "virtio,mmio";' in v and "dma-coherent;" in v
        assert f"reg = <0x00 0x4001{i}000 0x00 0x200>;" in v
        assert f"interrupts = <0x00 {hex(16 + i)} 0x01>;" in v  # SPI, edge rising


def test_fdt_round_trips_through_dtc(dumps, tmp_path):
    """dtc reads our blob, writes its own from the source; both decompile to the same tree.
    (Decompiled source has numbers where labels were, so dtc's clocks check is off for it.)"""
    dts = decompile(dumps / "fdt-16.dtb")
    (tmp_path / "t.dts").write_text(dts)
    r = run([tool("dtc"), "-I", "dts", "-O", "dtb", "-W", "no-clocks_property",
             "-o", str(tmp_path / "t.dtb"), str(tmp_path / "t.dts")])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert decompile(tmp_path / "t.dtb") == dts


# ---------------------------------------------------------------------------- real kernels

@pytest.fixture(scope="module")
def debian_vmlinux() -> pathlib.Path:
    return debian_kernels.vmlinux()


@pytest.fixture(scope="module")
def debian_arm64_image() -> pathlib.Path:
    return debian_kernels.arm64_image()


def test_elf_loader_finds_the_pvh_entry_of_debians_kernel(boot_binary, debian_vmlinux):
    r = run([str(boot_binary), "vmlinux", str(debian_vmlinux)])
    assert r.returncode == 0, r.stdout + r.stderr
    got = dict(kv.split("=") for kv in r.stdout.splitlines()[0].split())
    # what binutils says: the Xen note of type 0x12 and the PT_LOAD extent
    notes = run(["readelf", "-n", str(debian_vmlinux)]).stdout
    m = re.search(r"Xen\s+0x0+8\s+Unknown note type: \(0x00000012\)\s+description data: "
                  r"((?:[0-9a-f]{2} ){8})", notes)
    assert m, notes
    assert int(got["pvh_entry"], 16) == int.from_bytes(bytes.fromhex(m.group(1)), "little")
    phdrs = run(["readelf", "-lW", str(debian_vmlinux)]).stdout
    loads = [(int(p, 16), int(s, 16)) for p, s in re.findall(
        r"LOAD\s+0x[0-9a-f]+ 0x[0-9a-f]+ (0x[0-9a-f]+) 0x[0-9a-f]+ (0x[0-9a-f]+)", phdrs)]
    assert int(got["lo"], 16) == min(p for p, _ in loads) == 0x1000000   # Debian: 16 MiB
    assert int(got["hi"], 16) == max(p + s for p, s in loads)
    entry = re.search(r"Entry point address:\s+(0x[0-9a-f]+)",
                      run(["readelf", "-h", str(debian_vmlinux)]).stdout).group(1)
    assert int(got["entry64"], 16) == int(entry, 16)


def test_image_loader_places_debians_arm64_kernel(boot_binary, debian_arm64_image):
    data = debian_arm64_image.read_bytes()
    text_offset, image_size, flags = struct.unpack_from("<QQQ", data, 8)
    assert data[56:60] == b"ARM\x64"
    r = run([str(boot_binary), "image", str(debian_arm64_image)])
    assert r.returncode == 0, r.stdout + r.stderr
    got = {k: int(v, 16) for k, v in (kv.split("=") for kv in r.stdout.splitlines()[0].split())}
    assert got["kernel"] == 0x80000000 + text_offset and got["pc"] == got["kernel"]
    assert got["end"] == got["kernel"] + image_size
    # DTB: last 2 MiB block of the 256 MiB RAM; initrd (8 MiB) right below it; x0 = DTB
    assert got["dtb"] == 0x80000000 + (254 << 20) == got["x0"]
    assert got["initrd"] == got["dtb"] - (8 << 20) and got["initrd"] >= got["end"]
