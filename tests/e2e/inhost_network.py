"""Runs INSIDE an emulated KVM host (tests/e2e/test_network.py starts it there): a Linux MicroVM
in vmmd's VMM with a virtio-net NIC behind its own passt, and the host-side services it talks
to: a DNS server and two HTTP servers on this host (reached by the guest through passt: the
gateway 10.0.2.2 is this host's loopback; 198.51.100.7, an address we add to the host, stands
for a destination outside the protected ranges). The file name keeps it out of normal
collection; on its own it skips.

Environment: VMMD_GUEST_KERNEL, VMMD_GUEST_INITRD, VMMD_GUEST_DISK (copied to /tmp first).
Lines starting with "vmmd-net:" are measurements the outer test reports.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import time
import urllib.request

import pytest

from guest_peer import guest_from_env
from netpeer import FILES_PORT, GATEWAY, OTHER_PORT, WORLD, Counting, Dns, World
from vmmd.microvm import LinuxSpec, MicroVM, NetOptions
from vmmd.net import EgressPolicy

pytestmark = pytest.mark.timeout(900)
ARCH = platform.machine()
GUEST_HTTP = 8000

if not os.environ.get("VMMD_IN_HOST") or not os.environ.get("VMMD_GUEST_KERNEL"):
    pytest.skip("runs inside an emulated KVM host, started by tests/e2e/test_network.py",
                allow_module_level=True)


def metric(name: str, value) -> None:
    print(f"\nvmmd-net: {ARCH} {name} {value}", flush=True)


def run(coro, timeout: float = 300):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def world():
    w = World()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def spec(world):
    kernel, initrd, disk = guest_from_env()
    return LinuxSpec(ARCH, kernel, initrd, disk, net=True)


def open_files() -> EgressPolicy:
    return EgressPolicy(allow=(f"{GATEWAY}/32:{FILES_PORT}",))


@pytest.fixture(scope="module")
def vm(spec):
    t0 = time.monotonic()
    m = MicroVM.boot(spec, "/tmp/vm", NetOptions(open_files(), expose=(GUEST_HTTP,)))
    try:
        run(m.wait_ready(400), 460)
        metric("boot_to_agent_ready_s", round(time.monotonic() - t0, 2))
        yield m
    finally:
        print("--- console ---\n" + m.console_text()[-3000:])
        print("--- passt ---\n" + m.network.passt.log_text()[-2000:])
        m.close()


def sh(m: MicroVM, script: str, timeout: float = 120):
    r = run(m.agent.run(["sh", "-c", script]), timeout)
    return r.code, (r.stdout + r.stderr).decode(errors="replace")


def fetch(m: MicroVM, url: str, timeout_s: int = 8) -> tuple[int, str]:
    return sh(m, f"timeout {timeout_s} wget -q -O - {url} 2>&1; echo rc=$?")


# ---------- what the guest sees ----------

def test_guest_gets_its_address_and_route_by_dhcp(vm):
    code, out = sh(vm, "ip -4 addr show eth0; ip route; cat /etc/resolv.conf")
    assert code == 0, out
    assert "inet 10.0.2.15/24" in out, out
    assert f"default via {GATEWAY}" in out, out
    assert f"nameserver {GATEWAY}" in out, out


def test_guest_resolves_names_through_the_backend(vm):
    before = Dns.queries
    code, out = sh(vm, "nslookup world.vmmd.test")
    assert code == 0 and WORLD in out, out
    assert Dns.queries > before


def stalled(vm: MicroVM) -> str:
    """What a stalled transfer leaves to look at: the NIC's counters (read twice, to see whether
    anything still moves), whether the agent still answers, the guest's view, passt's log."""
    a = vm.vm.net_stats(0)
    time.sleep(2)
    b = vm.vm.net_stats(0)
    try:
        guest = sh(vm, "cat /proc/net/dev; grep -A1 ^Tcp: /proc/net/snmp; ip link show eth0",
                   timeout=30)[1]
    except (TimeoutError, asyncio.TimeoutError):
        guest = "(the agent did not answer within 30 s)"
    return (f"\nnet stats: {a}\n2 s later: {b}\nvm stats: {vm.vm.stats()}\nguest:\n{guest}\n"
            f"passt:\n{vm.network.passt.log_text()[-1500:]}\nconsole:\n"
            f"{vm.console_text()[-1500:]}")


def test_guest_downloads_50_mib_from_the_host_intact(vm):
    t0 = time.monotonic()
    # wget's own limit well inside the agent call's and the host's: a stall fails with a why
    try:
        code, out = sh(vm, f"set -o pipefail; timeout 240 wget -q -O - "
                           f"http://files.vmmd.test:{FILES_PORT}/blob | sha256sum", timeout=270)
    except (TimeoutError, asyncio.TimeoutError):
        raise AssertionError("the agent call did not return" + stalled(vm)) from None
    took = time.monotonic() - t0
    assert code == 0, out + stalled(vm)
    assert out.split()[0] == hashlib.sha256(Counting.blob).hexdigest()
    metric("download_50MiB_s", round(took, 2))
    metric("download_MiB_per_s", round(50 / took, 1))


def test_host_reaches_a_guest_http_server_through_an_exposed_port(vm):
    code, out = sh(vm, f"mkdir -p /tmp/www && echo hello-from-the-guest > /tmp/www/index.html "
                       f"&& httpd -p {GUEST_HTTP} -h /tmp/www")
    assert code == 0, out
    url = f"http://127.0.0.1:{vm.host_port(GUEST_HTTP)}/index.html"
    deadline = time.monotonic() + 30
    while True:
        try:
            body = urllib.request.urlopen(url, timeout=10).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert body == b"hello-from-the-guest\n"


# ---------- egress policy ----------

def test_default_policy_keeps_the_host_and_metadata_unreachable(vm):
    vm.set_egress(EgressPolicy())
    denied = vm.vm.net_stats(0).tx_denied
    hits = dict(Counting.hits)
    try:
        for url in (f"http://{GATEWAY}:{FILES_PORT}/", f"http://{WORLD}:{FILES_PORT}/",
                    "http://169.254.169.254/latest/meta-data/", f"http://10.0.2.15:{FILES_PORT}/"):
            t0 = time.monotonic()
            code, out = fetch(vm, url)
            assert "rc=0" not in out, (url, out)
            assert time.monotonic() - t0 < 6, f"{url}: a denied connect should fail at once"
        assert vm.vm.net_stats(0).tx_denied > denied
        assert Counting.hits == hits, "a denied request reached a server"
    finally:
        vm.set_egress(open_files())


def test_deny_all_lets_nothing_leave(vm):
    vm.set_egress(EgressPolicy.deny_all())
    hits, queries = dict(Counting.hits), Dns.queries
    try:
        code, out = fetch(vm, f"http://{GATEWAY}:{FILES_PORT}/")
        assert "rc=0" not in out, out
        code, out = sh(vm, "timeout 5 nslookup world.vmmd.test; echo rc=$?")
        assert WORLD not in out, out
        assert Counting.hits == hits and Dns.queries == queries, "something left a deny-all VM"
    finally:
        vm.set_egress(open_files())


def test_allow_list_lets_only_the_listed_destination_answer(vm):
    vm.set_egress(EgressPolicy("deny", allow=(f"{WORLD}/32:{FILES_PORT}",)))
    try:
        code, out = fetch(vm, f"http://{WORLD}:{FILES_PORT}/")
        assert f"port {FILES_PORT}" in out and "rc=0" in out, out
        for url in (f"http://{WORLD}:{OTHER_PORT}/", f"http://{GATEWAY}:{FILES_PORT}/"):
            code, out = fetch(vm, url)
            assert "rc=0" not in out, (url, out)
    finally:
        vm.set_egress(open_files())


def test_policy_change_takes_effect_without_a_restart(vm):
    url = f"http://{GATEWAY}:{OTHER_PORT}/"
    code, out = fetch(vm, url)
    assert "rc=0" not in out, out
    vm.set_egress(EgressPolicy(allow=(f"{GATEWAY}/32",)))
    try:
        code, out = fetch(vm, url)
        assert f"port {OTHER_PORT}" in out and "rc=0" in out, out
    finally:
        vm.set_egress(open_files())
    code, out = fetch(vm, url)
    assert "rc=0" not in out, out


# ---------- a hostile guest ----------

def test_garbage_frames_from_the_guest_harm_neither_the_vmm_nor_passt(vm):
    tool = os.environ["VMMD_GARBAGE_FRAMES"]
    with open(tool, "rb") as f:
        run(vm.agent.write_file("/tmp/garbage_frames", f.read(), mode=0o755))
    # everything to the gateway allowed: the frames cross the filter into passt's parsers too
    vm.set_egress(EgressPolicy(allow=(f"{GATEWAY}/32",)))
    before, malformed = vm.vm.net_stats(0), Dns.malformed
    try:
        code, out = sh(vm, "/tmp/garbage_frames eth0 4000 7", timeout=300)
    finally:
        vm.set_egress(open_files())
    after = vm.vm.net_stats(0)
    metric("garbage_frames", out.strip().replace(" ", "_"))
    assert code == 0 and out.startswith("sent "), out
    assert after.tx_frames - before.tx_frames > 1000, (before, after)
    assert after.tx_denied > before.tx_denied, "IPv6 and unknown ethertypes must be denied"
    assert Dns.malformed > malformed, "no garbage crossed passt to the host's DNS server"
    assert after.link_up and vm.network.passt.proc.poll() is None, \
        "passt died:\n" + vm.network.passt.log_text()[-2000:]
    # and the guest's network still works, fast
    code, out = fetch(vm, f"http://files.vmmd.test:{FILES_PORT}/")
    assert f"port {FILES_PORT}" in out and "rc=0" in out, out + stalled(vm)


# ---------- snapshot and restore ----------

def test_restored_copies_get_their_own_macs_and_both_reach_the_server(vm, spec, tmp_path):
    snap = tmp_path / "snap"
    # a connection open at the snapshot: every copy must see it end, not hang
    sh(vm, f"rm -f /tmp/slow.rc; (wget -q -O /dev/null http://{GATEWAY}:{FILES_PORT}/slow; "
           f"echo $? > /tmp/slow.rc) >/dev/null 2>&1 &")
    time.sleep(1)
    run(vm.snapshot(snap))
    copies = []
    try:
        for i in range(2):
            t0 = time.monotonic()
            c = MicroVM.restore(snap, spec, tmp_path / f"copy{i}", network=NetOptions(open_files()))
            copies.append(c)
            run(c.wait_ready(120), 180)
            synced = run(c.after_restore(), 120)
            metric(f"restore_to_network_s_copy{i}", round(time.monotonic() - t0, 2))
            assert "10.0.2.15" in synced["network"], synced
        macs = [sh(c, "cat /sys/class/net/eth0/address")[1].strip() for c in copies]
        assert macs[0] != macs[1], macs
        for c, mac in zip(copies, macs):
            assert mac == ":".join(f"{b:02x}" for b in c.network.mac)
            code, out = fetch(c, f"http://files.vmmd.test:{FILES_PORT}/")
            assert f"port {FILES_PORT}" in out and "rc=0" in out, out
        # the download that was open at the snapshot ends in every copy (its backend is gone)
        for c in copies:
            code, out = sh(c, "for i in $(seq 60); do [ -f /tmp/slow.rc ] && break; sleep 1; "
                              "done; cat /tmp/slow.rc", timeout=120)
            assert out.strip() not in ("", "0"), f"the old connection did not end: {out!r}"
    finally:
        for c in copies:
            c.close()
