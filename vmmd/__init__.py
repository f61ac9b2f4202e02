"""vmmd: a per-host daemon for stateful, isolated MicroVMs."""

__version__ = "0.1.0"
