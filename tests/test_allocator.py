"""``settle_allocator``: glibc's mmap (and so trim) threshold raised once, in every run.

Checked in a fresh interpreter, where nothing has raised the thresholds yet, through
``mallinfo2().hblks`` (the blocks glibc holds by ``mmap``): after settling, a 256 KiB ``recv``
(the stdlib selector loop's read) and a 15 MiB block both come from the heap.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, socket, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    sys.exit(77)
libc.mallinfo2.restype = Info
if sys.argv[1] == "settled":
    from ioladder.allocator import settle_allocator
    settle_allocator()
a, b = socket.socketpair()
b.send(b"x" * 64)
before = libc.mallinfo2().hblks
data = a.recv(256 * 1024)
big = bytearray(15 * 1024 * 1024)
print(len(data), libc.mallinfo2().hblks - before)
"""


def probe(mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode == 77:
        pytest.skip("not glibc: no mallinfo2 (and no dynamic mmap threshold to settle)")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_settled_reads_and_blocks_below_16_mib_come_from_the_heap() -> None:
    assert probe("settled") == ["64", "0"]


def test_a_fresh_interpreter_would_mmap_them() -> None:
    # what the settling changes: without it the same two allocations are mmapped here (if a
    # future interpreter's start-up raised the threshold itself, this is what to look at)
    assert probe("fresh") == ["64", "2"]
