"""The guest agent run on this machine as a normal process on a Unix socket, driven through
vmmd/agent.py. No KVM: everything but the whole-machine ops (freeze, thaw, sync), which are
refused here (the agent runs without --system-ops) and exercised in tests/e2e inside guests."""
from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import signal
import socket
import subprocess
import time

import msgpack
import pytest

from vmmd.agent import Agent, AgentError, ProtocolError
from vmmd.images import agentbuild

MiB = 1 << 20


@pytest.fixture(scope="module")
def agent_proc(tmp_path_factory):
    """The agent, listening on a Unix socket in a temporary directory."""
    binary = agentbuild.build(machine_arch())
    d = tmp_path_factory.mktemp("agent")
    sock = d / "agent.sock"
    p = subprocess.Popen([str(binary), "--listen", f"unix:{sock}", "--run-dir", str(d / "run")],
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"the agent did not start: {p.stderr.read().decode()}")
        time.sleep(0.01)
    yield p, sock, d
    p.kill()
    p.wait()


@pytest.fixture
def agent(agent_proc):
    p, sock, _ = agent_proc
    assert p.poll() is None, "the agent died"
    return Agent.unix(sock)


def machine_arch() -> str:
    import platform
    return platform.machine()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --- ping ---

def test_ping_reports_version_kernel_and_generation(agent):
    info = run(agent.ping())
    assert info["version"] == "0.1.0"
    assert info["kernel"] == os.uname().release
    assert info["machine"] == os.uname().machine
    assert info["generation"] == 0
    assert info["system_ops"] is False


# --- exec ---

def test_exec_streams_stdin_through_cat(agent):
    data = os.urandom(8 * MiB + 123)
    r = run(agent.run(["cat"], input=data))
    assert r.code == 0
    assert len(r.stdout) == len(data) and sha(r.stdout) == sha(data)


def test_exec_delivers_64_mib_of_stdout_intact(agent, tmp_path):
    f = tmp_path / "big"
    data = os.urandom(64 * MiB)
    f.write_bytes(data)
    r = run(agent.run(["cat", str(f)]))
    assert r.code == 0 and r.stderr == b""
    assert sha(r.stdout) == sha(data)


def test_exec_separates_stdout_stderr_and_reports_exit_code(agent):
    r = run(agent.run(["sh", "-c", "echo out; echo err >&2; exit 7"]))
    assert (r.stdout, r.stderr, r.exit.code, r.exit.signal) == (b"out\n", b"err\n", 7, None)


def test_exec_reports_death_by_signal(agent):
    r = run(agent.run(["sh", "-c", "kill -KILL $$"]))
    assert r.exit.code is None and r.exit.signal == signal.SIGKILL


def test_signal_op_reaches_a_running_process(agent):
    async def go():
        p = await agent.exec(["sleep", "60"], stdin=False)
        await agent.signal(p.pid, signal.SIGTERM)
        return await p.wait()
    st = run(go())
    assert st.signal == signal.SIGTERM


def test_in_band_signal_reaches_the_process_group(agent):
    async def go():
        # the shell waits on a child sleep; a group signal ends both
        p = await agent.exec(["sh", "-c", "sleep 60; echo not reached"])
        await asyncio.sleep(0.2)
        await p.send_signal(signal.SIGKILL, group=True)
        return await p.stdout.read(), await p.wait()
    out, st = run(go())
    assert out == b"" and st.signal == signal.SIGKILL


def test_signal_op_refuses_pids_it_did_not_start(agent):
    with pytest.raises(AgentError) as e:
        run(agent.signal(os.getpid(), signal.SIGTERM))
    assert e.value.code == "ESRCH"


def test_exec_applies_env_and_cwd(agent, tmp_path):
    r = run(agent.run(["sh", "-c", "echo $GREETING; pwd"], env={"GREETING": "hello there"},
                      cwd=str(tmp_path)))
    assert r.stdout.decode().splitlines() == ["hello there", str(tmp_path)]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_exec_runs_as_the_requested_user(agent):
    by_name = run(agent.run(["id", "-u"], user="nobody"))
    by_uid = run(agent.run(["id", "-u"], user=4321))
    assert by_name.stdout.strip() == b"65534"
    assert by_uid.stdout.strip() == b"4321"


def test_exec_failures_say_what_failed(agent, tmp_path):
    with pytest.raises(AgentError) as e:
        run(agent.run(["/no/such/program"]))
    assert e.value.code == "ENOENT" and "/no/such/program" in e.value.message
    with pytest.raises(AgentError) as e:
        run(agent.run(["true"], cwd=str(tmp_path / "missing")))
    assert e.value.code == "ENOENT" and "chdir" in e.value.message
    with pytest.raises(AgentError) as e:
        run(agent.run(["true"], user="no-such-user"))
    assert "no-such-user" in e.value.message


def test_exec_output_waits_for_a_slow_reader(agent):
    """Back-pressure: with nobody reading, the agent stops reading the child; its memory stays
    small while the child blocks on a full pipe."""
    async def go():
        p = await agent.exec(["cat", "/dev/zero"], stdin=False)
        await asyncio.sleep(1.0)
        handler = ppid(p.pid)
        rss = rss_kib(handler)
        written = proc_io(p.pid)
        await asyncio.sleep(0.5)
        still = proc_io(p.pid)
        await p.kill()
        return rss, written, still
    rss, written, still = run(go())
    assert rss < 32 * 1024, f"the exec handler holds {rss} KiB"
    assert still == written, "the child kept writing although nobody read"


def test_exec_is_killed_when_the_host_disconnects(agent):
    async def go():
        p = await agent.exec(["sleep", "60"])
        pid = p.pid
        await p.kill()
        return pid
    pid = run(go())
    deadline = time.monotonic() + 5
    while pathlib.Path(f"/proc/{pid}").exists() and state(pid) != "Z":
        assert time.monotonic() < deadline, "the process outlived its connection"
        time.sleep(0.02)


def test_pty_echoes_and_reports_window_size(agent):
    async def go():
        p = await agent.exec(["sh", "-c", "stty size; read line; echo got:$line; stty size"],
                             pty=(33, 101))
        out = b""
        async for chunk in p.stdout:
            out += chunk
            if b"33 101" in out:
                break
        await p.resize(40, 120)
        await p.write(b"hello\n")
        out += await p.stdout.read()
        return out, await p.wait()
    out, st = run(go())
    text = out.decode().replace("\r", "")
    assert st.code == 0
    assert "33 101\n" in text
    assert "hello\n" in text.split("33 101\n", 1)[1]     # the terminal echoed the input
    assert "got:hello\n40 120\n" in text


# --- files ---

def test_file_round_trip_100_mib_with_checksum(agent, tmp_path):
    data = os.urandom(100 * MiB)
    path = tmp_path / "round-trip"

    async def go():
        n = await agent.write_file(str(path), data, mode=0o600)
        back = await agent.read_bytes(str(path))
        return n, back
    n, back = run(go())
    assert n == len(data)
    assert sha(path.read_bytes()) == sha(data)
    assert sha(back) == sha(data)
    assert path.stat().st_mode & 0o777 == 0o600


def test_read_file_range_and_missing_file(agent, tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    assert run(agent.read_bytes(str(tmp_path / "f"), offset=3, length=4)) == b"3456"
    with pytest.raises(AgentError) as e:
        run(agent.read_bytes(str(tmp_path / "nope")))
    assert e.value.code == "ENOENT"


def test_write_file_streams_chunks_appends_and_makes_parents(agent, tmp_path):
    target = tmp_path / "a" / "b" / "log"

    async def gen():
        for i in range(5):
            yield f"line {i}\n".encode()
    run(agent.write_file(str(target), gen(), mkdirs=True))
    run(agent.write_file(str(target), [b"more\n"], append=True))
    assert target.read_text() == "".join(f"line {i}\n" for i in range(5)) + "more\n"


def test_atomic_write_keeps_the_old_file_when_the_stream_breaks(agent, tmp_path):
    target = tmp_path / "config"
    target.write_text("old")

    async def broken():
        yield b"new data that never completes"
        raise RuntimeError("the host fell over")
    with pytest.raises(RuntimeError):
        run(agent.write_file(str(target), broken(), atomic=True))
    deadline = time.monotonic() + 5
    while [p for p in os.listdir(tmp_path) if ".vmmd-" in p]:
        assert time.monotonic() < deadline, os.listdir(tmp_path)
        time.sleep(0.02)
    assert target.read_text() == "old"
    run(agent.write_file(str(target), b"new", atomic=True))
    assert target.read_text() == "new"


def test_stat_and_list_dir(agent, tmp_path):
    (tmp_path / "file").write_bytes(b"x" * 1234)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("file")
    (tmp_path / b"bad-\xff-name".decode(errors="surrogateescape")).write_bytes(b"")
    st = run(agent.stat(str(tmp_path / "file")))
    assert (st["type"], st["size"]) == ("file", 1234)
    assert run(agent.stat(str(tmp_path / "link"), follow=False))["target"] == "file"
    entries = {e["name"]: e for e in run(agent.list_dir(str(tmp_path)))}
    assert entries["file"]["size"] == 1234
    assert entries["sub"]["type"] == "dir"
    assert entries["link"]["type"] == "symlink"
    assert os.fsencode([n for n in entries if n.startswith("bad-")][0]) == b"bad-\xff-name"


def test_list_dir_streams_many_entries(agent, tmp_path):
    for i in range(1000):
        (tmp_path / f"f{i:04}").touch()
    names = sorted(e["name"] for e in run(agent.list_dir(str(tmp_path))))
    assert names == [f"f{i:04}" for i in range(1000)]


# --- port-forward ---

def test_port_forward_relays_both_ways_and_passes_half_close(agent):
    async def go():
        async def handle(r, w):             # upper-cases everything until EOF, then closes
            while chunk := await r.read(65536):
                w.write(chunk.upper())
                await w.drain()
            w.write(b"<bye>")
            w.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            r, w = await agent.forward(port)
            payload = os.urandom(3 * MiB).hex().encode()[: 4 * MiB]
            w.write(payload)
            await w.drain()
            w.write_eof()
            got = await r.read()                # until the server's close comes through
            w.close()
            return payload, got
    payload, got = run(go())
    assert got == payload.upper() + b"<bye>"


def test_port_forward_to_a_closed_port_is_refused(agent):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(AgentError) as e:
        run(agent.forward(port))
    assert e.value.code == "ECONNREFUSED"


# --- hooks ---

def test_hooks_run_commands_and_http_requests_with_timeouts(agent):
    async def go():
        requests = []

        async def http(r, w):
            requests.append(await r.readuntil(b"\r\n\r\n"))
            w.write(b"HTTP/1.0 204 No Content\r\n\r\n")
            await w.drain()
            w.close()
        server = await asyncio.start_server(http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await agent.set_hooks({
                "run": {"kind": "exec", "argv": ["sh", "-c", "echo started; exit 3"]},
                "suspend": {"kind": "http", "port": port, "path": "/suspend"},
                "terminate": {"kind": "exec", "argv": ["sleep", "10"], "timeout_ms": 200},
            })
            results = [await agent.hook(e) for e in ("run", "suspend", "terminate", "resume")]
        return results, requests
    (ran, suspend, term, resume), requests = run(go())
    assert (ran["status"], ran["output"]) == (3, b"started\n")
    assert suspend["status"] == 204 and requests[0].startswith(b"POST /suspend HTTP/1.0\r\n")
    assert term["timed_out"] and term["signal"] == signal.SIGKILL and term["elapsed_ms"] < 5000
    assert resume["configured"] is False


def test_hooks_set_refuses_bad_actions(agent):
    for hooks in ({"reboot": {"kind": "exec", "argv": ["true"]}},
                  {"run": {"kind": "teleport"}},
                  {"run": {"kind": "http", "port": 80, "path": "/x\r\nInjected: 1"}},
                  {"run": {"kind": "exec", "argv": []}}):
        with pytest.raises(AgentError):
            run(agent.set_hooks(hooks))


# --- the whole-machine ops stay off outside a guest ---

def test_freeze_thaw_and_sync_are_refused_without_system_ops(agent):
    for call in (agent.freeze(), agent.thaw(), agent.sync_after_restore()):
        with pytest.raises(AgentError) as e:
            run(call)
        assert e.value.code == "EPERM"


# --- hostile input ---

def raw(sock: pathlib.Path, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends bytes on a fresh connection, returns everything the agent sent back."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(sock))
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    s.close()
    return out


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def error_of(reply: bytes) -> dict:
    assert len(reply) >= 4, "the agent sent nothing"
    n = int.from_bytes(reply[:4], "big")
    msg = msgpack.unpackb(reply[4:4 + n])
    assert msg["t"] == "error", msg
    return msg


HOSTILE = {
    "oversized length": b"\xff\xff\xff\xff" + b"x" * 100,
    "zero length": b"\0\0\0\0",
    "not msgpack": frame(b"\xc1\xc1\xc1"),
    "a map claiming 2^32 entries": frame(b"\xdf\xff\xff\xff\xff\xa2op"),
    "an array claiming 2^32 entries": frame(b"\x81\xa2op\xdd\xff\xff\xff\xff"),
    "a string longer than the frame": frame(b"\x81\xa2op\xdb\x7f\xff\xff\xff"),
    "nesting 200 deep": frame(b"\x81\xa2op" + b"\x91" * 200 + b"\xc0"),
    "trailing bytes": frame(msgpack.packb({"op": "ping"}) + b"\x00"),
    "not a map": frame(msgpack.packb(["op", "ping"])),
    "no op": frame(msgpack.packb({"x": 1})),
    "unknown op": frame(msgpack.packb({"op": "format-disk"})),
    "op with a NUL": frame(msgpack.packb({"op": "pi\0ng"})),
    "ext type": frame(b"\x81\xa2op\xd4\x01\x00"),
    "exec argv of ints": frame(msgpack.packb({"op": "exec", "argv": [1, 2]})),
    "exec huge window": frame(msgpack.packb({"op": "exec", "argv": ["true"],
                                             "pty": {"rows": 1 << 40}})),
    "path too long": frame(msgpack.packb({"op": "stat", "path": "a" * 5000})),
    "negative offset": frame(msgpack.packb({"op": "read_file", "path": "/etc/passwd",
                                            "offset": -1})),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_malformed_frame_gets_an_error_and_the_agent_keeps_serving(agent_proc, agent, name):
    p, sock, _ = agent_proc

    async def go():
        # a connection that is mid-operation while the hostile one arrives
        proc = await agent.exec(["cat"])
        reply = await asyncio.to_thread(raw, sock, HOSTILE[name])
        await proc.write(b"still here\n")
        await proc.close_stdin()
        return reply, await proc.stdout.read(), await proc.wait(), await agent.ping()
    reply, out, st, ping = run(go())
    err = error_of(reply)
    assert err["message"]
    assert out == b"still here\n" and st.code == 0
    assert ping["version"] and p.poll() is None


def test_truncated_frame_then_close_leaves_the_agent_serving(agent_proc, agent):
    p, sock, _ = agent_proc
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(sock))
    s.sendall(b"\0\0\1\0" + b"\x81")        # promises 256 bytes, sends 1, hangs up
    s.close()
    assert run(agent.ping())["version"] and p.poll() is None


def test_bad_frame_inside_an_exec_stream_ends_only_that_exec(agent):
    async def go():
        proc = await agent.exec(["sleep", "60"])
        await proc.conn.send({"t": "launch-missiles"})
        with pytest.raises(AgentError) as e:
            await proc.wait()
        return e.value, await agent.ping()
    err, ping = run(go())
    assert "launch-missiles" in err.message and ping["version"]


def test_many_connections_at_once(agent):
    async def go():
        return await asyncio.gather(*[agent.run(["echo", str(i)]) for i in range(40)],
                                    *[agent.ping() for _ in range(40)])
    results = run(go())
    assert [r.stdout for r in results[:40]] == [f"{i}\n".encode() for i in range(40)]


def test_client_refuses_oversized_frames_from_the_agent(tmp_path):
    """The host side bounds what it reads, too."""
    path = tmp_path / "fake.sock"

    async def go():
        async def fake(r, w):
            await r.read(100)
            w.write(b"\x7f\xff\xff\xff")
            await w.drain()
            w.close()
        server = await asyncio.start_unix_server(fake, str(path))
        async with server:
            with pytest.raises(ProtocolError, match="frame length"):
                await Agent.unix(path).ping()
    run(go())


def test_a_caller_deadline_holds_while_the_agent_stops_reading(tmp_path):
    """A guest that stops taking bytes (stalled or stopped) must not hold a caller past its own
    deadline: cancelling a write_file stuck in drain used to wait in close() for the unsent
    bytes, and asyncio.wait_for waits for the cancelled call. Here the stand-in agent accepts
    the request and then reads nothing; the deadline must end the call, in a thread so that a
    hang fails the test instead of stopping the run."""
    import threading
    path = tmp_path / "stuck.sock"
    outcome = []

    async def go():
        held = []

        async def stuck(r, w):
            head = await r.readexactly(4)
            await r.readexactly(int.from_bytes(head, "big"))
            body = msgpack.packb({"t": "ok"})
            w.write(len(body).to_bytes(4, "big") + body)
            await w.drain()
            held.append(w)                     # keeps the stream open, never reads again
            await asyncio.sleep(3600)
        server = await asyncio.start_unix_server(stuck, str(path))
        async with server:
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(Agent.unix(path).write_file("/x", b"\0" * (32 * MiB)), 1.0)
            except asyncio.TimeoutError:
                outcome.append(time.monotonic() - t0)
            for w in held:
                w.transport.abort()

    t = threading.Thread(target=asyncio.run, args=(go(),), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "write_file outlived its caller's deadline: close waits on the guest"
    assert outcome, "the call ended some other way than by its deadline"


# --- helpers reading /proc ---

def ppid(pid: int) -> int:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def state(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def proc_io(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


def test_hybrid_vsock_client_speaks_connect_then_frames(agent_proc, tmp_path):
    """Agent.hybrid: "CONNECT 1024\\n" / "OK <port>\\n" on the VMM's Unix socket, then the
    protocol. A stand-in for the VMM's socket relays to the agent after the handshake."""
    _, sock, _ = agent_proc
    uds = tmp_path / "vsock.sock"
    ports = []

    async def go():
        async def vmm(r, w):
            line = await r.readline()
            ports.append(line)
            if line != b"CONNECT 1024\n":
                w.write(b"ERR\n")
                w.close()
                return
            ar, aw = await asyncio.open_unix_connection(str(sock))
            w.write(b"OK 1073741824\n")

            async def pipe(src, dst):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()
            await asyncio.gather(pipe(r, aw), pipe(ar, w))
        server = await asyncio.start_unix_server(vmm, str(uds))
        async with server:
            ping = await Agent.hybrid(uds).ping()
            with pytest.raises(ProtocolError, match="CONNECT 5"):
                await Agent.hybrid(uds, port=5).ping()
            return ping
    assert run(go())["version"] and ports[0] == b"CONNECT 1024\n"


def test_connections_over_the_limit_get_an_error_not_a_hang(tmp_path):
    binary = agentbuild.build(machine_arch())
    sock = tmp_path / "a.sock"
    p = subprocess.Popen([str(binary), "--listen", f"unix:{sock}", "--run-dir",
                          str(tmp_path / "run"), "--max-conns", "1"], stderr=subprocess.DEVNULL)
    try:
        while not sock.exists():
            time.sleep(0.01)
        a = Agent.unix(sock)

        async def go():
            busy = await a.exec(["sleep", "60"])        # the one connection allowed
            with pytest.raises(AgentError) as e:
                await a.ping()
            await busy.kill()
            for _ in range(100):                         # served again once it is reaped
                try:
                    return e.value, await a.ping()
                except AgentError:
                    await asyncio.sleep(0.05)
        err, ping = run(go())
        assert err.code == "EAGAIN" and ping["version"]
    finally:
        p.kill()
        p.wait()


def test_agent_client_has_the_shape_the_daemon_uses(agent_proc, tmp_path):
    """vmmd/api/agent_bridge.py's expectations, through a hybrid-vsock stand-in."""
    from vmmd.agent import AgentClient
    _, sock, _ = agent_proc
    uds = tmp_path / "vsock.sock"

    async def go():
        async def vmm(r, w):
            await r.readline()
            ar, aw = await asyncio.open_unix_connection(str(sock))
            w.write(b"OK 1\n")

            async def pipe(src, dst):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            await asyncio.gather(pipe(r, aw), pipe(ar, w), return_exceptions=True)
        server = await asyncio.start_unix_server(vmm, str(uds))
        async with server:
            client = await AgentClient.connect(uds)
            proc = await client.exec(["sh", "-c", "echo out; read x; echo $x >&2; kill -TERM $$"])
            await proc.write_stdin(b"typed\n")
            await proc.close_stdin()
            events = [e async for e in proc.output()]
            n = await client.write_file(str(tmp_path / "d" / "f"), [b"ab", b"c"], make_parents=True)
            back = b"".join([c async for c in client.read_file(str(tmp_path / "d" / "f"))])
            tail = b"".join([c async for c in client.read_file(str(tmp_path / "d" / "f"),
                                                               offset=1, length=0)])
            await client.close()
            with pytest.raises(ConnectionError):
                await AgentClient.connect(tmp_path / "nothing.sock")
            return events, n, back, tail
    events, n, back, tail = run(go())
    assert events == [("stdout", b"out\n"), ("stderr", b"typed\n"), ("exit", (128 + 15, 15))]
    assert (n, back, tail) == (3, b"abc", b"bc")


def test_exec_is_killed_when_the_host_goes_while_stdin_waits(agent):
    """A child that never reads stdin, a host that sent more than the pipe holds and left: the
    agent notices the hang-up although it is not reading the connection."""
    async def go():
        p = await agent.exec(["sleep", "60"])
        try:
            await asyncio.wait_for(p.write(b"x" * (4 * MiB)), 1.0)
        except asyncio.TimeoutError:
            pass
        pid = p.pid
        await p.kill()
        return pid
    pid = asyncio.run(asyncio.wait_for(go(), 10))
    deadline = time.monotonic() + 5
    while pathlib.Path(f"/proc/{pid}").exists() and state(pid) != "Z":
        assert time.monotonic() < deadline, "the process outlived its connection"
        time.sleep(0.02)


def test_agent_errors_reach_grpc_callers_as_statuses(tmp_path):
    """What the daemon's data plane returns when the agent says no, or is not there."""
    from vmmd.agent import AgentError, ProtocolError
    from vmmd.api import agent_bridge
    from vmmd.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
    assert isinstance(agent_bridge.mapped(AgentError("no such file", 2, "ENOENT")), NotFound)
    assert isinstance(agent_bridge.mapped(AgentError("bad", 22, "EINVAL")), InvalidArgument)
    assert isinstance(agent_bridge.mapped(AgentError("busy", 16, "EBUSY")), FailedPrecondition)
    assert isinstance(agent_bridge.mapped(ProtocolError("gone")), Unavailable)

    async def nobody():
        return await agent_bridge.connect(str(tmp_path / "vsock.sock"), {}, timeout=0.2)
    with pytest.raises(Unavailable, match="unreachable"):
        run(nobody())
