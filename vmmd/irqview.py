"""Where a stalled x86_64 guest's interrupts are, read from its vmstate (MicroVM.view): per
vCPU its instruction pointer, whether it takes interrupts, and the vectors its local APIC has
requested (IRR) and in service (ISR); per device line, its I/O APIC pin. A device whose used
ring moved while the guest sleeps with the device's vector neither requested nor in service
lost the interrupt on the way; one requested and never taken with IF set points at the
platform's injection (docs/emulated-hosts.md)."""
from __future__ import annotations

import struct

import msgpack

_HEADER = struct.Struct("<8sIIQ")     # vmstate.c: magic, format, arch, body length


def _vectors(lapic: bytes, base: int) -> list[int]:
    out = []
    for i in range(8):                  # 256 bits as eight 32-bit registers, 16 bytes apart
        word = struct.unpack_from("<I", lapic, base + 0x10 * i)[0]
        out += [32 * i + b for b in range(32) if word >> b & 1]
    return out


def _pin(entry: int) -> str:
    return (f"vector {entry & 0xff:#x}{' masked' if entry >> 16 & 1 else ''}"
            f"{' level' if entry >> 15 & 1 else ' edge'}"
            f"{' remote-irr' if entry >> 14 & 1 else ''} dest {entry >> 56}")


def _blockers(ev: bytes, lapic: bytes) -> str:
    """What else decides whether KVM may inject a requested vector: an interrupt shadow (STI,
    MOV SS), an exception or NMI waiting to go first, an NMI handler not yet ended by IRET,
    the local APIC switched off in its spurious-vector register. Empty when none holds."""
    out = []
    if ev[11]:                          # interrupt.shadow
        out.append(f"shadow {ev[11]:#x}")
    if ev[0] or ev[3]:                  # exception.injected / .pending, .nr at 1
        out.append(f"exception {ev[1]} {'injected' if ev[0] else 'pending'}")
    nmi = [name for name, off in (("injected", 12), ("pending", 13), ("masked", 14)) if ev[off]]
    if nmi:
        out.append("NMI " + "/".join(nmi))
    if not struct.unpack_from("<I", lapic, 0xf0)[0] >> 8 & 1:
        out.append("APIC off")
    return "".join(f" {b}" for b in out)


def describe(blob: bytes, lines: dict[str, int]) -> str:
    """`blob` from VM.state_blob() of a paused x86_64 VM; `lines` names a device's GSI."""
    n = _HEADER.unpack_from(blob)[3]
    body = msgpack.unpackb(blob[_HEADER.size:_HEADER.size + n], raw=False,
                           strict_map_key=False)
    out = []
    for i, c in enumerate(body["vcpu"]):
        rip, rflags = struct.unpack_from("<2Q", c["regs"], 16 * 8)
        ev = c["events"]        # struct kvm_vcpu_events: interrupt.injected, .nr at 8 and 9
        lapic = c["lapic"]
        out.append(f"vCPU {i}: rip {rip:#x} IF {rflags >> 9 & 1} mp_state {c['mp_state']} "
                   f"injecting {'%#x' % ev[9] if ev[8] else '-'} "
                   f"IRR {[hex(v) for v in _vectors(lapic, 0x200)]} "
                   f"ISR {[hex(v) for v in _vectors(lapic, 0x100)]} "
                   f"TPR {struct.unpack_from('<I', lapic, 0x80)[0]:#x}{_blockers(ev, lapic)}")
    io = body["vm"]["ioapic"]   # struct kvm_irqchip: id, pad, kvm_ioapic_state
    irr = struct.unpack_from("<I", io, 8 + 16)[0]
    for name, gsi in sorted(lines.items(), key=lambda kv: kv[1]):
        if 0 <= gsi < 24:
            entry = struct.unpack_from("<Q", io, 8 + 24 + 8 * gsi)[0]
            out.append(f"{name}: I/O APIC pin {gsi}: {_pin(entry)}"
                       f"{' irr' if irr >> gsi & 1 else ''}")
    return "\n".join(out)
