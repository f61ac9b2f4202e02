import importlib.util
import os

from setuptools import setup

# The native core is built by cffi from native/build.py (production and test modules); the gRPC
# API's Python code is generated from protos/ by protos/build.py; everything else is in
# pyproject.toml.
_spec = importlib.util.spec_from_file_location(
    "protos_build", os.path.join(os.path.dirname(os.path.abspath(__file__)), "protos", "build.py"))
_protos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_protos)

setup(cffi_modules=["native/build.py:ffibuilder", "native/build.py:ffibuilder_test"],
      cmdclass=_protos.cmdclass())
