"""Build the package's C extensions: the transports' hot paths (the rungs' and the aio loop's),
the io_uring ring and the load generator's hot loop.

All are plain CPython extensions on raw syscalls (no liburing), compiled by the standard
setuptools build so a fresh machine needs only gcc and the Python headers.
"""

from setuptools import Extension, setup

CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension("ioladder._transport", ["ioladder/_transport.c"],
                  depends=["ioladder/_cbase.h", "ioladder/_mcache.h", "ioladder/_sendgate.h"], extra_compile_args=CFLAGS),
        Extension("ioladder.aio._speedups", ["ioladder/aio/_speedups.c"],
                  depends=["ioladder/_cbase.h"], extra_compile_args=CFLAGS),
        Extension("ioladder.kernel._uring", ["ioladder/kernel/_uring.c"],
                  depends=["ioladder/_mcache.h", "ioladder/_sendgate.h"], extra_compile_args=CFLAGS),
        Extension("ioladder.bench._loadgen", ["ioladder/bench/_loadgen.c"], extra_compile_args=CFLAGS),
    ],
)
