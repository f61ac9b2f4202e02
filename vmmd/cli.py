"""Command lines: `vmmd serve` (the daemon) and `vmmctl` (people and scripts talking to it)."""
from __future__ import annotations

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


def vmmctl_main() -> None:
    from .ctl import app
    app()


if __name__ == "__main__":
    vmmd_main()
