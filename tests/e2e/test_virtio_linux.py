"""virtio-blk, virtio-vsock and virtio-rng under a real Linux guest (Debian's amd64 and arm64
kernels and their own drivers) in vmmd's VMM, inside the emulated hosts:
- a file written in one guest survives snapshot/restore, and appears neither in the base image,
  nor in a second guest restored from the same snapshot, nor in a guest booted from the base;
- a guest program that takes virtio-rng from its kernel and writes garbage into its queue gets the
  device marked DEVICE_NEEDS_RESET, a good request works after a reset, the VM runs on;
- vsock: host- and guest-initiated connections carry data both ways, and after a restore the
  guest's listener accepts again;
- the kernel takes virtio-rng as its hardware RNG and reads from it."""
import hashlib
import pathlib
import shlex
import subprocess

import pytest

import debian_kernels
import guests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
ROOT = pathlib.Path(__file__).resolve().parents[2]
WORK = debian_kernels.CACHE / "boot-test" / "virtio"

MODULES = [  # (directory in the kernel package, module), in load order; those built in are skipped
    ("drivers/virtio", "virtio_ring"), ("drivers/virtio", "virtio"),
    ("drivers/virtio", "virtio_mmio"), ("drivers/block", "virtio_blk"),
    ("drivers/char/hw_random", "virtio-rng"), ("lib", "crc16"), ("fs", "mbcache"),
    ("fs/jbd2", "jbd2"), ("crypto", "crc32c_generic"), ("fs/ext4", "ext4"),
    ("net/vmw_vsock", "vsock"), ("net/vmw_vsock", "vmw_vsock_virtio_transport_common"),
    ("net/vmw_vsock", "vmw_vsock_virtio_transport"),
]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "VMMD: $*" > /dev/console; }
for m in @MODULES@; do insmod /mods/$m.ko || say "insmod $m failed"; done
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt && say "mounted" || say "mount failed"
/bin/virtiotool listen 1024 > /dev/console 2>&1 &
sleep 1
say "ready"
while read -r cmd arg; do
    case "$cmd" in
    write) echo "$arg" > "/mnt/$arg.txt"; sync; say "wrote $arg" ;;
    ls) say "ls: $(ls /mnt | grep txt | tr '\n' ' ')" ;;
    cat) sync; echo 3 > /proc/sys/vm/drop_caches; say "cat $arg: $(cat /mnt/$arg.txt 2>&1)" ;;
    connect) /bin/virtiotool connect "$arg" hello-from-guest > /dev/console 2>&1 ;;
    garbage) /bin/virtiotool garbage > /dev/console 2>&1; say "garbage status $?" ;;
    rng) say "rng: $(cat /sys/devices/virtual/misc/hw_random/rng_current) \
$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')" ;;
    off) sync; umount /mnt; poweroff -f ;;
    esac
done
"""

# Runs inside the emulated host with the checkout's Python and the production module.
RUNNER = r"""
import errno, hashlib, os, select, socket, sys, time
os.environ.pop("VMMD_NATIVE", None)
from vmmd.native import VM, Backend, Device, DeviceType, VmmError
kernel, initrd, base, work, arch, CMDLINE = sys.argv[1:7]
os.makedirs(work, exist_ok=True)


def base_digest():
    with open(base, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


BASE_BEFORE = base_digest()


def devices(tag):
    return ((Device(DeviceType.VMGENID),) if arch == "x86_64" else ()) + (
            Device(DeviceType.VIRTIO_BLK, path=base, overlay=f"{work}/{tag}.overlay"),
            Device(DeviceType.VIRTIO_VSOCK, path=f"{work}/{tag}.sock", cid=3),
            Device(DeviceType.VIRTIO_RNG))


class Guest:
    def __init__(self, name, vm):
        self.name, self.vm, self.out, self.seen = name, vm, bytearray(), 0

    def pump(self, timeout):
        p = select.poll()
        p.register(self.vm.serial_fd(), select.POLLIN)
        p.poll(int(timeout * 1000))
        start = self.out.rfind(b"\n") + 1
        self.out += self.vm.serial_read()
        for line in bytes(self.out[start:self.out.rfind(b"\n") + 1]).decode(
                errors="replace").splitlines():
            if "VMMD:" in line:
                print(f"{self.name}| {line[line.index('VMMD:'):].strip()}", flush=True)

    def wait(self, text, timeout=300):
        deadline = time.monotonic() + timeout
        while True:
            i = self.out.find(text.encode(), self.seen)
            if i >= 0:
                end = self.out.find(b"\n", i)
                while end < 0 and time.monotonic() < deadline:
                    self.pump(0.2)
                    end = self.out.find(b"\n", i)
                self.seen = end + 1
                return bytes(self.out[i:end]).decode(errors="replace")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: no {text!r}: "
                                 + bytes(self.out[-3000:]).decode(errors="replace"))
            self.pump(0.2)

    def cmd(self, line, expect, timeout=120):
        self.vm.serial_write(line.encode() + b"\n")
        return self.wait("VMMD: " + expect, timeout)   # not the terminal's echo of the command

    def off(self):
        self.vm.serial_write(b"off\n")
        info = self.vm.wait(120)
        print(f"EXIT {self.name} {info.state.name} {info.reason.name}", flush=True)
        self.vm.close()


def host_connect(path, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise SystemExit(f"CONNECT {port} on {path}: closed after {line!r}")
        line += c
    assert line.startswith(b"OK "), line
    return s


def echo(path, size):
    data = os.urandom(size)
    with host_connect(path, 1024) as s:
        s.sendall(data)
        got = b""
        while len(got) < size:
            c = s.recv(65536)
            if not c:
                break
            got += c
    print(f"ECHO {path.rsplit('/', 1)[1]} {size} {'ok' if got == data else 'BAD'}", flush=True)


def guest_initiated(g, path, port):
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_{port}")
    lst.listen(1)
    lst.settimeout(120)
    g.vm.serial_write(f"connect {port}\n".encode())
    conn, _ = lst.accept()
    conn.settimeout(60)
    msg = conn.recv(100)
    conn.sendall(b"world")
    print(f"GUEST-SENT {msg.decode(errors='replace')}", flush=True)
    g.wait("VMMD: vsock reply")
    conn.close()
    lst.close()


t0 = time.monotonic()
vm = VM.create(1, 256 << 20, devices=devices("a"))
vm.load_linux(kernel, initrd, CMDLINE)
vm.start()
a = Guest("a", vm)
a.wait("VMMD: ready")
print(f"BOOT-SECONDS {time.monotonic() - t0:.1f}", flush=True)
a.cmd("write a", "wrote a")
a.cmd("rng", "rng:")
echo(f"{work}/a.sock", 200_000)
guest_initiated(a, f"{work}/a.sock", 5000)
vm.pause()
try:
    vm.snapshot(f"{work}/snap")
    snapshots = True
    print("SNAPSHOT-FILES " + " ".join(sorted(os.listdir(f"{work}/snap"))), flush=True)
except VmmError as e:   # the core cannot snapshot this arch yet: everything else still runs
    if e.errno != errno.EOPNOTSUPP:
        raise
    snapshots = False
    print(f"SNAPSHOTS-UNSUPPORTED {e}", flush=True)
vm.resume()
a.cmd("write after", "wrote after")
echo(f"{work}/a.sock", 1000)
# a hostile guest: garbage in virtio-rng's queue; the VMM lives on and so do the other devices
a.cmd("garbage", "garbage status", timeout=180)
print(f"AFTER-GARBAGE {vm.state.name}", flush=True)
a.cmd("cat after", "cat after:")
echo(f"{work}/a.sock", 1000)
a.off()

for tag in ("c1", "c2") if snapshots else ():
    copy = VM.restore(f"{work}/snap", Backend.MMAP, devices=devices(tag))
    copy.start()
    g = Guest(tag, copy)
    g.cmd("cat a", "cat a:")
    g.cmd("ls", "ls:")
    echo(f"{work}/{tag}.sock", 50_000)
    guest_initiated(g, f"{work}/{tag}.sock", 6000)
    g.cmd(f"write {tag}", f"wrote {tag}")
    g.off()

fresh = VM.create(1, 256 << 20, devices=devices("b"))
fresh.load_linux(kernel, initrd, CMDLINE)
fresh.start()
b = Guest("b", fresh)
b.wait("VMMD: ready")
b.cmd("ls", "ls:")
b.off()
print(f"BASE {'unchanged' if base_digest() == BASE_BEFORE else 'CHANGED'}", flush=True)
"""


ARCHES = {
    "x86_64": dict(deb="amd64", kernel=debian_kernels.vmlinux, cc="gcc",
                   cmdline="console=ttyS0 quiet panic=-1 reboot=k pci=off"),
    "aarch64": dict(deb="arm64", kernel=debian_kernels.arm64_image, cc="aarch64-linux-gnu-gcc",
                    cmdline="console=ttyS0 quiet panic=-1"),
}


def initrd(arch: str) -> pathlib.Path:
    a = ARCHES[arch]
    deb, abi = debian_kernels.kernel_deb(a["deb"]), debian_kernels.pins()["KERNEL_ABI"]
    busybox = debian_kernels.hosts_dir() / f"busybox-{a['deb']}" / "bin" / "busybox"
    src = ROOT / "tests" / "guests" / "virtio_linux.c"
    base = f"./lib/modules/{abi}-{a['deb']}/kernel"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    mods = [(d, m) for d, m in MODULES if f"{base}/{d}/{m}.ko\n" in listing]
    init = INIT.replace("@MODULES@", " ".join(m for _, m in mods))
    tag = hashlib.sha256((init + src.read_text()).encode()).hexdigest()[:12]
    out = WORK / f"initrd-{abi}-{a['deb']}-{tag}.gz"
    if out.exists():
        return out
    root = WORK / f"root-{tag}"
    for d in ("bin", "proc", "sys", "dev", "mods", "mnt", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "bin" / "busybox").write_bytes(busybox.read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    subprocess.run([a["cc"], "-static", "-O2", "-o", str(root / "bin" / "virtiotool"), str(src)],
                   check=True)
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    members = " ".join(f"'{base}/{d}/{m}.ko'" for d, m in mods)
    subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{root}' {members}", shell=True,
                   check=True)
    for d, m in mods:
        (root / base / d / f"{m}.ko").rename(root / "mods" / f"{m}.ko")
    r = subprocess.run("find . -path ./lib -prune -o -print | cpio -o -H newc --quiet | gzip -1",
                       shell=True, cwd=root, capture_output=True, check=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(r.stdout)
    tmp.rename(out)
    return out


def base_image() -> pathlib.Path:
    out = WORK / "base.ext4"
    if not out.exists():
        tree = WORK / "base-tree"
        tree.mkdir(parents=True, exist_ok=True)
        (tree / "base.txt").write_text("from the base image\n")
        tmp = WORK / "base.ext4.tmp"
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^metadata_csum", "-d", str(tree),
                        str(tmp), "64M"], check=True)
        tmp.rename(out)
    return out


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_linux_guest_disk_vsock_and_rng_across_snapshot_and_restore(testhost, tmp_path, arch):
    WORK.mkdir(parents=True, exist_ok=True)
    kernel, rd, base = ARCHES[arch]["kernel"](), initrd(arch), base_image()
    base_digest = hashlib.sha256(base.read_bytes()).hexdigest()
    runner = WORK / "virtio_runner.py"
    runner.write_text(RUNNER)
    guests.cache_dir().mkdir(parents=True, exist_ok=True)
    host = testhost(arch)
    import hosts
    cmd = " ".join(shlex.quote(str(x)) for x in (hosts.python(arch), runner, kernel, rd, base,
                                                "/tmp/virtio", arch, ARCHES[arch]["cmdline"]))
    r = host.run(f"cd {shlex.quote(str(ROOT))} && {cmd} 2>&1; echo runner_status=$?",
                 binds=[str(WORK.parent)], timeout=400)    # kernels and WORK; normal: 45-130 s
    out = r.output
    (tmp_path / "output.txt").write_text(out + "\n--- host console ---\n" + r.console)
    assert "runner_status=0" in out, out[-6000:] + r.console[-3000:]
    assert "insmod" not in out and "mount failed" not in out, out
    # snapshots of arm64 VMs come with another branch; until then the arm64 run checks the
    # devices without restores, and takes them up by itself once the core can snapshot
    restores = ("c1", "c2")
    if arch == "aarch64" and "SNAPSHOTS-UNSUPPORTED" in out:
        restores = ()
    else:
        assert "SNAPSHOT-FILES memory virtio-blk.0.disk vmstate" in out, out
    # disk: the write is in the snapshot's restores, nowhere else
    for tag in restores:
        assert f"{tag}| VMMD: cat a: a" in out, out
        assert f"{tag}| VMMD: ls: a.txt base.txt" in out, out          # no after.txt, no c1.txt
    assert "b| VMMD: ls: base.txt" in out, out                           # booted from the base
    assert "BASE unchanged" in out and hashlib.sha256(base.read_bytes()).hexdigest() == base_digest
    # vsock: both directions, in the original and after each restore
    for tag in ("a", *restores):
        assert f"ECHO {tag}.sock" in out and "BAD" not in out, out
    assert out.count("GUEST-SENT hello-from-guest") == 1 + len(restores), out
    assert out.count("VMMD: vsock reply world") == 1 + len(restores), out
    # a guest writing garbage into a queue: the device is refused and works again after a reset,
    # the VM runs on (disk and vsock too)
    assert "a| VMMD: garbage refused 4 of 4, then a good request served" in out, out
    assert "a| VMMD: garbage status 0" in out and "AFTER-GARBAGE RUNNING" in out, out
    assert "a| VMMD: cat after: after" in out, out
    # rng: the kernel's hwrng is ours
    assert "a| VMMD: rng: virtio_rng.0 " in out, out
    for tag in ("a", *restores, "b"):
        assert f"EXIT {tag} STOPPED SHUTDOWN" in out, out
