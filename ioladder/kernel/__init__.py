"""Thin kernel bindings layer.

The lowest layer of ioladder: small, direct bindings to the Linux mechanisms the rungs are built
on, with no policy of their own. Nothing here imports anything above it.

- :mod:`ioladder.kernel.uring` -- the io_uring ring (the C extension ``_uring``): the completion
  port of the overlapped, IOCP and SAEA rungs.
- other modules in this package bind signalfd/F_SETSIG and process limits.

This ``__init__`` deliberately imports nothing, so a machine where the C extension is not built
(or io_uring is unavailable) can still use the other bindings.
"""
