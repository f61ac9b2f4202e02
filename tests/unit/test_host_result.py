"""How a run in an emulated KVM host is judged (tests/hosts.py): a host whose own kernel broke
gets a rerun, a command that failed or hung while the host lived does not. Each console below
holds the lines the hosts printed when that happened (docs/emulated-hosts.md)."""
from __future__ import annotations

from hosts import HostResult

BEATS = "".join(f"vmmd-host: alive {t:.2f}\r\n" for t in range(34, 520, 30))


def result(console: str, status: int | None = None, wall: float = 540.0,
           output: str = "", arch: str = "x86_64") -> HostResult:
    return HostResult(arch, status, output, console, 4.7, wall)


def test_a_command_that_hangs_while_the_host_beats_is_our_failure():
    r = result("vmmd-host: up in 4.69 s, kvm: yes\r\n" + BEATS + "\n[vmmd: host timed out]")
    assert not r.host_broke and r.broke_why == ""
    assert not r.passed_cleanly


def test_a_heartbeat_that_stops_long_before_the_timeout_is_a_frozen_host():
    beats = "".join(f"vmmd-host: alive {t}.01\r\n" for t in (34, 64, 94))
    r = result("vmmd-host: up in 4.69 s, kvm: yes\r\n" + beats, wall=540.0)
    assert r.host_broke
    assert r.broke_why == "the host's heartbeat stopped at 94 s of 540 s"


def test_a_heartbeat_that_stops_near_the_end_is_not_enough():
    beats = "".join(f"vmmd-host: alive {t}.01\r\n" for t in (34, 64, 394, 424))
    assert not result(beats, wall=540.0).host_broke


def test_a_host_without_heartbeats_is_not_called_frozen():
    # an older host image, or one that died before its init's first beat: nothing to go on
    assert not result("[vmmd: host timed out]").host_broke


def test_a_finished_command_is_never_frozen():
    assert not result("vmmd-host: alive 34.77\r\n", status=1, wall=900).host_broke


def test_host_kernel_panic_soft_lockup_and_rcu_stall_break_the_host():
    lines = {
        "[  812.1] Kernel panic - not syncing: stack guard page was hit": "Kernel panic",
        "[  95.3] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [qemu:210]": "soft lockup",
        "[ 301.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:": "rcu_preempt",
        "[ 120.0] rcu: INFO: rcu_sched self-detected stall on CPU": "rcu_sched",
        "[ 400.2] rcu: rcu_preempt kthread starved for 10002 jiffies!": "kthread starved",
    }
    for line, word in lines.items():
        r = result(BEATS + line + "\r\n" + BEATS, status=0, output="3 passed in 9.0s")
        assert r.host_broke, line
        assert word in r.broke_why and r.broke_why.startswith("["), r.broke_why


def test_a_clean_pytest_summary_passes_and_skips_or_failures_do_not():
    assert result("", status=0, output="....\n4 passed in 12.3s").passed_cleanly
    for last in ("3 passed, 1 skipped in 9s", "3 passed, 1 failed in 9s", "1 error in 2s"):
        assert not result("", status=0, output=last).passed_cleanly, last
    assert not result("", status=1, output="4 passed in 12.3s").passed_cleanly


def test_a_guest_triple_fault_is_recognised_on_x86_64_only():
    out = "vmmd VM: the guest triple-faulted (KVM_EXIT_SHUTDOWN)"
    assert result("", status=1, output=out).guest_triple_faulted
    assert not result("", status=1, output=out, arch="aarch64").guest_triple_faulted


def test_a_host_timeout_with_no_room_for_a_rerun_is_refused_before_the_host_boots(monkeypatch):
    import importlib.util
    import pathlib

    import pytest

    import hosts
    path = pathlib.Path(__file__).parents[1] / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("e2e_conftest", path)
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    def boot(*a, **kw):
        raise AssertionError("the host was booted")
    monkeypatch.setattr(hosts, "run", boot)
    with pytest.raises(pytest.fail.Exception, match="give the host at most 170 s"):
        conftest.TestHost("x86_64", limit=400).run("true", timeout=200)
    with pytest.raises(AssertionError, match="was booted"):      # 2 x 170 + 60 fits in 400
        conftest.TestHost("x86_64", limit=400).run("true", timeout=170)


def test_a_host_whose_heartbeat_stops_is_ended_without_waiting_for_its_timeout():
    import hosts
    # `sh` stands in for QEMU: the watchdog reads nothing but the console
    console = hosts.watch(["sh", "-c", "echo 'vmmd-host: up in 1.00 s, kvm: yes'; "
                           "echo 'vmmd-host: alive 31.00'; exec sleep 120"],
                          timeout=100, lost=1.0, poll=0.05)
    assert console.endswith(hosts.FROZEN) and "timed out" not in console
    r = result(console, wall=32.5)
    assert r.host_broke and r.broke_why == "the host's heartbeat stopped at 31 s; ended at 32 s"


def test_a_host_that_keeps_beating_runs_to_its_end():
    import hosts
    console = hosts.watch(["sh", "-c", "echo 'vmmd-host: up in 1.00 s, kvm: yes'; "
                           "for i in 1 2 3 4 5 6; do sleep 0.3; echo \"vmmd-host: alive $i\"; "
                           "done; echo finished"], timeout=100, lost=1.0, poll=0.05)
    assert console.rstrip().endswith("finished") and hosts.FROZEN not in console


def test_a_host_that_never_booted_is_left_to_its_timeout():
    import hosts
    console = hosts.watch(["sh", "-c", "echo SeaBIOS; exec sleep 120"], timeout=1.0, lost=0.2,
                          poll=0.05)
    assert console.endswith("[vmmd: host timed out]") and hosts.FROZEN not in console
