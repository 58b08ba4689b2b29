"""``ioladder demo``: the quick tour, an alias of ``ioladder bench --quick``.

Every available rung, the peers and the C floor under one load generator, about two minutes
on a two-core machine; extra arguments go to ``bench`` (``ioladder demo --out DIR``).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .runner import main as bench_main

    return bench_main(["--quick", *(argv or [])])
