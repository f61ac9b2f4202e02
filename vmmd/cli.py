"""Command lines: `vmmd serve` (the daemon) and `vmmctl` (people and scripts talking to it)."""
from __future__ import annotations

import json
import sys

import typer

from .limits import Config

vmmd_app = typer.Typer(help="vmmd: the per-host MicroVM daemon.", no_args_is_help=True,
                       add_completion=False)


@vmmd_app.command()
def serve(
    state_dir: str = typer.Option("/var/lib/vmmd", "--state-dir", help="database, images, VMs"),
    config: str = typer.Option(None, "--config", help="TOML file with settings (see docs/daemon.md)"),
    socket: str = typer.Option(None, "--socket", help="Unix socket (default <state-dir>/vmmd.sock)"),
    tcp: str = typer.Option(None, "--tcp", help="also listen on host:port (e.g. 127.0.0.1:7777)"),
    restore_backend: str = typer.Option(None, "--restore-backend", help="mmap | uffd"),
    seccomp: str = typer.Option(None, "--seccomp", help="enforce | log | off"),
    cgroups: str = typer.Option(None, "--cgroups", help="auto | off"),
    min_idle_s: float = typer.Option(None, "--min-idle-s", help="lowest max_idle accepted (tests)"),
    log_level: str = typer.Option(None, "--log-level"),
):
    """Run the daemon (foreground; systemd Type=notify)."""
    import os
    # gRPC's C core writes plain-text INFO lines to stderr; the daemon's log is JSON lines
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from .daemon import run
    from .errors import VmmdError
    try:
        cfg = Config.load(config, state_dir=state_dir, socket=socket, tcp=tcp,
                          restore_backend=restore_backend, seccomp=seccomp, cgroups=cgroups,
                          min_idle_s=min_idle_s, log_level=log_level)
    except VmmdError as e:
        typer.echo(f"vmmd: {e}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run(cfg))


@vmmd_app.command()
def version():
    """Print the version."""
    from . import __version__
    typer.echo(__version__)


def vmmd_main() -> None:
    vmmd_app()


# ---------------------------------------------------------------------------------- vmmctl

ctl = typer.Typer(help="vmmctl: talk to a vmmd daemon. Tables for people, --json for scripts.",
                  no_args_is_help=True, add_completion=False)
images_app = typer.Typer(help="Images: register, list, inspect, delete.", no_args_is_help=True)
ctl.add_typer(images_app, name="images")

# exit codes: what went wrong, for scripts
EXIT = {"INVALID_ARGUMENT": 2, "NOT_FOUND": 3, "FAILED_PRECONDITION": 4,
        "RESOURCE_EXHAUSTED": 5, "UNAVAILABLE": 6, "ABORTED": 7, "DEADLINE_EXCEEDED": 8}


class Ctx:
    socket: str = ""
    json: bool = False
    _ch = None

    def channel(self):
        import grpc
        if self._ch is None:
            target = self.socket if ":" in self.socket and not self.socket.startswith("/") \
                else f"unix:{self.socket}"
            self._ch = grpc.insecure_channel(target)
        return self._ch

    def stubs(self):
        from .v1 import host_pb2_grpc, images_pb2_grpc, microvms_pb2_grpc
        ch = self.channel()
        return (images_pb2_grpc.ImageServiceStub(ch), microvms_pb2_grpc.MicroVMServiceStub(ch),
                host_pb2_grpc.HostServiceStub(ch))


C = Ctx()


@ctl.callback()
def _opts(socket: str = typer.Option(
              "/var/lib/vmmd/vmmd.sock", "--socket", "-s", envvar="VMMD_SOCKET",
              help="daemon socket path, or host:port for TCP"),
          json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    C.socket, C.json = socket, json_out


def _console():
    from rich.console import Console
    con = Console()
    if not con.is_terminal:
        con = Console(width=200)      # piped: no 80-column wrap of ids
    return con


def _run(what: str, fn):
    """Calls fn(); a spinner shows when it takes over a second; gRPC errors become exit codes."""
    import threading

    import grpc
    con = _console()
    status = None
    done = threading.Event()

    def spin():
        nonlocal status
        if not done.wait(1.0) and con.is_terminal and not C.json:
            status = con.status(what)
            status.start()
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        return fn()
    except grpc.RpcError as e:
        done.set()
        t.join()
        if status:
            status.stop()
        code = e.code().name if e.code() else "UNKNOWN"
        if C.json:
            typer.echo(json.dumps({"error": {"code": code, "message": e.details()}}))
        else:
            con.print(f"[red]error[/red] ({code}): {e.details()}", highlight=False)
        raise typer.Exit(EXIT.get(code, 1))
    finally:
        done.set()
        if status:
            status.stop()


def _dict(msg) -> dict:
    from google.protobuf.json_format import MessageToDict
    return MessageToDict(msg, preserving_proto_field_name=True)


def _emit(msgs, columns: list[tuple[str, str]], title: str = ""):
    rows = [_dict(m) for m in msgs]
    if C.json:
        typer.echo(json.dumps(rows if isinstance(msgs, list) else rows[0], indent=None))
        return
    from rich.table import Table
    t = Table(title=title or None, show_edge=False, header_style="bold")
    for key, head in columns:
        t.add_column(head, no_wrap=key in ("id", "image_id", "state"))
    for r in rows:
        t.add_row(*[_cell(r, key) for key, _ in columns])
    _console().print(t)


def _cell(r: dict, key: str) -> str:
    v = r
    for part in key.split("."):
        v = v.get(part, "") if isinstance(v, dict) else ""
    if isinstance(v, str) and v.startswith("MICROVM_STATE_"):
        v = v.removeprefix("MICROVM_STATE_")
    if isinstance(v, dict):
        v = ",".join(f"{k}={x}" for k, x in v.items())
    return str(v)


VM_COLS = [("id", "ID"), ("state", "STATE"), ("image_id", "IMAGE"), ("vcpus", "VCPUS"),
           ("memory_mib", "MEM MiB"), ("worker_pid", "PID"), ("running_time", "RUNNING"),
           ("labels", "LABELS"), ("reason", "REASON")]
IMG_COLS = [("id", "ID"), ("name", "NAME"), ("arch", "ARCH"), ("vcpus", "VCPUS"),
            ("memory_mib", "MEM MiB"), ("size_bytes", "BYTES"), ("microvms", "IN USE"), ("agent.present", "AGENT"),
            ("source", "SOURCE")]


def _labels(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep:
            raise typer.BadParameter(f"label {it!r}: use key=value")
        out[k] = v
    return out


def _dur(seconds: float | None):
    from google.protobuf.duration_pb2 import Duration
    if seconds is None:
        return None
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@images_app.command("ls")
def images_ls(label: list[str] = typer.Option(None, "--label", "-l", help="key=value filter")):
    """List images."""
    from .v1 import images_pb2 as ipb
    imgs, _, _ = C.stubs()
    r = _run("listing", lambda: imgs.ListImages(ipb.ListImagesRequest(labels=_labels(label))))
    _emit(list(r.images), IMG_COLS)


@images_app.command("register")
def images_register(
        snapshot_dir: str = typer.Argument(None, help="snapshot directory on the daemon's host"),
        from_vm: str = typer.Option(None, "--from-vm", help="take it from a running MicroVM"),
        name: str = typer.Option("", "--name"),
        debug_devices: bool = typer.Option(False, "--debug-devices",
                                           help="test guests: debug exit/mark ports"),
        agent: bool = typer.Option(False, "--agent", help="the image runs the guest agent"),
        linux: bool = typer.Option(False, "--linux", help="a Linux MicroVM's snapshot "
                                   "(vmmd.microvm): virtio blk/vsock/rng devices"),
        net: bool = typer.Option(False, "--net", help="with --linux: the snapshot has a NIC "
                                 "(vmmd.microvm LinuxSpec.net)"),
        rootfs: str = typer.Option("", "--rootfs", help="its root disk's base image (ext4)"),
        kernel: str = typer.Option("", "--kernel"), initrd: str = typer.Option("", "--initrd"),
        label: list[str] = typer.Option(None, "--label", "-l")):
    """Register an image from a snapshot directory or a running MicroVM."""
    import os

    from .v1 import images_pb2 as ipb
    imgs, _, _ = C.stubs()
    req = ipb.RegisterImageRequest(name=name, labels=_labels(label))
    if from_vm:
        req.microvm.microvm_id = from_vm
    elif snapshot_dir:
        req.snapshot.snapshot_dir = os.path.abspath(snapshot_dir)
        req.snapshot.devices.debug = debug_devices
        req.snapshot.devices.linux = linux
        req.snapshot.devices.net = net
        req.snapshot.agent.present = agent
        for key, path in (("rootfs", rootfs), ("kernel", kernel), ("initrd", initrd)):
            if path:
                setattr(req.snapshot, key, os.path.abspath(path))
    else:
        raise typer.BadParameter("give a snapshot directory or --from-vm")
    _emit([_run("registering", lambda: imgs.RegisterImage(req))], IMG_COLS)


@images_app.command("build")
def images_build(
        context: str = typer.Argument(..., help="the build context: a zip of the code"),
        file: str = typer.Option(..., "--file", "-f", help="the Dockerfile"),
        name: str = typer.Option("", "--name"),
        build_arg: list[str] = typer.Option(None, "--build-arg", help="KEY=VALUE"),
        label: list[str] = typer.Option(None, "--label", "-l")):
    """Build an image from a Dockerfile and a zip: each step's progress, then the image."""
    import grpc
    from rich.live import Live
    from rich.table import Table

    from .v1 import images_pb2 as ipb
    imgs, _, _ = C.stubs()
    with open(file) as f:
        dockerfile = f.read()
    with open(context, "rb") as f:
        data = f.read()
    req = ipb.BuildImageRequest(name=name, dockerfile=dockerfile, context_zip=data,
                                build_args=_labels(build_arg), labels=_labels(label))
    con = _console()
    steps: dict[str, list] = {}

    def table() -> Table:
        t = Table(show_header=True, header_style="bold")
        for col in ("STEP", "", "TIME", "LAST LINE"):
            t.add_column(col)
        for step, (text, cached, secs, last) in steps.items():
            t.add_row(step, "cached" if cached else "", f"{secs:.1f} s" if secs else "",
                      last[-100:])
        return t
    image = None
    try:
        with Live(table(), console=con, refresh_per_second=4,
                  transient=False, auto_refresh=con.is_terminal and not C.json) as live:
            for ev in imgs.BuildImage(req):
                if ev.HasField("image"):
                    image = ev.image
                    continue
                row = steps.setdefault(ev.step, [ev.log, False, 0.0, ""])
                row[1] = row[1] or ev.cached
                row[2] = ev.seconds or row[2]
                row[3] = ev.log
                if C.json:
                    typer.echo(json.dumps({"step": ev.step, "log": ev.log, "cached": ev.cached,
                                           "seconds": ev.seconds}))
                else:
                    live.update(table())
    except grpc.RpcError as e:
        code = e.code().name if e.code() else "UNKNOWN"
        con.print(f"[red]error[/red] ({code}): {e.details()}", highlight=False)
        raise typer.Exit(EXIT.get(code, 1))
    if image is not None:
        _emit([image], IMG_COLS)


ctl.command("build", help="Build an image from a Dockerfile and a zip (= images build).")(
    images_build)


@images_app.command("get")
def images_get(image_id: str):
    """Show one image."""
    from .v1 import images_pb2 as ipb
    imgs, _, _ = C.stubs()
    _emit([_run("", lambda: imgs.GetImage(ipb.GetImageRequest(image_id=image_id)))], IMG_COLS)


@images_app.command("rm")
def images_rm(image_id: str, force: bool = typer.Option(False, "--force",
                                                        help="terminate MicroVMs using it")):
    """Delete an image."""
    from .v1 import images_pb2 as ipb
    imgs, _, _ = C.stubs()
    r = _run("deleting", lambda: imgs.DeleteImage(ipb.DeleteImageRequest(image_id=image_id,
                                                                          force=force)))
    _emit([r], [("image_id", "DELETED"), ("terminated_microvms", "TERMINATED MICROVMS")])


@ctl.command()
def launch(image_id: str,
           vcpus: int = typer.Option(0, help="0: the image's"),
           memory_mib: int = typer.Option(0, help="0: the image's"),
           disk_mib: int = typer.Option(0),
           max_idle: float = typer.Option(None, help="seconds without requests before suspend"),
           no_auto_resume: bool = typer.Option(False, "--no-auto-resume"),
           retention: float = typer.Option(None, help="seconds a suspended MicroVM is kept"),
           max_runtime: float = typer.Option(None, help="seconds of running time"),
           env: list[str] = typer.Option(None, "--env", "-e", help="KEY=VALUE"),
           label: list[str] = typer.Option(None, "--label", "-l", help="key=value"),
           request_id: str = typer.Option("", help="idempotency key"),
           egress_default: str = typer.Option(None, "--egress-default",
                                              help="allow|deny (images with a network)"),
           allow: list[str] = typer.Option(None, "--allow", help="egress entry, e.g. "
                                           "10.0.2.2/32:8080, tcp:example.org:443"),
           deny: list[str] = typer.Option(None, "--deny", help="egress entry"),
           no_dns: bool = typer.Option(False, "--no-dns", help="no DNS for the guest"),
           expose: list[int] = typer.Option(None, "--expose", help="guest TCP port to reach "
                                            "from the host (port-forward --network)")):
    """Launch a MicroVM from an image."""
    from .v1 import microvms_pb2 as mpb
    from .v1 import types_pb2 as tpb
    _, vms, _ = C.stubs()
    idle = tpb.IdlePolicy()
    if max_idle is not None:
        idle.max_idle.CopyFrom(_dur(max_idle))
    if no_auto_resume:
        idle.auto_resume = False
    if retention is not None:
        idle.suspended_retention.CopyFrom(_dur(retention))
    req = mpb.LaunchRequest(image_id=image_id, vcpus=vcpus, memory_mib=memory_mib,
                            disk_mib=disk_mib, idle=idle, env=_labels(env),
                            labels=_labels(label), request_id=request_id)
    if max_runtime is not None:
        req.max_runtime.CopyFrom(_dur(max_runtime))
    if egress_default or allow or deny or no_dns or expose:
        req.network.egress.CopyFrom(_egress(egress_default, allow, deny, no_dns))
        req.network.expose_ports.extend(expose or [])
    _emit([_run("launching", lambda: vms.Launch(req))], VM_COLS)


def _egress(default, allow, deny, no_dns):
    from .v1 import microvms_pb2 as mpb
    if default not in (None, "allow", "deny"):
        raise typer.BadParameter("--egress-default is allow or deny")
    return mpb.EgressPolicy(deny_by_default=default == "deny", allow=allow or [],
                            deny=deny or [], no_dns=no_dns)


@ctl.command()
def egress(microvm_id: str,
           default: str = typer.Option("allow", "--default", help="allow|deny"),
           allow: list[str] = typer.Option(None, "--allow", help="egress entry"),
           deny: list[str] = typer.Option(None, "--deny", help="egress entry"),
           no_dns: bool = typer.Option(False, "--no-dns")):
    """Replace a MicroVM's egress policy (takes effect at once)."""
    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    req = mpb.SetEgressRequest(microvm_id=microvm_id,
                               egress=_egress(default, allow, deny, no_dns))
    _emit([_run("applying", lambda: vms.SetEgress(req))], VM_COLS)


@ctl.command("port-forward")
def port_forward(microvm_id: str,
                 ports: str = typer.Argument(..., help="LOCAL:GUEST"),
                 network: bool = typer.Option(False, "--network", help="through the MicroVM's "
                                              "NIC (an exposed port) instead of the agent")):
    """Listen on 127.0.0.1:LOCAL; each connection reaches GUEST in the MicroVM (Connect)."""
    import socket
    import threading

    import grpc

    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    try:
        local, guest = (int(x) for x in ports.split(":"))
    except ValueError:
        raise typer.BadParameter("ports are LOCAL:GUEST, e.g. 8080:80") from None

    def serve(conn: socket.socket) -> None:
        def requests():
            yield mpb.ConnectRequest(start=mpb.ConnectStart(microvm_id=microvm_id, port=guest,
                                                            network=network))
            while data := conn.recv(65536):
                yield mpb.ConnectRequest(data=data)
            yield mpb.ConnectRequest(close_write=True)
        try:
            for r in vms.Connect(requests()):
                conn.sendall(r.data)
        except grpc.RpcError as e:
            typer.echo(f"connection to {microvm_id}:{guest}: {e.code().name}: {e.details()}",
                       err=True)
        except OSError:
            pass
        finally:
            # shutdown, not only close: it wakes the request thread blocked in recv, and the
            # local client sees the end of the stream
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    lsock = socket.create_server(("127.0.0.1", local))
    typer.echo(f"forwarding 127.0.0.1:{lsock.getsockname()[1]} -> {microvm_id}:{guest}"
               f"{' (network)' if network else ''}", err=True)
    try:
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    except KeyboardInterrupt:
        pass
    finally:
        lsock.close()


@ctl.command("ls")
def ls(label: list[str] = typer.Option(None, "--label", "-l"),
       all_: bool = typer.Option(False, "--all", "-a", help="include TERMINATED")):
    """List MicroVMs."""
    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    r = _run("listing", lambda: vms.List(mpb.ListRequest(labels=_labels(label),
                                                          include_terminated=all_)))
    _emit(list(r.microvms), VM_COLS)


def _vm_cmd(rpc: str, req_name: str, what: str):
    def cmd(microvm_id: str):
        from .v1 import microvms_pb2 as mpb
        _, vms, _ = C.stubs()
        req = getattr(mpb, req_name)(microvm_id=microvm_id)
        _emit([_run(what, lambda: getattr(vms, rpc)(req))], VM_COLS)
    return cmd


ctl.command("get", help="Show one MicroVM.")(_vm_cmd("Get", "GetRequest", ""))
ctl.command("pause", help="Stop a MicroVM's vCPUs (memory kept).")(
    _vm_cmd("Pause", "PauseRequest", "pausing"))
ctl.command("suspend", help="Snapshot a MicroVM to disk and end its worker.")(
    _vm_cmd("Suspend", "SuspendRequest", "suspending"))
ctl.command("resume", help="Resume a PAUSED or SUSPENDED MicroVM.")(
    _vm_cmd("Resume", "ResumeRequest", "resuming"))
ctl.command("rm", help="Terminate a MicroVM.")(
    _vm_cmd("Terminate", "TerminateRequest", "terminating"))


@ctl.command()
def ping(microvm_id: str):
    """Touch a MicroVM (resets its idle timer, resumes it if suspended)."""
    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    r = _run("pinging", lambda: vms.Ping(mpb.PingRequest(microvm_id=microvm_id)))
    if C.json:
        typer.echo(json.dumps(_dict(r)))
    else:
        _emit([r.microvm], VM_COLS)


@ctl.command()
def watch(microvm_id: str = typer.Argument("", help="empty: all MicroVMs"),
          replay: bool = typer.Option(False, "--replay", help="stored events first")):
    """Stream lifecycle events until interrupted."""
    import grpc

    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    con = _console()
    call = vms.WatchEvents(mpb.WatchEventsRequest(microvm_id=microvm_id, replay=replay))
    try:
        for ev in call:
            d = _dict(ev)
            if C.json:
                typer.echo(json.dumps(d))
            else:
                p = "MICROVM_STATE_"
                con.print(f"{d.get('time', '')} {ev.microvm_id} "
                          f"{d.get('from_state', '').removeprefix(p)} -> "
                          f"{d.get('to_state', '').removeprefix(p)}  {ev.reason}", highlight=False)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            con.print(f"[red]error[/red] ({e.code().name}): {e.details()}")
            raise typer.Exit(EXIT.get(e.code().name, 1))
    except KeyboardInterrupt:
        call.cancel()


@ctl.command()
def host():
    """What this host is and how full it is."""
    from .v1 import host_pb2
    _, _, hs = C.stubs()
    r = _run("", lambda: hs.GetHostInfo(host_pb2.GetHostInfoRequest()))
    if C.json:
        typer.echo(json.dumps(_dict(r)))
        return
    from rich.table import Table
    t = Table(show_header=False, show_edge=False)
    for label, val in [("host", f"{r.hostname} {r.arch} {r.cpu_model}"),
                       ("kernel", r.kernel), ("vmmd", r.daemon_version),
                       ("capacity", f"{r.capacity.vcpus} vCPUs, {r.capacity.memory_mib} MiB"),
                       ("allocatable", f"{r.allocatable.vcpus} vCPUs, {r.allocatable.memory_mib} MiB"),
                       ("committed", f"{r.committed.vcpus} vCPUs, {r.committed.memory_mib} MiB"),
                       ("free", f"{r.free.vcpus} vCPUs, {r.free.memory_mib} MiB"),
                       ("microvms", ", ".join(f"{k}={v}" for k, v in sorted(r.microvms_by_state.items()) if v)),
                       ("images", str(len(r.cached_images))),
                       ("cgroups", f"v{r.cgroup_version}" if r.cgroup_version else "off"),
                       ("backend", r.restore_backend), ("draining", str(r.draining))]:
        t.add_row(f"[bold]{label}[/bold]", val)
    _console().print(t)


@ctl.command("exec")
def exec_(microvm_id: str, argv: list[str] = typer.Argument(..., help="program and arguments"),
          tty: bool = typer.Option(None, "--tty/--no-tty", help="default: when stdin is a terminal")):
    """Run a program in a MicroVM (needs a guest agent); exits with its status."""
    import os

    import grpc

    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    use_tty = sys.stdin.isatty() if tty is None else tty
    size = os.get_terminal_size() if use_tty and sys.stdout.isatty() else None

    def requests():
        yield mpb.ExecRequest(start=mpb.ExecStart(
            microvm_id=microvm_id, argv=argv, tty=use_tty,
            size=mpb.TerminalSize(rows=size.lines, cols=size.columns) if size else None))
        if not use_tty and not sys.stdin.isatty():
            while chunk := os.read(0, 65536):
                yield mpb.ExecRequest(stdin=chunk)
            yield mpb.ExecRequest(close_stdin=True)
    code = 0
    try:
        for r in vms.Exec(requests()):
            kind = r.WhichOneof("msg")
            if kind == "stdout":
                os.write(1, r.stdout)
            elif kind == "stderr":
                os.write(2, r.stderr)
            elif kind == "exit":
                code = r.exit.code if not r.exit.signal else 128 + r.exit.signal
    except grpc.RpcError as e:
        typer.echo(f"error ({e.code().name}): {e.details()}", err=True)
        raise typer.Exit(EXIT.get(e.code().name, 1))
    raise typer.Exit(code)


@ctl.command()
def cp(src: str, dst: str):
    """Copy a file in or out: `cp local VM:/path` or `cp VM:/path local` (needs a guest agent)."""
    import grpc

    from .v1 import microvms_pb2 as mpb
    _, vms, _ = C.stubs()
    try:
        if ":" in src and not src.startswith("/"):
            vm, path = src.split(":", 1)
            with open(dst, "wb") as f:
                for chunk in vms.ReadFile(mpb.ReadFileRequest(microvm_id=vm, path=path)):
                    f.write(chunk.data)
        elif ":" in dst and not dst.startswith("/"):
            vm, path = dst.split(":", 1)

            def chunks():
                yield mpb.WriteFileRequest(start=mpb.WriteFileStart(microvm_id=vm, path=path))
                with open(src, "rb") as f:
                    while data := f.read(1 << 20):
                        yield mpb.WriteFileRequest(data=data)
            r = vms.WriteFile(chunks())
            if C.json:
                typer.echo(json.dumps(_dict(r)))
        else:
            raise typer.BadParameter("one side must be VM:/path")
    except grpc.RpcError as e:
        typer.echo(f"error ({e.code().name}): {e.details()}", err=True)
        raise typer.Exit(EXIT.get(e.code().name, 1))


def vmmctl_main() -> None:
    ctl()


if __name__ == "__main__":
    (vmmctl_main if "vmmctl" in sys.argv[0] else vmmd_main)()
