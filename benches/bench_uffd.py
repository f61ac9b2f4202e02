"""uffd page service: pages a VM's handler installs per second, against a raw UFFDIO_COPY loop.

handler rate: pages installed / time the handler spent installing them (read the fault, read the
pages from the layer file, UFFDIO_COPY, fault-around). end-to-end rate: pages / wall time of a
guest that does nothing but touch new pages, adding the vCPU exit and wake-up on this host.
Target: handler rate at least 70% of the raw loop.
"""

from conftest import devices, report
from vmmd.native import ffi, lib
from vmmd.native import VM, Backend

MEM = 256 << 20
PAGES = 16384
RATES: dict[str, float] = {}


def test_raw_uffdio_copy(benchmark):
    ns = ffi.new("unsigned long long *")

    def raw():
        assert lib.vmm_bench_uffd_copy(PAGES, ns) == 0
        return PAGES / (ns[0] / 1e9)

    RATES["raw"] = benchmark.pedantic(raw, rounds=5, iterations=1)
    report("uffd service", "raw UFFDIO_COPY (pages/s)", RATES["raw"])


def test_vm_fault_service(benchmark, guest_snapshot):
    d, _ = guest_snapshot("touch", MEM, fill_pages=PAGES, mark=1, pages=PAGES, stride=7)
    results = []

    def setup():
        vm = VM.restore(d, Backend.UFFD, devices=devices())
        vm.mem_write(0x8000, (1).to_bytes(8, "little"))
        return (vm,), {}

    def run(vm):
        import time
        t0 = time.monotonic_ns()
        vm.start()
        assert vm.wait(60).exit_code == 0
        wall = time.monotonic_ns() - t0
        st = vm.stats()
        results.append((st["uffd_pages"], st["uffd_fault_ns"], wall))
        vm.close()

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    pages, handler_ns, wall = sorted(results, key=lambda r: r[2])[len(results) // 2]
    handler = pages / (handler_ns / 1e9)
    e2e = pages / (wall / 1e9)
    report("uffd service", "handler (pages/s)", handler)
    report("uffd service", "end-to-end, guest touching (pages/s)", e2e)
    if "raw" in RATES:
        report("uffd service", "handler / raw UFFDIO_COPY", handler / RATES["raw"], "target >= 0.7")
        report("uffd service", "end-to-end / raw UFFDIO_COPY", e2e / RATES["raw"])
