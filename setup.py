"""The one thing pyproject.toml cannot say: relay.formats._tsmux, the TS muxer's C part. It is optional: where it
cannot be compiled (no C compiler or Python headers), the install goes on and relay.formats.mpegts uses its
Python way, which gives the same bytes."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("relay.formats._tsmux", ["relay/formats/_tsmux.c"], optional=True, extra_compile_args=["-O2"])
    ]
)
