"""The `testhost` fixture: run commands or pytest selections inside an emulated KVM host."""
from __future__ import annotations

import os
import shlex
import time

import pytest

import hosts
from guests import build_path, cache_dir

REQUIRE_KVM = os.environ.get("VMMD_REQUIRE_KVM") == "1"


BOOTS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if BOOTS:
        terminalreporter.section("emulated KVM hosts")
        for line in BOOTS:
            terminalreporter.write_line(line)


# Runs of a host after QEMU's emulation broke under it (docs/emulated-hosts.md): two, since one
# CI run boots the x86_64 host about ten times and it breaks in about 1 run in 5 to 10 there
EMULATION_RERUNS = 2


class TestHost:
    def __init__(self, arch: str, deadline: float = float("inf"), limit: float = float("inf")):
        self.arch = arch
        self.deadline = deadline     # monotonic time pytest-timeout ends the test at
        self.limit = limit           # the test's pytest limit, seconds

    def run(self, script: str, **kw) -> hosts.HostResult:
        # A broken host is run again; pytest's limit must hold both runs, or pytest-timeout
        # ends the test mid-run and the broken run's console is lost with it (CI22, CI23).
        timeout = kw.get("timeout", 600)
        if 2 * timeout + 60 > self.limit:
            pytest.fail(f"a host timeout of {timeout} s leaves no room for a rerun under the "
                        f"test's limit of {self.limit:.0f} s: give the host at most "
                        f"{(self.limit - 60) / 2:.0f} s or the test at least {2 * timeout + 60} s")
        env = {"VMMD_CACHE": os.path.dirname(cache_dir()), **kw.pop("env", {})}
        cache_dir().mkdir(parents=True, exist_ok=True)    # bound below, even if nothing is built
        binds = [str(cache_dir()), *kw.pop("binds", [])]
        r = hosts.run(self.arch, script, env=env, binds=binds, **kw)
        BOOTS.append(f"{self.arch} host: booted in {r.boot_seconds} s (to its init's command), "
                     f"whole run {r.wall_seconds:.1f} s, status {r.status}")
        for _ in range(EMULATION_RERUNS):           # each said in the summary; then it fails
            if not (r.host_broke or r.guest_triple_faulted):
                break
            why = (f"its kernel broke ({r.broke_why[:120]})" if r.host_broke else
                   "a guest triple-faulted under nested SVM")
            if time.monotonic() + timeout + 60 > self.deadline:
                # a rerun pytest-timeout would cut short loses this run's console too
                BOOTS.append(f"{self.arch} host: {why}; no time left in the test's limit "
                             "for a rerun")
                break
            BOOTS.append(f"{self.arch} host: {why} (QEMU TCG nested virtualization, "
                         "docs/emulated-hosts.md); ran it again")
            r = hosts.run(self.arch, script, env=env, binds=binds, **kw)
            BOOTS.append(f"{self.arch} host (again): booted in {r.boot_seconds} s, whole run "
                         f"{r.wall_seconds:.1f} s, status {r.status}")
        return r

    def script(self, path, *args, what: str, timeout: float, **kw):
        """Runs an in-host script (`python path args...` from the checkout) that prints
        `CHECK name value` and `TIME name value` lines; the TIMEs go to the summary under
        `what`. Returns (checks, output, HostResult); the output and console are kept in
        `kw["keep"]` (a directory) when given."""
        import re
        keep = kw.pop("keep", None)
        cmd = " ".join(shlex.quote(str(x)) for x in (hosts.python(self.arch), path, *args))
        r = self.run(f"cd {shlex.quote(str(hosts.ROOT))} && {cmd} 2>&1; "
                     f"echo runner_status=$?", timeout=timeout,
                     env={"PYTHONUNBUFFERED": "1", "VMMD_NATIVE": "", **kw.pop("env", {})},
                     **kw)
        if keep is not None:
            (keep / "output.txt").write_text(r.output + "\n--- host console ---\n" + r.console)
        for m in re.findall(r"^TIME (.*)$", r.output, re.M):
            self.note(f"{what}: {m}")
        return dict(re.findall(r"^CHECK (\S+) (.*)$", r.output, re.M)), r.output, r

    def guest_pytest(self, module: str, tmp_path, *, prefix: str, what: str, timeout: float,
                     env: dict | None = None):
        """Runs an in-host pytest module against a Linux guest: the pinned cloud kernel,
        vmmd's initramfs and a busybox root disk, built here (the hosts have no compiler) and
        named by VMMD_GUEST_KERNEL/INITRD/DISK. Its `<prefix>: ...` lines go to the summary
        under `what`; output and console are kept in tmp_path."""
        import re

        from vmmd.images import initramfs, paths
        from vmmd.images.rootfs import busybox_rootfs
        kernel = paths.guest_kernel(self.arch).image
        initrd = initramfs.build(self.arch)
        disk = busybox_rootfs(paths.busybox(self.arch), tmp_path / "root.ext4", size_mb=128)
        r = self.pytest(module, "-s", guests=(), timeout=timeout,
                        env={"PYTHONUNBUFFERED": "1",     # what ran shows even if the host hangs
                             "VMMD_GUEST_KERNEL": str(kernel), "VMMD_GUEST_INITRD": str(initrd),
                             "VMMD_GUEST_DISK": str(disk), **(env or {})},
                        binds=[str(kernel.parent), str(initrd.parent), str(tmp_path)])
        (tmp_path / "inhost-output.txt").write_text(r.output + "\n--- host console ---\n" +
                                                    r.console)
        for m in re.findall(rf"^{prefix}: (.*)$", r.output, re.M):
            self.note(f"{what}: {m}")
        return r

    def note(self, line: str) -> None:
        """A line for the "emulated KVM hosts" section of the test summary."""
        BOOTS.append(f"{self.arch} host: {line}")

    def pytest(self, *args: str, guests=("hello",), **kw) -> hosts.HostResult:
        """Runs `pytest args` from the checkout inside the host, KVM required."""
        for g in guests:                  # the host has no compiler: build its guests here
            build_path(g, self.arch)
        return self.run(hosts.pytest_command(self.arch, *args), **kw)


@pytest.fixture
def testhost(request):
    marker = request.node.get_closest_marker("timeout")
    limit = marker.args[0] if marker and marker.args else request.config.getini("timeout")
    limit = float(limit or "inf")
    deadline = time.monotonic() + limit

    def make(arch: str) -> TestHost:
        problem = hosts.problem(arch)
        if problem:
            if REQUIRE_KVM:
                pytest.fail(f"VMMD_REQUIRE_KVM=1 but {problem}")
            pytest.skip(problem)
        return TestHost(arch, deadline, limit)
    return make
