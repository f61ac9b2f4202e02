"""Host memory: per-VM overhead beyond guest pages, and page sharing between restored VMs.

Guest memory is told apart from the rest by its mapping: the snapshot's memory file (mmap
backend) or an anonymous mapping of exactly the guest's size (uffd backend; its handler's
read-only view of the memory file is page cache, counted with the rest). Kernel-side cost
(KVM's page tables, slab) comes from /proc/meminfo deltas over the same interval.
Targets: overhead at most 5 MiB a VM; twenty mmap-restored readers cost about one copy.
"""
import time

import pytest

from conftest import devices, report
from vmmd.native import VM, Backend

MEM = 256 << 20
KERNEL_FIELDS = ("SUnreclaim", "PageTables", "SecPageTables", "KernelStack")


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def mappings():
    """(start, end, path, {field: bytes}) for every VMA of this process."""
    vmas, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                a, b = (int(x, 16) for x in head[0].split("-"))
                cur = (a, b, head[5] if len(head) > 5 else "", {})
                vmas.append(cur)
            elif head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
                cur[3][head[0][:-1]] = int(head[1]) * 1024
    return vmas


def split_pss(memory_file: str, guest_size: int, backend: Backend):
    """(guest Pss, guest Rss, other Pss) of this process, in bytes."""
    g_pss = g_rss = other = 0
    for a, b, path, f in mappings():
        guest = path == memory_file if backend == Backend.MMAP else (not path and b - a == guest_size)
        if guest:
            g_pss += f.get("Pss", 0)
            g_rss += f.get("Rss", 0)
        else:
            other += f.get("Pss", 0)
    return g_pss, g_rss, other


def kernel_bytes() -> int:
    m = meminfo()
    return sum(m.get(k, 0) for k in KERNEL_FIELDS)


@pytest.mark.parametrize("backend", [Backend.MMAP, Backend.UFFD], ids=lambda b: b.name.lower())
def test_per_vm_overhead(benchmark, guest_snapshot, backend):
    d, _ = guest_snapshot("beacon", MEM)
    memfile = str(d / "memory")
    n = 10
    vms = []

    def launch():
        _, _, user0 = split_pss(memfile, MEM, backend)
        k0 = kernel_bytes()
        for _ in range(n):
            vm = VM.restore(d, backend, devices=devices())
            vm.start()
            vms.append(vm)
        time.sleep(0.2)
        for vm in vms:
            vm.pause()
        _, _, user1 = split_pss(memfile, MEM, backend)
        k1 = kernel_bytes()
        return (user1 - user0) / n, (k1 - k0) / n

    user, kernel = benchmark.pedantic(launch, rounds=1, iterations=1)
    for vm in vms:
        vm.close()
    name = backend.name.lower()
    report("memory overhead", f"{name}: user-space per VM (MiB)", user / 2**20)
    report("memory overhead", f"{name}: kernel per VM (MiB)", kernel / 2**20)
    report("memory overhead", f"{name}: total per VM / 5 MiB target", (user + kernel) / (5 << 20),
           "target <= 1")


@pytest.mark.parametrize("backend,count", [(Backend.MMAP, 20), (Backend.UFFD, 5)],
                         ids=["mmap-20", "uffd-5"])
def test_readers_share_pages(benchmark, guest_snapshot, backend, count):
    pages = 16384                       # 64 MiB the guests read
    d, _ = guest_snapshot("touch", MEM, fill_pages=pages, mark=1, pages=pages, stride=1)
    memfile = str(d / "memory")
    vms = []

    def run():
        for _ in range(count):
            vm = VM.restore(d, backend, devices=devices())
            vm.mem_write(0x8000, (1).to_bytes(8, "little"))     # params.go
            vm.start()
            vms.append(vm)
        for vm in vms:
            assert vm.wait(120).exit_code == 0
        return split_pss(memfile, MEM, backend)

    pss, rss, _ = benchmark.pedantic(run, rounds=1, iterations=1)
    for vm in vms:
        vm.close()
    one_copy = pages * 4096
    name = backend.name.lower()
    report("page sharing", f"{name}: {count} readers, guest Rss / one copy", rss / one_copy,
           "each VM maps every page")
    report("page sharing", f"{name}: {count} readers, guest Pss / one copy", pss / one_copy,
           "target ~1 for mmap" if backend == Backend.MMAP else f"private copies: ~{count}")
