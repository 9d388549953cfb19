"""The one thing pyproject.toml cannot say: relay._tsmux, the TS muxer's C part. It is optional: where it
cannot be compiled (no C compiler or Python headers), the install goes on and relay.mpegts uses its
Python way, which gives the same bytes."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("relay._tsmux", ["relay/_tsmux.c"], optional=True, extra_compile_args=["-O2"])])
