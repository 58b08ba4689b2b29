"""What the runner reads about a server process, and about the machine.

Everything here reads the kernel's own accounting, from outside the server, so a server under
test needs no cooperation (the C floor and the peers know nothing of ioladder):

* **CPU** of the server's process tree over a window. ``/proc/PID/stat`` utime+stime counts in
  clock ticks (10 ms here), which is 1-2 % of a one-second window; the per-thread
  ``/proc/PID/task/TID/schedstat`` run time is in nanoseconds, so :class:`CpuSample` uses it
  and falls back to the tick counts when a thread ended inside the window (a dead thread's
  schedstat is gone, but its ticks stay in the process's stat).
* **Memory and threads**: ``VmRSS``, ``VmHWM`` and ``Threads`` of ``/proc/PID/status``,
  summed over the tree.
* **System calls**: :class:`SyscallCounter` runs ``perf stat -e raw_syscalls:sys_enter -p PID``
  started with its events disabled and switched on and off through perf's control pipe
  (``--control fd:CTL,ACK``), so the count covers exactly the measured window and perf's
  start-up is outside it. Counting a tracepoint costs the traced process a little per syscall
  (within run-to-run noise on this VM; ``--no-perf`` turns it off). When perf is missing or not
  permitted, :func:`perf_unavailable_reason` says so and the column carries that reason.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PERF_EVENT = "raw_syscalls:sys_enter"


# --------------------------------------------------------------------------- process tree


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (through every thread's ``children`` list)."""
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    text = Path(f"/proc/{p}/task/{tid}/children").read_text()
                except OSError:
                    continue
                out.extend(int(c) for c in text.split())
        except OSError:
            continue
    return out


def _stat_ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


#: above this many threads a sample reads only the processes' stat ticks: reading every
#: thread's schedstat would cost the runner (on the generator's core) tens of milliseconds.
SCHEDSTAT_MAX_THREADS = 256


@dataclass
class CpuSample:
    """CPU time of a set of processes at one instant."""

    t: float                             # time.monotonic()
    ticks: int                           # utime+stime of every process, clock ticks
    threads: dict[tuple[int, int], int]  # (pid, tid) -> run time in ns (schedstat); {} if many

    @classmethod
    def take(cls, pids: list[int]) -> CpuSample:
        ticks = 0
        threads: dict[tuple[int, int], int] = {}
        per_thread = True
        tids_of: dict[int, list[str]] = {}
        for p in pids:
            try:
                ticks += _stat_ticks(p)
                tids_of[p] = os.listdir(f"/proc/{p}/task")
            except OSError:
                continue
        if sum(len(t) for t in tids_of.values()) > SCHEDSTAT_MAX_THREADS:
            per_thread = False
        t = time.monotonic()
        if per_thread:
            for p, tids in tids_of.items():
                for tid in tids:
                    try:
                        text = Path(f"/proc/{p}/task/{tid}/schedstat").read_text()
                        threads[(p, int(tid))] = int(text.split()[0])
                    except (OSError, ValueError, IndexError):
                        continue
        return cls(t, ticks, threads)

    def seconds_since(self, before: CpuSample) -> tuple[float, str]:
        """CPU seconds between ``before`` and this sample, and which counter gave them."""
        if before.threads and set(before.threads) <= set(self.threads):
            ns = sum(v - before.threads.get(k, 0) for k, v in self.threads.items())
            return ns / 1e9, "schedstat"
        return (self.ticks - before.ticks) / CLK_TCK, "stat"


@dataclass
class CoreSample:
    """Per-CPU busy and steal time from ``/proc/stat``, in clock ticks.

    The server's core minus the server's own CPU is what *something else* did on that core in
    the window (another benchmark, a build): the runner reports it, so a disturbed run is not
    mistaken for a slow server. ``steal`` is time the hypervisor gave the vCPU to someone else.
    """

    busy: dict[int, int]
    steal: dict[int, int]

    @classmethod
    def take(cls) -> CoreSample:
        busy: dict[int, int] = {}
        steal: dict[int, int] = {}
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                # user nice system idle iowait irq softirq steal ...
                busy[int(name[3:])] = v[0] + v[1] + v[2] + v[5] + v[6]
                steal[int(name[3:])] = v[7] if len(v) > 7 else 0
        return cls(busy, steal)

    def since(self, before: CoreSample, cpu: int) -> tuple[float, float]:
        """(busy seconds, steal seconds) of ``cpu`` between ``before`` and this sample."""
        b = self.busy.get(cpu, 0) - before.busy.get(cpu, 0)
        st = self.steal.get(cpu, 0) - before.steal.get(cpu, 0)
        return b / CLK_TCK, st / CLK_TCK


def status_fields(pids: list[int], names: tuple[str, ...] = ("VmRSS", "VmHWM", "Threads")
                  ) -> dict[str, int]:
    """Sum of ``/proc/PID/status`` fields over ``pids`` (kB for Vm*, a count for Threads)."""
    total = dict.fromkeys(names, 0)
    for p in pids:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value.split()[0])
    return total


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of every process in the tree (threads created later inherit it)."""
    for p in tree_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass


def renice_tree(pid: int, nice: int) -> str | None:
    """Set the nice value of every thread in the tree; None, or why it could not."""
    for p in tree_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except PermissionError as exc:
                return f"cannot renice to {nice}: {exc.strerror} (needs root or CAP_SYS_NICE)"
            except OSError:
                pass
    return None


# ------------------------------------------------------------------------------- perf


@lru_cache(maxsize=1)
def perf_unavailable_reason() -> str | None:
    """None when ``perf stat`` can count syscalls of another process here, else why not."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf missing (install linux-tools / perf to count syscalls)"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                               stdin=subprocess.DEVNULL)
    try:
        proc = subprocess.run([perf, "stat", "-x,", "-e", PERF_EVENT, "-p", str(sleeper.pid),
                               "--", "sleep", "0.05"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"perf failed: {exc}"
    finally:
        sleeper.kill()
        sleeper.wait()
    text = proc.stderr
    if proc.returncode != 0 or PERF_EVENT not in text or "<not supported>" in text:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")
        if "ermission" in text or "paranoid" in text or "Access" in text:
            return f"perf not permitted: {first}"
        return f"perf cannot count {PERF_EVENT}: {first}"
    usage = subprocess.run([perf, "stat", "-h"], capture_output=True, text=True, timeout=20)
    if "--control" not in usage.stdout + usage.stderr:
        return "perf too old (no --control to bound the measured window)"
    return None


class SyscallCounter:
    """``perf stat`` attached to a process tree, counting only between enable() and disable()."""

    def __init__(self, pid: int, cpu: int | None = None) -> None:
        self.pid = pid
        ctl_r, self._ctl_w = os.pipe()
        self._ack_r, ack_w = os.pipe()
        fd, self._out = tempfile.mkstemp(prefix="ioladder-perf-", suffix=".txt")
        os.close(fd)
        pids = ",".join(str(p) for p in tree_pids(pid))
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", PERF_EVENT, "-D", "-1",
                 "--control", f"fd:{ctl_r},{ack_w}", "-p", pids, "-o", self._out],
                pass_fds=(ctl_r, ack_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
        finally:
            os.close(ctl_r)
            os.close(ack_w)
        if cpu is not None:
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError:
                pass
        self.t_enabled = 0.0
        self.t_disabled = 0.0
        self.error: str | None = None

    def _command(self, word: str, timeout: float = 2.0) -> float:
        os.write(self._ctl_w, word.encode() + b"\n")
        deadline = time.monotonic() + timeout
        got = b""
        while b"ack" not in got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ack_r], [], [], left)[0]:
                raise TimeoutError(f"perf did not acknowledge {word!r}")
            chunk = os.read(self._ack_r, 64)
            if not chunk:
                raise RuntimeError("perf exited")
            got += chunk
        return time.monotonic()

    def enable(self) -> None:
        try:
            self.t_enabled = self._command("enable")
        except (OSError, TimeoutError, RuntimeError) as exc:
            self.error = f"perf: {exc}"

    def disable(self) -> None:
        if self.error is None:
            try:
                self.t_disabled = self._command("disable")
            except (OSError, TimeoutError, RuntimeError) as exc:
                self.error = f"perf: {exc}"

    def finish(self) -> tuple[int | None, float, str | None]:
        """Stop perf; (syscalls counted, seconds counted, error or None)."""
        count: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                _, err = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            self.proc = None
            try:
                text = Path(self._out).read_text()
            except OSError:
                text = ""
            for line in text.splitlines():
                parts = line.split(",")
                if len(parts) > 2 and parts[2] == PERF_EVENT:
                    try:
                        count = int(parts[0])
                    except ValueError:
                        self.error = self.error or f"perf: {parts[0]}"
            if count is None and self.error is None:
                self.error = "perf: no count (" + (err.decode(errors="replace").strip()[:120]
                                                   or "empty output") + ")"
        self.close()
        window = max(0.0, self.t_disabled - self.t_enabled)
        return count, window, self.error

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        for fd in (self._ctl_w, self._ack_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._ctl_w = self._ack_r = -1
        try:
            os.unlink(self._out)
        except OSError:
            pass


# ---------------------------------------------------------------------------- limits


def nofile_limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_nofile() -> tuple[int, int]:
    """Lift our soft RLIMIT_NOFILE to the hard one (children inherit it); return the pair."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def thread_limit() -> tuple[int, str]:
    """How many threads one more process could start here, and which limit says so."""
    limits: list[tuple[int, str]] = []
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, f"RLIMIT_NPROC={soft}"))
    for path, what in (("/proc/sys/kernel/threads-max", "kernel.threads-max"),
                       ("/sys/fs/cgroup/pids.max", "cgroup pids.max")):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append((int(text), f"{what}={text}"))
    if not limits:
        return sys.maxsize, "no thread limit"
    return min(limits)


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


#: the CPUs this process may use, read before the runner pins itself to the generator's CPU
CPUS_ALLOWED = sorted(os.sched_getaffinity(0))


def machine_info(packages: list[str]) -> dict[str, Any]:
    """The machine as the report states it: CPU, cores, kernel, Python, package versions."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gcc = shutil.which("gcc")
    gcc_version = None
    if gcc:
        try:
            gcc_version = subprocess.run([gcc, "-dumpfullversion"], capture_output=True,
                                         text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    soft, hard = nofile_limits()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cpus_allowed": CPUS_ALLOWED,
        "mem_total_mib": _mem_total_mib(),
        "kernel": platform.release(),
        "os": _os_name(),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "gcc": gcc_version,
        "packages": versions,
        "rlimit_nofile": [soft, hard],
        "threads_limit": thread_limit()[1],
        "perf": perf_unavailable_reason() or "available",
        "clock_ticks_per_s": CLK_TCK,
        "io_uring_disabled": _read("/proc/sys/kernel/io_uring_disabled"),
    }


def _os_name() -> str:
    text = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.system()
