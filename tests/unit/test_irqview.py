"""irqview reads a stalled x86_64 guest's interrupt state out of its vmstate: the offsets into
KVM's structs are checked against a hand-built state here and against a real VM's in
tests/kvm/test_virtio.py."""
import struct

from helpers import encode
from vmmd import irqview


def blob(irr=(), isr=(), pins=None, rip=0x1234, rflags=0x202, injecting=None, ioapic_irr=0,
         flags=None, apic_on=True):
    lapic = bytearray(1024)
    struct.pack_into("<I", lapic, 0xf0, 0x1ff if apic_on else 0xff)
    for base, vectors in ((0x200, irr), (0x100, isr)):
        for v in vectors:
            off = base + 0x10 * (v // 32)
            word = struct.unpack_from("<I", lapic, off)[0] | 1 << (v % 32)
            struct.pack_into("<I", lapic, off, word)
    regs = struct.pack("<18Q", *([0] * 16), rip, rflags)
    events = bytearray(64)
    for off, value in (flags or {}).items():     # struct kvm_vcpu_events byte offsets
        events[off] = value
    if injecting is not None:
        events[8], events[9] = 1, injecting
    io = bytearray(8 + 512)
    struct.pack_into("<I", io, 8 + 16, ioapic_irr)
    for gsi, entry in (pins or {}).items():
        struct.pack_into("<Q", io, 8 + 24 + 8 * gsi, entry)
    body = {"vm": {"ioapic": bytes(io)},
            "vcpu": [{"regs": regs, "lapic": bytes(lapic), "events": bytes(events),
                      "mp_state": 3}]}
    return encode((b"VMMDSTAT", 1, 1), body)


def test_it_names_the_vectors_requested_and_in_service_and_where_the_vcpu_is():
    out = irqview.describe(blob(irr=(0x23, 0xec), isr=(0x41,), injecting=0x30), {})
    assert "vCPU 0: rip 0x1234 IF 1 mp_state 3 injecting 0x30" in out
    assert "IRR ['0x23', '0xec'] ISR ['0x41']" in out


def test_it_shows_each_device_pin_masked_or_not_and_its_pending_bit():
    pins = {5: 0x21 | 1 << 16, 6: 0x22 | 1 << 15 | 1 << 14 | 1 << 56}
    out = irqview.describe(blob(pins=pins, ioapic_irr=1 << 6),
                           {"VIRTIO_BLK": 5, "VIRTIO_VSOCK": 6, "VIRTIO_NET": -1})
    assert "VIRTIO_BLK: I/O APIC pin 5: vector 0x21 masked edge dest 0" in out
    assert "VIRTIO_VSOCK: I/O APIC pin 6: vector 0x22 level remote-irr dest 1 irr" in out
    assert "VIRTIO_NET" not in out


def test_a_queue_line_says_when_its_driver_wants_an_interrupt():
    from vmmd.microvm import _wants
    assert _wants({"used_event": 0, "avail_flags": 0}) == "@0"        # Linux: callbacks off
    assert _wants({"used_event": 812, "avail_flags": 1}) == "@812"    # EVENT_IDX wins
    assert _wants({"used_event": -1, "avail_flags": 1}) == "!"
    assert _wants({"used_event": -1, "avail_flags": 0}) == ""


def test_a_vcpu_that_may_not_take_an_interrupt_says_why():
    out = irqview.describe(blob(irr=(0xec,)), {})
    assert out.endswith("TPR 0x0"), out                      # nothing holds it back
    out = irqview.describe(blob(irr=(0xec,), flags={11: 1, 3: 1, 1: 14, 14: 1},
                                apic_on=False), {})
    assert out.endswith("TPR 0x0 shadow 0x1 exception 14 pending NMI masked APIC off"), out
