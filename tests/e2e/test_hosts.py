"""Both emulated KVM hosts boot, have /dev/kvm, and run the native core's guests under it."""

import pytest

# a normal run is about 30 s (x86_64) and 50 s (aarch64); the hosts get about 5x that
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_x86_64_host_runs_native_core(testhost):
    # pause, resume and stop of spinning guests included (docs/emulated-hosts.md, "Known
    # problems": the host lockup once blamed on them is QEMU's, and not tied to pause)
    r = testhost("x86_64").pytest(
        "tests/kvm/test_guest_smoke.py", "tests/kvm/test_lifecycle.py",
        guests=("hello", "mmio", "counter"), timeout=150)
    assert "kvm: yes" in r.console, r.console[-2000:]
    assert r.passed_cleanly, r.output + r.console[-2000:]


def test_aarch64_host_runs_native_core(testhost):
    r = testhost("aarch64").pytest("tests/kvm/test_guest_smoke.py", "tests/unit/test_runtime_deps.py",
                                   timeout=240)
    assert "kvm: yes" in r.console, r.console[-2000:]
    assert r.passed_cleanly, r.output + r.console[-2000:]

