from setuptools import setup

# The native core is built by cffi from native/build.py; everything else is in pyproject.toml.
setup(cffi_modules=["native/build.py:ffibuilder"])
