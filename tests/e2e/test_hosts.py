"""Both emulated KVM hosts boot, have /dev/kvm, and run the native core's guests under it."""
import re

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def test_x86_64_host_runs_native_core(testhost):
    # pause, resume and stop of spinning guests included (docs/emulated-hosts.md, "Known
    # problems": the host lockup once blamed on them is QEMU's, and not tied to pause)
    r = testhost("x86_64").pytest(
        "tests/kvm/test_guest_smoke.py", "tests/kvm/test_lifecycle.py",
        guests=("hello", "mmio", "counter"), timeout=400)
    assert "kvm: yes" in r.console, r.console[-2000:]
    assert passed_cleanly(r), r.output + r.console[-2000:]


def test_aarch64_host_runs_native_core(testhost):
    r = testhost("aarch64").pytest("tests/kvm/test_guest_smoke.py", "tests/unit/test_runtime_deps.py",
                                   timeout=300)
    assert "kvm: yes" in r.console, r.console[-2000:]
    assert passed_cleanly(r), r.output + r.console[-2000:]


def passed_cleanly(r) -> bool:
    last = r.output.strip().splitlines()[-1] if r.output.strip() else ""
    return r.ok and re.search(r"\d+ passed", last) and not re.search(r"failed|error|skipped", last)
