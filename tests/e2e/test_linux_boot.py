"""Stock Debian kernels boot in vmmd's own VMM (the production native module) inside the emulated
KVM hosts: every vCPU comes up, the devices are found where the core put them, `poweroff` ends the
VM with the right reason; on x86_64 a booted, ticking guest is snapshotted and a restored copy
goes on ticking in a new VM generation (VMGenID: the copy's kernel reseeds its RNG)."""
import pathlib
import re
import shlex

import pytest

import debian_kernels
import guests

# a normal run is 1-3 minutes; the host's timeout leaves room for one rerun of a hung host
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1300)]
ROOT = pathlib.Path(__file__).resolve().parents[2]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "VMMD: $*" > /dev/console; }
for m in @MODULES@; do insmod /mods/$m.ko || say "insmod $m failed"; done
say "nproc=$(nproc) arch=$(uname -m)"
say "lnro: $(ls /sys/bus/acpi/devices 2>/dev/null | grep -c LNRO0005)"
say "vmgenid: $(ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | grep -c VMGENCTR)"
say "rtc: $(cat /sys/class/rtc/rtc0/name 2>/dev/null)"
if grep -q vmmd.busy /proc/cmdline; then          # every vCPU spinning in user space
    for c in $(seq $(nproc)); do (while :; do :; done) & done
fi
i=0
while [ $i -lt @TICKS@ ]; do say "tick $i"; i=$((i + 1)); sleep 0.5; done
say "fork: $(dmesg | grep -c 'virtual machine fork')"
say "done"
poweroff -f
"""

# Runs inside the emulated host with the checkout's Python and module.
RUNNER = r"""
import os, select, sys, time
os.environ.pop("VMMD_NATIVE", None)           # the production module
from vmmd import irqview
from vmmd.native import VM, Backend, Device, DeviceType, State
kernel, initrd, cmdline, arch, snap, cycles = sys.argv[1:7]
cycles = int(cycles)
devs = (Device(DeviceType.VMGENID),) if arch == "x86_64" else ()


def pump(vms, until, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the state is read before the drain, so all an ended VM printed is read below
        ended = [n for n, (vm, out) in vms.items() if vm.state in (State.STOPPED, State.FAILED)]
        p = select.poll()
        for name, (vm, out) in vms.items():
            p.register(vm.serial_fd(), select.POLLIN)
        if not ended:
            p.poll(200)
        for name, (vm, out) in vms.items():
            start = out.rfind(b"\n") + 1
            while chunk := vm.serial_read():
                out += chunk
                if name not in ended:
                    break
            for line in bytes(out[start:out.rfind(b"\n") + 1]).decode(errors="replace").splitlines():
                if "VMMD:" in line:
                    print(f"{name}| {line.strip()}", flush=True)
        if all(until(name, out) for name, (vm, out) in vms.items()):
            return True
        ended = [n for n in ended if not until(n, vms[n][1])]
        for n in ended:         # it will never print what we wait for: say how it ended
            info = vms[n][0].wait(0)
            print(f"ENDED {n} {info.state.name} {info.reason.name} {info.message}", flush=True)
        if ended:
            return False
    return False


vm = VM.create(2, 256 << 20, track_dirty=True, devices=devs)
t0 = time.monotonic()
vm.load_linux(kernel, initrd, cmdline)
vm.start()
vms = {"orig": (vm, bytearray())}


def diagnose(v):
    print("STATS", v.stats(), flush=True)
    if arch != "x86_64":
        return
    try:
        v.pause()
        print(irqview.describe(v.state_blob(), {}), flush=True)
    except Exception as e:      # noqa: BLE001 - diagnostics only
        print("DIAGNOSE", e, flush=True)


if not pump(vms, lambda n, o: b"VMMD: tick 3" in o, 300):
    diagnose(vm)
    raise SystemExit("no tick 3: " + bytes(vms["orig"][1][-3000:]).decode(errors="replace"))
print(f"BOOT-SECONDS {time.monotonic() - t0:.1f}", flush=True)
if cycles:                      # pause + snapshot a busy guest, again and again
    times = []
    for i in range(cycles):
        t = time.monotonic()
        vm.pause()
        vm.snapshot(f"{snap}-{i}", diff=i > 0)
        vm.resume()
        times.append(time.monotonic() - t)
        assert pump(vms, lambda n, o: o.count(b"VMMD: tick") > i + 4, 60), f"no tick after cycle {i}"
    print(f"CYCLES {cycles} median {sorted(times)[len(times) // 2] * 1000:.0f} ms", flush=True)
    copy = VM.restore(f"{snap}-{cycles - 1}", Backend.MMAP, devices=devs)
    copy.start()
    vms["copy"] = (copy, bytearray())
elif arch == "x86_64":
    t = time.monotonic()
    vm.pause()
    vm.snapshot(snap)
    vm.resume()
    copy = VM.restore(snap, Backend.MMAP, devices=devs)
    copy.start()
    print(f"SNAPSHOT-RESTORE-SECONDS {time.monotonic() - t:.3f}", flush=True)
    vms["copy"] = (copy, bytearray())
pump(vms, lambda n, o: b"VMMD: done" in o, 300)
for name, (v, out) in vms.items():
    info = v.wait(60)
    print(f"EXIT {name} {info.state.name} {info.reason.name} {info.message}", flush=True)
"""

ARCHES = {
    "x86_64": dict(deb="amd64", kernel=debian_kernels.vmlinux,
                   modules="virtio_ring virtio virtio_mmio",
                   cmdline="console=ttyS0 quiet panic=-1 reboot=k pci=off"),
    "aarch64": dict(deb="arm64", kernel=debian_kernels.arm64_image, modules="virtio_mmio",
                    cmdline="console=ttyS0 quiet panic=-1"),
}


def run(testhost, arch, tmp_path, cycles=0, busy=False) -> str:
    a = ARCHES[arch]
    init = INIT.replace("@MODULES@", a["modules"]).replace("@TICKS@", str(40 if cycles else 12))
    initrd = debian_kernels.busybox_initrd(a["deb"], init, a["modules"].split(), tmp_path)
    kernel = a["kernel"]()
    runner = debian_kernels.CACHE / "boot-test" / "linux_boot_runner.py"
    runner.write_text(RUNNER)
    guests.cache_dir().mkdir(parents=True, exist_ok=True)       # testhost binds it
    host = testhost(arch)
    import hosts
    cmdline = a["cmdline"] + (" vmmd.busy" if busy else "")
    cmd = " ".join(shlex.quote(str(x)) for x in (
        hosts.python(arch), runner, kernel, initrd, cmdline, arch, "/tmp/snap", cycles))
    script = f"cd {shlex.quote(str(ROOT))} && {cmd} 2>&1; echo runner_status=$?"
    r = host.run(script, binds=[str(runner.parent)], timeout=480)
    (tmp_path / "output.txt").write_text(r.output + "\n--- host console ---\n" + r.console)
    assert "runner_status=0" in r.output, r.output[-6000:] + r.console[-3000:]
    return r.output


def test_debian_amd64_kernel_boots_snapshots_and_restores_in_vmmd(testhost, tmp_path):
    out = run(testhost, "x86_64", tmp_path)
    assert "orig| VMMD: nproc=2 arch=x86_64" in out, out
    assert "orig| VMMD: vmgenid: 1" in out, out
    assert "orig| VMMD: tick 11" in out and "copy| VMMD: tick 11" in out, out
    # the copy took over mid-count: it printed ticks the original printed too, from the middle
    copy_ticks = [int(t) for t in re.findall(r"copy\| VMMD: tick (\d+)", out)]
    assert copy_ticks and copy_ticks[0] > 3 and copy_ticks == list(range(copy_ticks[0], 12)), out
    assert "orig| VMMD: fork: 0" in out and "copy| VMMD: fork: 1" in out, out
    assert re.search(r"EXIT orig STOPPED SHUTDOWN .*powered off", out), out
    assert re.search(r"EXIT copy STOPPED SHUTDOWN .*powered off", out), out


def test_debian_arm64_kernel_boots_and_powers_off_in_vmmd(testhost, tmp_path):
    out = run(testhost, "aarch64", tmp_path)
    assert "orig| VMMD: nproc=2 arch=aarch64" in out, out
    assert "orig| VMMD: rtc: rtc-pl031" in out, out
    assert "orig| VMMD: tick 11" in out, out
    assert re.search(r"EXIT orig STOPPED SHUTDOWN .*SYSTEM_OFF", out), out


def test_busy_amd64_guest_pauses_and_snapshots_20_times_in_a_row(testhost, tmp_path):
    """Pause is how every snapshot starts: with every vCPU spinning it must work every time."""
    out = run(testhost, "x86_64", tmp_path, cycles=20, busy=True)
    assert "CYCLES 20" in out, out
    assert "orig| VMMD: tick 39" in out and "copy| VMMD: tick 39" in out, out
    assert re.search(r"EXIT copy STOPPED SHUTDOWN", out), out
