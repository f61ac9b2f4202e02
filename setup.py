from setuptools import setup

# The native core is built by cffi from native/build.py (production and test modules);
# everything else is in pyproject.toml.
setup(cffi_modules=["native/build.py:ffibuilder", "native/build.py:ffibuilder_test"])
