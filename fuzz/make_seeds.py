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


def main():
    for name, seeds in (("virtq", virtq_seeds()), ("vsock", vsock_seeds())):
        d = HERE / "corpus" / name
        d.mkdir(parents=True, exist_ok=True)
        for k, v in seeds.items():
            (d / k).write_bytes(v)


if __name__ == "__main__":
    main()
