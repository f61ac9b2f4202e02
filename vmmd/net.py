"""A MicroVM's network (docs/network.md): passt as the per-VM user-mode network stack behind
virtio-net, and the egress policy the VMM enforces on every frame the guest sends.

passt gives the guest DHCP (the host's own IPv4 address and gateway), forwards DNS, and NATs
the guest's TCP/UDP/ICMP flows onto the host's sockets, so the host needs no TAP device, bridge
or firewall rule. Connections to the gateway's address reach the host's loopback (passt's
default "map gateway"): the host's own services are one address away, which is why the default
policy denies the gateway and every other address of the host unless the policy names them.

Policy, as the VMM applies it (the first rule that matches decides):
  0. the guest's answers on connections made to its exposed ports (TCP from the port, ACK set,
     to the gateway passt forwards them from);
  1. DNS (UDP and TCP port 53) to the resolver passt gives the guest, unless `dns` is off;
  2. the policy's `deny` entries;
  3. its `allow` entries;
  4. the protected ranges: the host's own addresses, the gateway, loopback, link-local
     (169.254.0.0/16, metadata services), the private and shared ranges, multicast;
  5. the default (allow or deny).
ARP and DHCP are always let through (the VMM allows them itself: passt answers both).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

from vmmd.native import NetRule

MTU = 65520          # passt's own default: the largest frame it takes on its socket
PROTECTED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
             "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
             "224.0.0.0/4", "240.0.0.0/4")
PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}
MAX_ENTRIES = 256        # per list; a host name may stand for several addresses


class PolicyError(ValueError):
    """A policy entry that cannot be understood; the message says what to write instead."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One destination of a policy: an IPv4 network (or a host name, resolved when the policy
    is applied), an optional protocol and destination port range."""
    dest: str
    proto: str = "any"
    ports: tuple[int, int] = (0, 0)

    @classmethod
    def parse(cls, text: str) -> "Entry":
        """`[tcp:|udp:|icmp:]DEST[:PORT[-PORT]]`, DEST an IPv4 address, a CIDR or a host name:
        "10.0.2.2/32:8080", "tcp:pypi.example:443", "192.0.2.0/24"."""
        s = text.strip()
        proto = "any"
        head, sep, rest = s.partition(":")
        if sep and head.lower() in PROTOCOLS:
            proto, s = head.lower(), rest
        if s.count(":") > 1:
            raise PolicyError(f"egress entry {text!r}: IPv6 is not supported yet (the guest's "
                              "network is IPv4 only); write an IPv4 address, CIDR or host name")
        dest, sep, ports = s.partition(":")
        lo = hi = 0
        if sep:
            a, _, b = ports.partition("-")
            try:
                lo = int(a)
                hi = int(b) if b else lo
            except ValueError:
                raise PolicyError(f"egress entry {text!r}: the port must be a number or a range "
                                  "like 8000-8080") from None
            if not (1 <= lo <= hi <= 65535):
                raise PolicyError(f"egress entry {text!r}: ports run from 1 to 65535, low first")
            if proto in ("any", "icmp"):
                if proto == "icmp":
                    raise PolicyError(f"egress entry {text!r}: ICMP has no ports")
        if not dest:
            raise PolicyError(f"egress entry {text!r} names no destination")
        return cls(dest, proto, (lo, hi))

    def networks(self) -> list[ipaddress.IPv4Network]:
        try:
            return [ipaddress.IPv4Network(self.dest, strict=False)]
        except ValueError:
            pass
        if "/" in self.dest or not all(c.isalnum() or c in "-." for c in self.dest):
            raise PolicyError(f"egress destination {self.dest!r} is neither an IPv4 address, "
                              "an IPv4 CIDR nor a host name (IPv6 is not supported yet)")
        try:
            infos = socket.getaddrinfo(self.dest, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise PolicyError(f"egress host name {self.dest!r} does not resolve: {e}") from None
        return sorted({ipaddress.IPv4Network(i[4][0]) for i in infos})

    def rules(self, allow: bool) -> list[NetRule]:
        proto = PROTOCOLS[self.proto]
        out = []
        for n in self.networks():
            if proto == 0 and self.ports != (0, 0):
                out += [NetRule(network=str(n), proto=p, ports=self.ports, allow=allow)
                        for p in (6, 17)]
            else:
                out.append(NetRule(network=str(n), proto=proto, ports=self.ports, allow=allow))
        return out


@dataclasses.dataclass(frozen=True)
class EgressPolicy:
    """Where a MicroVM's traffic may go. `default` is "allow" or "deny"; `allow` and `deny`
    are entries as `Entry.parse` reads them; `dns` lets the guest ask the resolver."""
    default: str = "allow"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    dns: bool = True

    @classmethod
    def allow_all(cls) -> "EgressPolicy":
        return cls("allow")

    @classmethod
    def deny_all(cls) -> "EgressPolicy":
        return cls("deny", dns=False)

    def validate(self) -> None:
        if self.default not in ("allow", "deny"):
            raise PolicyError(f"egress default {self.default!r}: use \"allow\" or \"deny\"")
        for name, entries in (("allow", self.allow), ("deny", self.deny)):
            if len(entries) > MAX_ENTRIES:
                raise PolicyError(f"egress {name} list of {len(entries)} entries: at most "
                                  f"{MAX_ENTRIES}; use CIDRs that cover several")
        for e in (*self.allow, *self.deny):
            Entry.parse(e)

    def to_dict(self) -> dict:
        return {"default": self.default, "allow": list(self.allow), "deny": list(self.deny),
                "dns": self.dns}

    @classmethod
    def from_dict(cls, d: dict) -> "EgressPolicy":
        return cls(d.get("default", "allow"), tuple(d.get("allow", ())),
                   tuple(d.get("deny", ())), bool(d.get("dns", True)))

    def compile(self, host: "HostAddresses",
                expose: tuple[int, ...] = ()) -> tuple[list[NetRule], bool]:
        """(rules in order, default_allow) for VM.net_set_policy; resolves host names now.
        `expose`: the guest ports passt forwards to, whose answers must pass whatever the
        policy says (exposing a port is the operator's explicit choice)."""
        self.validate()
        rules: list[NetRule] = []
        if host.gateway:
            rules += [NetRule(network=f"{host.gateway}/32", proto=6, sports=(p, p),
                              replies=True, allow=True) for p in expose]
        if self.dns and host.dns:
            rules += [NetRule(network=f"{host.dns}/32", proto=p, ports=(53, 53), allow=True)
                      for p in (6, 17)]
        for e in self.deny:
            rules += Entry.parse(e).rules(False)
        for e in self.allow:
            rules += Entry.parse(e).rules(True)
        for n in sorted({*PROTECTED, *(f"{a}/32" for a in host.addresses)}):
            rules.append(NetRule(network=n, allow=False))
        return rules, self.default == "allow"


def check_ports(ports) -> tuple[int, ...]:
    out = tuple(int(p) for p in ports)
    for p in out:
        if not 0 < p < 65536:
            raise PolicyError(f"exposed port {p}: use 1..65535")
    if len(set(out)) != len(out) or len(out) > 64:
        raise PolicyError("exposed ports: at most 64, each once")
    return out


def compiled(policy: EgressPolicy, expose: tuple[int, ...] = ()) -> dict:
    """The policy as the worker applies it, resolved now (host names, this host's addresses):
    {"rules": [...], "default_allow": bool}, plain data for the store and the worker."""
    rules, default_allow = policy.compile(HostAddresses.probe(), expose)
    return {"rules": [{"network": r.network, "proto": r.proto, "ports": list(r.ports),
                       "sports": list(r.sports), "replies": r.replies, "allow": r.allow}
                      for r in rules], "default_allow": default_allow}


@dataclasses.dataclass(frozen=True)
class HostAddresses:
    """What the protected list needs to know of this host: its own IPv4 addresses, its
    default gateway (passt maps it to the host's loopback), and the resolver the guest uses."""
    addresses: tuple[str, ...]
    gateway: str | None

    @property
    def dns(self) -> str | None:
        return self.gateway     # passt is started with --dns-forward at the gateway

    @classmethod
    def probe(cls) -> "HostAddresses":
        addrs = set()
        try:       # every local address is a "/32 host LOCAL" leaf of the kernel's FIB
            lines = pathlib.Path("/proc/net/fib_trie").read_text().splitlines()
            for prev, line in zip(lines, lines[1:]):
                if line.strip() == "/32 host LOCAL":
                    addrs.add(prev.strip().split()[-1])
        except OSError:
            pass
        return cls(tuple(sorted(addrs)), default_gateway())


def default_gateway() -> str | None:
    try:
        for line in pathlib.Path("/proc/net/route").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[1] == "00000000" and int(f[3], 16) & 2:
                return socket.inet_ntoa(int(f[2], 16).to_bytes(4, "little"))
    except OSError:
        pass
    return None


def random_mac() -> bytes:
    """A locally administered unicast address, as QEMU and Firecracker users make them."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


def mac_text(mac: bytes) -> str:
    return ":".join(f"{x:02x}" for x in mac)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Passt:
    """One passt process for one MicroVM: a Unix socket the virtio-net device connects to
    (passt serves exactly that one client, then exits), and `forwards`: host loopback port ->
    guest TCP port. Started by the process that owns the VM, stopped by its own pid."""

    def __init__(self, workdir: str | os.PathLike, expose: tuple[int, ...] = (),
                 host: HostAddresses | None = None):
        self.workdir = pathlib.Path(workdir)
        self.socket = self.workdir / "net.sock"
        self.log = self.workdir / "passt.log"
        self.host = host or HostAddresses.probe()
        self.forwards = {free_port(): int(g) for g in expose}
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        exe = shutil.which("passt") or "/usr/bin/passt"
        # --runas: passt drops to "nobody" by default, which cannot reach a socket inside a
        # private (0700) VM directory; it still sandboxes itself (namespaces, seccomp)
        argv = [exe, "--foreground", "--one-off", "--ipv4-only", "--runas", str(os.getuid()),
                "--socket", str(self.socket),
                "--log-file", str(self.log), "--udp-ports", "none"]
        if self.host.gateway:
            # the guest's resolver is the gateway; passt relays what reaches it there to the
            # host's own resolver (resolv.conf)
            argv += ["--dns", self.host.gateway, "--dns-forward", self.host.gateway]
        spec = ",".join(f"{h}:{g}" for h, g in self.forwards.items())
        argv += ["--tcp-ports", f"127.0.0.1/{spec}" if spec else "none"]
        return argv

    def start(self, timeout: float = 10.0) -> "Passt":
        if not self.host.gateway:
            raise OSError("passt needs a default route on the host (an interface to take the "
                          "guest's address and gateway from); this host has none")
        self.socket.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise OSError(f"passt exited with status {self.proc.returncode} before "
                              f"listening: {err.strip()[-2000:] or self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OSError(f"passt did not listen on {self.socket} within {timeout} s")
            time.sleep(0.002)
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stderr:
            p.stderr.close()
        self.socket.unlink(missing_ok=True)
