"""Build hook for the C extensions: setuptools runs the cffi builders at install time."""

from setuptools import setup

setup(cffi_modules=["accel/backends/cpu/build.py:ffibuilder",
                    "appliance/operators/psi/build.py:ffibuilder"])
