"""The egress policy as vmmd.net compiles it for the VMM (docs/network.md): the order of the
rules, the protected ranges, entries and their errors, host names resolved at policy time."""
from __future__ import annotations

import socket
import struct

import pytest

from vmmd import native, net
from vmmd.net import EgressPolicy, Entry, HostAddresses, PolicyError

HOST = HostAddresses(addresses=("10.0.2.15", "198.51.100.7"), gateway="10.0.2.2")


def frame(dst: str, proto: int, port: int, sport: int, ack: bool) -> bytes:
    """An Ethernet frame carrying one IPv4 packet from the guest (10.0.2.15) to `dst`."""
    if proto == 6:
        l4 = struct.pack(">HHIIBBHHH", sport, port, 1, 1 if ack else 0, 5 << 4,
                         0x10 if ack else 0x02, 64240, 0, 0)
    elif proto == 17:
        l4 = struct.pack(">HHHH", sport, port, 8, 0)
    else:
        l4 = struct.pack(">BBHHH", 8, 0, 0, 1, 1)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                     socket.inet_aton("10.0.2.15"), socket.inet_aton(dst))
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x0a" + b"\x08\x00" + ip + l4


def verdict(policy: EgressPolicy, dst: str, proto: int = 6, port: int = 80, *,
            sport: int = 40000, ack: bool = False, expose: tuple[int, ...] = ()) -> bool:
    """Whether virtio-net's filter (the C code, test build) lets the packet out under the rules
    the policy compiles to."""
    rules, default_allow = policy.compile(HOST, expose)
    return native.net_filter_verdict(frame(dst, proto, port, sport, ack), rules,
                                     default_allow) == "allow"


def test_default_policy_reaches_the_world_but_not_the_host_or_private_ranges():
    p = EgressPolicy()
    assert verdict(p, "93.184.216.34", port=443)
    for dst in ("10.0.2.2", "10.0.2.15", "198.51.100.7", "169.254.169.254", "127.0.0.1",
                "192.168.1.1", "172.20.0.1", "100.64.0.1", "224.0.0.251"):
        assert not verdict(p, dst), dst


def test_dns_to_the_resolver_is_allowed_unless_switched_off():
    assert verdict(EgressPolicy(), "10.0.2.2", proto=17, port=53)
    assert verdict(EgressPolicy(), "10.0.2.2", proto=6, port=53)
    assert not verdict(EgressPolicy(), "10.0.2.2", proto=6, port=80)
    assert not verdict(EgressPolicy.deny_all(), "10.0.2.2", proto=17, port=53)


def test_deny_all_denies_everything():
    p = EgressPolicy.deny_all()
    for dst in ("93.184.216.34", "10.0.2.2", "8.8.8.8"):
        assert not verdict(p, dst, proto=17, port=53)
        assert not verdict(p, dst)


def test_allow_list_names_a_protected_address_and_only_that_port():
    p = EgressPolicy("deny", allow=("10.0.2.2/32:8080",))
    assert verdict(p, "10.0.2.2", port=8080)
    assert verdict(p, "10.0.2.2", proto=17, port=8080)
    assert not verdict(p, "10.0.2.2", port=8081)
    assert not verdict(p, "93.184.216.34", port=8080)


def test_an_exposed_ports_answers_pass_even_under_deny_all_but_its_connects_do_not():
    p = EgressPolicy.deny_all()
    assert verdict(p, "10.0.2.2", port=51000, sport=8000, ack=True, expose=(8000,))
    assert not verdict(p, "10.0.2.2", port=51000, sport=8000, ack=False, expose=(8000,))
    assert not verdict(p, "10.0.2.2", port=51000, sport=8001, ack=True, expose=(8000,))
    assert not verdict(p, "93.184.216.34", port=80, sport=8000, ack=True, expose=(8000,))


def test_an_explicit_deny_wins_over_an_allow():
    p = EgressPolicy(allow=("203.0.113.0/24",), deny=("203.0.113.9",))
    assert verdict(p, "203.0.113.8")
    assert not verdict(p, "203.0.113.9")


def test_protocol_prefixed_entries_match_only_that_protocol():
    p = EgressPolicy("deny", allow=("udp:203.0.113.1:5000-5010",))
    assert verdict(p, "203.0.113.1", proto=17, port=5005)
    assert not verdict(p, "203.0.113.1", proto=6, port=5005)
    assert not verdict(p, "203.0.113.1", proto=17, port=5011)


def test_host_names_are_resolved_when_the_policy_is_compiled():
    p = EgressPolicy("deny", allow=("localhost:80",))
    rules, _ = p.compile(HOST)
    assert any(r.network == "127.0.0.1/32" and r.allow for r in rules)


@pytest.mark.parametrize("entry,fix", [
    ("10.0.0.0/33", "neither an IPv4"),
    ("10.0.2.2:0", "1 to 65535"),
    ("10.0.2.2:90-80", "low first"),
    ("10.0.2.2:http", "a number"),
    ("icmp:10.0.2.2:80", "ICMP has no ports"),
    ("no-such-host.invalid", "does not resolve"),
    ("2001:db8::1", "IPv6"),
    (":80", "names no destination"),
])
def test_bad_entries_say_what_to_write_instead(entry, fix):
    with pytest.raises(PolicyError, match=fix):
        EgressPolicy(allow=(entry,)).compile(HOST)


def test_policy_limits_and_default_are_checked():
    with pytest.raises(PolicyError, match="allow.*deny"):
        EgressPolicy("maybe").validate()
    with pytest.raises(PolicyError, match="at most"):
        EgressPolicy(allow=tuple(f"203.0.113.{i}" for i in range(net.MAX_ENTRIES + 1))).validate()


def test_policy_round_trips_through_its_stored_form():
    p = EgressPolicy("deny", allow=("tcp:203.0.113.1:443",), deny=("203.0.113.9",), dns=False)
    assert EgressPolicy.from_dict(p.to_dict()) == p


def test_entry_parse_reads_protocol_destination_and_ports():
    assert Entry.parse("tcp:example.org:443") == Entry("example.org", "tcp", (443, 443))
    assert Entry.parse("10.0.0.0/8") == Entry("10.0.0.0/8", "any", (0, 0))


def test_mac_addresses_are_unicast_and_locally_administered():
    for _ in range(64):
        m = net.random_mac()
        assert len(m) == 6 and m[0] & 1 == 0 and m[0] & 2


def test_host_addresses_are_read_from_the_kernel():
    h = HostAddresses.probe()
    assert "127.0.0.1" in h.addresses
