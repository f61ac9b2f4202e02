"""arm64 snapshots on a real aarch64 KVM: the emulated aarch64 host boots once and runs the whole
arm64 snapshot suite (tests/kvm/test_arm64_snapshot.py: registers, vGICv3, timer, counters,
both backends, diffs, refusals) with the cross-built core."""
import pytest

# a normal run is about 65 s; the limit leaves room for the fixture's rerun of a broken host
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(800)]


def test_aarch64_snapshots_restore_registers_vgic_and_timer(testhost):
    r = testhost("aarch64").pytest("tests/kvm/test_arm64_snapshot.py",
                                   guests=("counter", "ticker", "psci"), timeout=300)
    assert "kvm: yes" in r.console, r.console[-2000:]
    assert r.passed_cleanly, r.output + r.console[-2000:]
