"""Generates the API's Python modules (vmmd/v1/*_pb2*.py) from protos/ with grpcio-tools.

Run by setup.py's build_py (so `pip install` and editable installs get them) and by
scripts/setup.sh when a .proto is newer than the generated code. Nothing generated is committed.
Usage: python protos/build.py [output root, default: the repository]
"""
from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def generate(out_root: pathlib.Path = REPO) -> list[pathlib.Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(HERE.glob("vmmd/v1/*.proto"))
    out = out_root / "vmmd" / "v1"
    out.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{HERE}", f"-I{well_known}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}",
            *(str(p.relative_to(HERE)) for p in protos)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(p.name for p in protos)}")
    # written last: scripts/setup.sh compares the .proto files against it
    (out / "__init__.py").write_text('"""Generated from protos/vmmd/v1 at build time; do not edit."""\n')
    return protos


def cmdclass() -> dict:
    from setuptools.command.build_py import build_py

    class BuildPyWithProtos(build_py):
        def run(self):
            generate(REPO)
            if self.packages is not None and "vmmd.v1" not in self.packages:
                self.packages.append("vmmd.v1")   # absent when the packages were listed
            super().run()

    return {"build_py": BuildPyWithProtos}


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO)
