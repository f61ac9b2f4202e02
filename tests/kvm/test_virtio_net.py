"""virtio-net driven by the CPL3 guest driver (tests/guests/virtio.c, MODE_NET) on the local KVM,
with a Python Unix-socket peer as the backend speaking passt's framing (a 4-byte big-endian
length before each frame): frames both ways intact and in order, the egress policy (a denied
SYN answered with a reset, a change applying to the next frame), the link going down with the
backend, and a snapshot restored with another MAC and another backend."""
import queue
import socket
import struct
import threading
import time

import pytest

from guests import PARAMS
from test_virtio import boot, boot_until_mark, devices, results, wait_results
from vmmd.native import VM, Backend, Device, DeviceType, NetRule, VmmError

pytestmark = pytest.mark.kvm

MODE_NET = 6
MODE_NET_MRG = 7
MAC_A = bytes.fromhex("020000000a0a")
MAC_B = bytes.fromhex("020000000b0b")
PEER = bytes.fromhex("029999999999")
SYN_PORT_BASE = 40000


def net(path, mac):
    return Device(DeviceType.VIRTIO_NET, path=str(path), mac=mac)


class Peer:
    """The backend: listens where the device connects, then carries length-prefixed frames."""

    def __init__(self, path):
        self.lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lst.bind(str(path))
        self.lst.listen(1)
        self.conn = None
        self.buf = b""

    def accept(self):
        self.lst.settimeout(10)
        self.conn, _ = self.lst.accept()
        self.conn.settimeout(10)
        return self

    def send(self, frame):
        self.conn.sendall(struct.pack(">I", len(frame)) + frame)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.conn.recv(65536)
            assert chunk, f"the device closed the backend stream after {len(self.buf)} bytes"
            self.buf += chunk

    def recv(self):
        self._need(4)
        n, = struct.unpack(">I", self.buf[:4])
        assert 14 <= n <= 65549, n
        self._need(4 + n)
        frame, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return frame

    def quiet(self, seconds=0.2):
        """True if nothing arrives for a while."""
        self.conn.settimeout(seconds)
        try:
            chunk = self.conn.recv(65536)
        except socket.timeout:
            return not self.buf
        finally:
            self.conn.settimeout(10)
        self.buf += chunk
        return False

    def close(self):
        for s in (self.conn, self.lst):
            if s is not None:
                s.close()


def arp_like(seq, size):
    """A frame the filter always lets out (ethertype ARP), carrying a sequence number."""
    body = struct.pack(">I", seq) + bytes((seq + i) & 0xff for i in range(size - 18))
    return MAC_A + PEER + b"\x08\x06" + body


def udp_to(dst, port, payload=b"x" * 32):
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                     socket.inet_aton("10.0.2.15"), socket.inet_aton(dst))
    return MAC_A + PEER + b"\x08\x00" + ip + struct.pack(">HHHH", 5000, port, 8 + len(payload),
                                                         0) + payload


def echoed(frame, mac):
    """What the guest sends back for `frame`: to its source, from the config's MAC."""
    return frame[6:12] + mac + frame[12:]


def boot_net(vm):
    boot_until_mark(vm, MODE_NET, 0x4e00, "virtio-net")


def echo(peer, frame, mac):
    peer.send(frame)
    got = peer.recv()
    assert got == echoed(frame, mac)


def send_syn(vm, seq, dst, port):
    addr, = struct.unpack(">I", socket.inet_aton(dst))
    vm.mem_write(PARAMS + 0x80 + 16, struct.pack("<QQ", addr, port))
    vm.mem_write(PARAMS + 0x80 + 32, struct.pack("<Q", seq))
    wait_results(vm, 3, seq - 1)


def test_net_frames_arrive_intact_and_in_order_both_ways(tmp_path):
    peer = Peer(tmp_path / "n.sock")
    with VM.create(1, 64 << 20, devices=devices(net(tmp_path / "n.sock", MAC_A))) as vm:
        peer.accept()
        boot_net(vm)
        frames = [arp_like(i, 60 + (i * 97) % 1455) for i in range(300)]
        errors = queue.Queue()

        def sender():   # the guest's echoes come back while we send: no deadlock on full buffers
            try:
                for f in frames:
                    peer.send(f)
            except OSError as e:
                errors.put(e)
        t = threading.Thread(target=sender)
        t.start()
        got = [peer.recv() for _ in frames]
        t.join()
        assert errors.empty()
        assert got == [echoed(f, MAC_A) for f in frames]
        st = vm.net_stats(0)
        assert st.rx_frames == st.tx_frames == len(frames)
        assert st.rx_bytes == st.tx_bytes == sum(len(f) for f in frames)
        assert st.link_up and st.rx_dropped == st.tx_dropped == st.tx_denied == 0
        assert wait_results(vm, 0, len(frames) - 1) == len(frames)   # counted after its send
    peer.close()


def test_net_mergeable_rx_buffers_carry_frames_larger_than_one_buffer_intact(tmp_path):
    """A driver with VIRTIO_NET_F_MRG_RXBUF and 256-byte buffers (its whole ring holds 4 KiB):
    frames up to 4000 bytes come over as many buffers as they need, in order."""
    peer = Peer(tmp_path / "n.sock")
    with VM.create(1, 64 << 20, devices=devices(net(tmp_path / "n.sock", MAC_A))) as vm:
        peer.accept()
        boot(vm, MODE_NET_MRG, n=256)
        deadline = time.monotonic() + 20
        while vm.stats()["debug_mark"] != 0x4e01:
            assert time.monotonic() < deadline, "the guest's mergeable virtio-net never came up"
            time.sleep(0.002)
        frames = [arp_like(i, 60 + (i * 389) % 3941) for i in range(120)]
        for f in frames:
            echo(peer, f, MAC_A)
        st = vm.net_stats(0)
        assert st.rx_frames == st.tx_frames == len(frames) and st.rx_dropped == 0
        r = results(vm)
        assert r[0] == len(frames) and r[2] == 0
        assert r[3] == -(-(12 + max(len(f) for f in frames)) // 256)   # buffers of the largest
    peer.close()


def test_net_denied_syn_comes_back_as_reset_and_a_policy_change_applies_to_the_next_frame(
        tmp_path):
    peer = Peer(tmp_path / "n.sock")
    with VM.create(1, 64 << 20, devices=devices(net(tmp_path / "n.sock", MAC_A))) as vm:
        peer.accept()
        vm.net_set_policy(0, [NetRule("10.0.0.0/8", allow=False)], default_allow=True)
        boot_net(vm)
        send_syn(vm, 1, "10.1.2.3", 80)
        wait_results(vm, 2, 0)                       # the reset reached the guest's driver
        assert peer.quiet()                          # and the SYN never left
        # a UDP frame: denied the same way, and dropped without an answer
        peer.send(udp_to("10.9.9.9", 53))
        probe = arp_like(7, 80)
        echo(peer, probe, MAC_A)                     # the first thing out is the probe's echo
        assert vm.net_stats(0).tx_denied == 2
        # allow 10/8 while running: the very next SYN goes out
        vm.net_set_policy(0, [NetRule("10.0.0.0/8", proto=6, ports=(80, 80), allow=True)],
                          default_allow=False)
        send_syn(vm, 2, "10.1.2.3", 80)
        syn = peer.recv()
        assert syn[12:14] == b"\x08\x00" and syn[6:12] == MAC_A
        assert syn[23] == 6 and socket.inet_ntoa(syn[30:34]) == "10.1.2.3"
        sport, dport = struct.unpack(">HH", syn[34:38])
        assert (sport, dport, syn[47]) == (SYN_PORT_BASE + 2, 80, 0x02)
        send_syn(vm, 3, "10.1.2.3", 22)              # another port: default deny
        wait_results(vm, 2, 1)
        assert peer.quiet()
        peer.send(udp_to("192.0.2.1", 53))           # denied by default: no echo comes out
        echo(peer, arp_like(8, 80), MAC_A)
        st = vm.net_stats(0)
        assert st.tx_denied == 4 and results(vm)[2] == 2
    peer.close()


def test_net_link_goes_down_with_the_backend_and_the_vm_runs_on(tmp_path):
    peer = Peer(tmp_path / "n.sock")
    with VM.create(1, 64 << 20, devices=devices(net(tmp_path / "n.sock", MAC_A))) as vm:
        peer.accept()
        boot_net(vm)
        vm.net_set_policy(0, [], default_allow=True)
        echo(peer, arp_like(1, 100), MAC_A)
        peer.close()
        deadline = time.monotonic() + 10
        while vm.net_stats(0).link_up:
            assert time.monotonic() < deadline, "the link stayed up without a backend"
            time.sleep(0.01)
        vm.mem_write(PARAMS + 0x80 + 32, struct.pack("<Q", 1))   # the guest sends a SYN
        wait_results(vm, 3, 0)
        assert vm.net_stats(0).tx_dropped == 1
        assert vm.state.name == "RUNNING"
        with pytest.raises(VmmError, match="no virtio-net device with id 5"):
            vm.net_stats(5)


def test_net_refuses_a_backend_nobody_listens_on(tmp_path):
    with pytest.raises(VmmError, match="nobody listens"):
        VM.create(1, 64 << 20, devices=devices(net(tmp_path / "none.sock", MAC_A)))


@pytest.mark.parametrize("backend", [Backend.MMAP, Backend.UFFD])
def test_net_restore_takes_a_new_mac_and_a_new_backend(tmp_path, backend):
    a, b = Peer(tmp_path / "a.sock"), Peer(tmp_path / "b.sock")
    with VM.create(1, 64 << 20, devices=devices(net(tmp_path / "a.sock", MAC_A))) as vm:
        a.accept()
        boot_net(vm)
        echo(a, arp_like(1, 200), MAC_A)
        vm.pause()
        vm.snapshot(tmp_path / "snap")
        vm.resume()
        echo(a, arp_like(2, 200), MAC_A)             # the original goes on with its backend
        with VM.restore(tmp_path / "snap", backend,
                        devices=devices(net(tmp_path / "b.sock", MAC_B))) as r:
            b.accept()
            r.start()
            for i in range(20):                      # the copy, on its own backend and MAC
                echo(b, arp_like(100 + i, 300), MAC_B)
            r.net_set_policy(0, [], default_allow=True)
            echo(b, udp_to("192.0.2.1", 9), MAC_B)
            assert r.net_stats(0).link_up
            echo(a, arp_like(3, 200), MAC_A)         # both run side by side
            assert a.quiet()
    a.close()
    b.close()
