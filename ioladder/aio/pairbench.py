"""Paired CPU comparison of two echo servers: ``python -m ioladder.aio.pairbench aio uvloop``.

On a shared machine, absolute server CPU per round trip drifts by tens of percent between runs
(other tenants, the host), far more than the differences worth measuring between two event
loops. This tool runs both servers *at the same time*, both pinned to the same CPU, each driven by
its own load generator (``ioladder.bench.loadgen``, on another CPU) at the same rate, and reads
both servers' CPU time (``/proc/PID/stat``) over the same window: whatever disturbs one disturbs
the other. It prints, per repetition, each server's CPU microseconds per round trip and their
ratio, then the median ratio. The start order alternates between repetitions.

Servers are ``ioladder.bench.peers`` names (``aio``, ``aio-streams``, ``uvloop``,
``uvloop-streams``, ``asyncio``...) or ``NAME=COMMAND`` (a command that prints ``LISTENING
<port>`` once listening and exits on SIGTERM).

This is a benchmark tool, not a test; ``ioladder bench`` is the project's benchmark of record.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def _command(spec: str) -> tuple[str, list[str]]:
    if "=" in spec:
        name, cmd = spec.split("=", 1)
        return name, shlex.split(cmd)
    return spec, [sys.executable, "-m", "ioladder.bench.peers", "--peer", spec]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ioladder.aio.pairbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rate", type=float, default=20000,
                   help="offered round trips/s per server at depth 1 (default 20000)")
    p.add_argument("--depth", type=int, default=1, help="messages in flight (>1: unpaced)")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    args = p.parse_args(argv)
    servers = [_command(args.a), _command(args.b)]
    if servers[0][0] == servers[1][0]:
        p.error("the two servers need different names")
    ratios = []
    for rep in range(args.reps):
        order = servers if rep % 2 == 0 else servers[::-1]
        procs: dict[str, tuple[subprocess.Popen[str], int]] = {}
        gens: dict[str, subprocess.Popen[str]] = {}
        try:
            for name, cmd in order:
                proc = subprocess.Popen(["taskset", "-c", args.server_cpu, *cmd],
                                        stdout=subprocess.PIPE, text=True)
                line = proc.stdout.readline() if proc.stdout else ""
                if not line.startswith("LISTENING"):
                    raise SystemExit(f"{name}: did not start ({line!r})")
                procs[name] = (proc, int(line.split()[1]))
            for name, (_, port) in procs.items():
                gens[name] = subprocess.Popen(
                    [sys.executable, "-m", "ioladder.bench.loadgen", "--port", str(port),
                     "--connections", str(args.connections), "--size", str(args.size),
                     "--depth", str(args.depth), "--warmup", "1",
                     "--duration", str(args.duration),
                     "--rate", str(args.rate if args.depth == 1 else 0),
                     "--cpu", args.load_cpu], stdout=subprocess.PIPE, text=True)
            time.sleep(1.4)
            window = args.duration - 0.8
            before = {n: _cpu_seconds(proc.pid) for n, (proc, _) in procs.items()}
            time.sleep(window)
            after = {n: _cpu_seconds(proc.pid) for n, (proc, _) in procs.items()}
            rates = {n: json.loads(g.communicate()[0].strip().splitlines()[-1])["rt_per_s"]
                     for n, g in gens.items()}
        finally:
            for g in gens.values():
                if g.poll() is None:
                    g.kill()
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait()
        us = {n: (after[n] - before[n]) / window / rates[n] * 1e6 for n in procs}
        ratio = us[servers[0][0]] / us[servers[1][0]]
        ratios.append(ratio)
        print(f"rep {rep}: " + "  ".join(f"{n} {rates[n]:8.0f} rt/s {us[n]:6.2f} us/rt"
                                         for n in us) + f"   ratio {ratio:.3f}", flush=True)
    print(f"{servers[0][0]}/{servers[1][0]} server CPU per round trip: median "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
          f"{len(ratios)} paired runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
