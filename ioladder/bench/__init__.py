"""The benchmark: everything that measures servers, and nothing that serves.

- `loadgen`: the verifying load generator (C hot loop in `_loadgen`, one pinned process per
  share of the connections, HdrHistogram latencies, its own CPU cost reported).
- `floor`: the measurement floor, a minimal C epoll echo server (`c/epoll_echo.c`) built on
  demand with gcc, that every other server is compared with.
- `runner`: ``ioladder bench``, the matrix: every rung, the peers and the floor, each a fresh
  pinned process per run, interleaved and repeated; ``results.json`` (schema in its docstring).
- `peers`: the echo servers users know (asyncio, uvloop, trio, gevent), written idiomatically.
- `metrics`: what is read from ``/proc`` and ``perf`` about a server, and about the machine.
- `report`: terminal tables, PNG plots, the HTML report, ``--compare``, ``docs/benchmarks.md``.
- `demo`: ``ioladder demo``, an alias of ``ioladder bench --quick``.
"""
