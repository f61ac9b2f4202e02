"""Fuzzes the virtqueue walker, the vsock packet handling, and virtio-net with its egress filter
(fuzz/*_fuzz.c) with libFuzzer for a bounded time each, from the seed corpora in fuzz/corpus/, under AddressSanitizer and UBSan.
A crash, a sanitizer report, a timeout (a hang) or a leak fails the test and leaves the input
that caused it in the test's temporary directory."""
import os
import pathlib
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
FUZZ = ROOT / "fuzz"
SOURCES = sorted(p for p in [*NATIVE.glob("*.c"), *NATIVE.glob("devices/*.c"),
                             *NATIVE.glob("devices/test/*.c"), *NATIVE.glob("arch/x86_64/*.c")])
SECONDS = int(os.environ.get("VMMD_FUZZ_SECONDS", "25"))   # per target
CFLAGS = ["-std=gnu11", "-O1", "-g", "-D_GNU_SOURCE", '-DVMM_NATIVE_VERSION="fuzz"',
          "-DVMM_TEST_BUILD", "-Wno-unused-function", "-I", str(NATIVE),
          "-I", str(ROOT / "tests" / "unit" / "c")]
TARGETS = {"virtq": 70000, "vsock": 40000, "net": 70000}   # target -> max input length


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    if shutil.which("clang") is None:
        pytest.fail("clang with libFuzzer is needed for the fuzz targets (scripts/setup.sh "
                    "installs clang and libclang-rt-dev)")
    if os.uname().machine != "x86_64":
        pytest.skip("the fuzz targets build the x86_64 core")
    out = tmp_path_factory.mktemp("fuzz-core")

    def compile_one(item):
        i, src = item
        obj = out / f"{i}-{src.stem}.o"
        r = subprocess.run(["clang", *CFLAGS, "-fsanitize=fuzzer-no-link,address,undefined",
                            "-c", "-o", str(obj), str(src)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return str(obj)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(compile_one, enumerate(SOURCES)))


@pytest.mark.timeout(SECONDS + 600)      # building the core with clang counts too
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_its_budget(core, tmp_path, target):
    binary = tmp_path / f"{target}_fuzz"
    r = subprocess.run(["clang", *CFLAGS, "-fsanitize=fuzzer,address,undefined", "-o",
                        str(binary), str(FUZZ / f"{target}_fuzz.c"), *core, "-lpthread"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = FUZZ / "corpus" / target
    assert any(seeds.iterdir()), f"no seeds in {seeds}"
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               ASAN_OPTIONS="detect_leaks=1")
    r = subprocess.run([str(binary), f"-max_total_time={SECONDS}", "-timeout=10",
                        f"-max_len={TARGETS[target]}", "-rss_limit_mb=2048",
                        f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
                        str(corpus), str(seeds)],
                       capture_output=True, text=True, timeout=SECONDS + 120, env=env)
    tail = r.stderr[-6000:]
    assert r.returncode == 0, tail
    assert "stat::number_of_executed_units" in r.stderr, tail
    runs = int(r.stderr.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > 100, tail
    print(f"{target}: {runs} inputs in {SECONDS} s")
