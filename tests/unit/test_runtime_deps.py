"""The project's runtime dependencies import on this machine (and, via tests/e2e, on aarch64)."""
import importlib
import pathlib
import re
import tomllib

import pytest

PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
MODULES = {"grpcio": "grpc", "protobuf": "google.protobuf", "grpcio-health-checking": "grpc_health",
           "grpcio-reflection": "grpc_reflection"}


def runtime_deps():
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return [re.split(r"[<>=!~ ]", d)[0] for d in deps]


@pytest.mark.parametrize("dist", runtime_deps())
def test_runtime_dependency_imports(dist):
    importlib.import_module(MODULES.get(dist, dist))
