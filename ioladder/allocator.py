"""glibc's allocator, settled once per server process (see :func:`settle_allocator`)."""

from __future__ import annotations

#: The block :func:`settle_allocator` frees: glibc then serves every allocation below it from
#: the heap and trims a heap only when twice this much is free at its top.
SETTLE_BLOCK = 16 * 1024 * 1024


def settle_allocator() -> None:
    """Raise glibc's dynamic mmap and trim thresholds once, as a long-running process has them.

    glibc starts with both at 128 KiB and raises them (mmap: the size of the block; trim: twice
    that) each time the process frees an mmapped block larger than the current threshold. Until
    that happens, two costs depend on what the process's start-up happened to allocate:

    - a 256 KiB ``recv()`` (the stdlib selector loop's read size) costs ``mmap``, ``mremap`` and
      ``munmap`` per message: about twice the CPU per round trip in the asyncio peer;
    - a thread's arena that a stream of 32 KiB ``bytes`` grows and shrinks is trimmed
      (``madvise(MADV_DONTNEED)``) and faulted back in page by page: ~170,000 page faults a
      second, and one bulk stream through the ``saea`` rung at ~850 MB/s instead of 1.4-1.6
      GB/s (``perf stat -e page-faults,syscalls:sys_enter_madvise -p PID`` over a bulk echo,
      measured when the rung still received into 32 KiB buffers).

    Freeing one 16 MiB block (allocated with ``calloc``: fresh ``mmap`` pages, never touched)
    moves them to 16 and 32 MiB in every run. The price: freed memory up to 32 MiB per arena
    stays with the process instead of going back to the OS at once. ``ioladder serve``, its
    worker processes and the benchmark's peers call this first; a program that embeds a
    server may call it too. Elsewhere than glibc it is one allocation and nothing more.
    """
    block = bytes(SETTLE_BLOCK)
    del block


__all__ = ["SETTLE_BLOCK", "settle_allocator"]
