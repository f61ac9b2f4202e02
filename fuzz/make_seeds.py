"""Writes the seed corpora (fuzz/corpus/*/): well-formed inputs the fuzzers start from and
mutate. Run it again after changing an input format; the seeds are committed."""
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def ring_mem(descs, heads, num, used_event=0):
    mem = bytearray(0x3000)
    for i, d in enumerate(descs):
        mem[16 * i:16 * i + 16] = d
    avail = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    mem[0x1000:0x1000 + len(avail)] = avail
    return bytes(mem)


def virtq_seeds():
    out = {}
    # one writable buffer
    out["single"] = bytes([4, 0]) + ring_mem([desc(0x4000, 64, 2)], [0], 16)
    # header, data, status: a block request's shape
    out["blk_like"] = bytes([4, 0]) + ring_mem(
        [desc(0x4000, 16, 1, 1), desc(0x5000, 4096, 3, 2), desc(0x6000, 1, 2)], [0], 16)
    # an indirect table
    table = desc(0x5000, 16, 1, 1) + desc(0x6000, 512, 2)
    mem = bytearray(ring_mem([desc(0x8000, 32, 4)], [0], 16))
    mem += bytes(0x8000 - len(mem)) + table
    out["indirect"] = bytes([4, 1]) + bytes(mem)
    # several chains, event idx
    out["many"] = bytes([3, 2]) + ring_mem(
        [desc(0x4000 + 0x100 * i, 0x100, 2) for i in range(8)], list(range(8)), 8)
    # a loop (must be refused)
    out["loop"] = bytes([2, 0]) + ring_mem([desc(0x4000, 8, 1, 1), desc(0x4000, 8, 1, 0)], [0], 4)
    return out


def vsock_hdr(src_cid, dst_cid, src_port, dst_port, length, typ, op, flags=0, buf_alloc=65536,
              fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, typ, op,
                       flags, buf_alloc, fwd_cnt)


def vsock_seeds():
    out = {}
    # each input is a sequence of guest packets: u16 length, then the packet bytes
    def seq(*pkts):   # byte 0 even: packets for the device's tx queue
        return b"\x00" + b"".join(struct.pack("<H", len(p)) + p for p in pkts)
    cid = 3
    out["connect_send_close"] = seq(
        vsock_hdr(cid, 2, 1025, 1234, 0, 1, 1),
        vsock_hdr(cid, 2, 1025, 1234, 5, 1, 5) + b"hello",
        vsock_hdr(cid, 2, 1025, 1234, 0, 1, 7),
        vsock_hdr(cid, 2, 1025, 1234, 0, 1, 4, flags=3),
        vsock_hdr(cid, 2, 1025, 1234, 0, 1, 3))
    out["response_credit"] = seq(
        vsock_hdr(cid, 2, 52, 1 << 30, 0, 1, 2),
        vsock_hdr(cid, 2, 52, 1 << 30, 0, 1, 6, buf_alloc=4096, fwd_cnt=100))
    out["bad_cid_type"] = seq(vsock_hdr(7, 2, 1, 2, 0, 2, 1), vsock_hdr(cid, 9, 1, 2, 0, 1, 1))
    # byte 0 odd: host lines and raw headers, NUL separated
    out["host_lines"] = (b"\x01CONNECT 52\n\x00CONNECT 4294967295\n\x00connect x\n\x00"
                         + vsock_hdr(cid, 2, 1, 2, 3, 1, 5) + b"abc")
    return out


def eth(ethertype, payload, dst=b"\x02\x99\x99\x99\x99\x99", src=b"\x02\x00\x00\x00\x00\x01"):
    return dst + src + struct.pack(">H", ethertype) + payload


def ip4(dst, proto, l4, frag=0):
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, frag, 64, proto, 0,
                      bytes([10, 0, 2, 15]), bytes(dst))
    return eth(0x0800, hdr + l4)


def tcp(sport, dport, flags, payload=b""):
    return struct.pack(">HHIIBBHHH", sport, dport, 0x11223344, 0, 5 << 4, flags, 64240, 0, 0) + payload


def udp(sport, dport, payload):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def net_seeds():
    out = {}
    arp = eth(0x0806, bytes(28), dst=b"\xff" * 6)
    syn = ip4([10, 1, 2, 3], 6, tcp(40000, 80, 0x02))
    dns = ip4([192, 0, 2, 1], 17, udp(40000, 53, b"q" * 20))
    dhcp = ip4([255, 255, 255, 255], 17, udp(68, 67, bytes(240)))
    frag = ip4([192, 0, 2, 1], 17, bytes(64), frag=100)

    # filter alone: byte 0 odd (bit 1 the default), rule count, 12-byte rules, the frame
    def rules(*rs):   # (addr, prefix, proto, lo, hi, flags[, first source port])
        return bytes([len(rs)]) + b"".join(
            struct.pack(">IBBHHBB", *r, 0) if len(r) == 6 else struct.pack(">IBBHHBB", *r)
            for r in rs)
    out["filter_syn_denied"] = b"\x01" + rules((10 << 24, 8, 0, 0, 0, 0)) + syn
    out["filter_ports"] = b"\x03" + rules((0xc0000200, 24, 6, 80, 443, 1),
                                           (0xc0000200, 24, 17, 53, 53, 0)) + dns
    out["filter_fragment"] = b"\x01" + rules((0xc0000200, 24, 17, 1, 65535, 1)) + frag
    out["filter_dhcp_arp"] = b"\x01" + rules() + dhcp
    synack = ip4([10, 0, 2, 2], 6, tcp(200, 51000, 0x12))
    out["filter_exposed_reply"] = b"\x01" + rules((0x0a000202, 32, 6, 0, 0, 0b11, 200)) + synack

    # the device: byte 0 even, byte 1 policy, records of kind, u16 length, bytes
    def rec(kind, data=b"", length=None):
        return bytes([kind]) + struct.pack("<H", len(data) if length is None else length) + data

    def framed(*frames):
        return b"".join(struct.pack(">I", len(f)) + f for f in frames)
    out["device_both_ways"] = b"\x00\x00" + b"".join([
        rec(3, length=2048), rec(3, length=2048), rec(0, arp), rec(1, dns), rec(0, syn),
        rec(2, framed(arp, dns)), rec(16, b"")])
    out["device_hostile"] = b"\x00\x01" + b"".join([
        rec(3, length=40), rec(2, framed(dns)), rec(5, dns), rec(0, b"short"),
        rec(11, length=4096), rec(2, struct.pack(">I", 0))])
    out["device_split_stream"] = b"\x00\x01" + b"".join([
        rec(3, length=4096), rec(2, framed(dns)[:7]), rec(2, framed(dns)[7:]),
        rec(0, dhcp), rec(16, b"")])
    return out


def main():
    for name, seeds in (("virtq", virtq_seeds()), ("vsock", vsock_seeds()), ("net", net_seeds())):
        d = HERE / "corpus" / name
        d.mkdir(parents=True, exist_ok=True)
        for k, v in seeds.items():
            (d / k).write_bytes(v)


if __name__ == "__main__":
    main()
