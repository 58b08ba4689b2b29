"""``ioladder bench`` end to end: real server processes, the real load generator, loopback.

Short windows and tiny matrices keep the whole file to a few tens of seconds. Nothing here
asserts a speed: only that the runner measures, reports, refuses what cannot be reached, and
never leaves a process behind. Every child of a runner started here inherits a unique
environment tag, so leftovers are found by the tag, not by a name other tests also use.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ioladder.bench import peers, runner
from ioladder.bench.loadgen import run_inprocess

TAG = "IOLADDER_BENCH_TEST_TAG"


def tagged_pids(tag: str) -> list[int]:
    """Processes (other than us) whose environment carries ``TAG=tag``."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def server_running(tag: str) -> bool:
    """A server under test (rung, peer or floor) tagged ``tag`` is alive."""
    for pid in tagged_pids(tag):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b" serve " in cmd or b"epoll_echo" in cmd or b"bench.peers" in cmd:
            return True
    return False


def bench(args: list[str], tag: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **{TAG: tag})
    return subprocess.run([sys.executable, "-m", "ioladder.bench.runner", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """rung ``epoll`` and peer ``asyncio``, 10 connections, 64 B, depth 1, one 1 s window."""
    out = tmp_path_factory.mktemp("bench")
    tag = uuid.uuid4().hex
    proc = bench(["--servers", "epoll,asyncio", "--connections", "10", "--sizes", "64",
                  "--depths", "1", "--fixed-rate", "0", "--repeat", "1", "--warmup", "0.2",
                  "--duration", "1", "--out", str(out)], tag)
    return {"proc": proc, "out": out, "tag": tag}


def test_tiny_matrix_writes_results_table_plots_and_html(tiny: dict[str, Any]) -> None:
    proc, out = tiny["proc"], tiny["out"]
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = runner.load(out / "results.json")
    assert runner.validate(results) == []
    assert [c["id"] for c in results["cases"]] == ["c10-s64-d1"]
    case = results["cases"][0]
    assert set(case["results"]) == {"epoll", "asyncio"}
    for name, cell in case["results"].items():
        assert cell["status"] == "ok", (name, cell.get("reason"))
        (run,) = cell["runs"]
        assert run["connections"] == 10
        assert run["errors"] == 0
        assert run["messages"] > 0
        assert run["server_cpu_s"] >= 0
        assert run["rss_idle_kib"] > 0
        assert run["threads"] >= 1
        # syscalls: a number, or the reason there is none
        assert "syscalls_per_rt" in run or run.get("syscalls_note")
    # the closed-loop case has a ceiling, and its holder is flagged
    ceiling = case["ceiling"]
    assert ceiling["server"] in case["results"]
    assert case["results"][ceiling["server"]]["near_ceiling"]
    machine = results["machine"]
    assert machine["cpu_model"] and machine["kernel"] and machine["python"]
    assert set(runner.PEER_PACKAGES) <= set(machine["packages"])
    table = (out / "table.txt").read_text()
    assert "epoll" in table and "asyncio" in table and "10 conns, 64 B, depth 1" in table
    assert "epoll" in proc.stdout  # the terminal table
    for png in ("throughput.png", "latency.png", "rss.png", "cpu.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert machine["cpu_model"] in html and "src='http" not in html


def test_tiny_matrix_leaves_no_process_behind(tiny: dict[str, Any]) -> None:
    assert tiny["proc"].returncode == 0
    assert tagged_pids(tiny["tag"]) == []


def test_compare_prints_per_case_ratios(tiny: dict[str, Any], tmp_path: Path) -> None:
    old = runner.load(tiny["out"] / "results.json")
    new = copy.deepcopy(old)
    cell = new["cases"][0]["results"]["epoll"]
    cell["summary"]["rt_per_s"]["median"] *= 2
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    proc = bench(["--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")],
                 uuid.uuid4().hex)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "epoll" in ln]
    assert lines and "2.00x" in lines[0]
    asyncio_lines = [ln for ln in proc.stdout.splitlines() if "asyncio" in ln]
    assert asyncio_lines and "1.00x" in asyncio_lines[0]


def test_compare_refuses_a_file_that_is_not_results(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    proc = bench(["--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")],
                 uuid.uuid4().hex)
    assert proc.returncode == 2
    assert "not an ioladder bench results file" in proc.stderr


def test_select_past_fd_setsize_reports_cannot_reach_without_running(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    proc = bench(["--servers", "select", "--connections", "2000", "--fixed-rate", "0",
                  "--repeat", "1", "--duration", "1", "--out", str(tmp_path)], tag)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = runner.load(tmp_path / "results.json")
    cell = results["cases"][0]["results"]["select"]
    assert cell["status"] == "unreachable"
    assert cell["runs"] == []  # decided before starting anything
    limit = runner.rungs.get("select").structural_limit
    assert f"{limit:,}" in cell["reason"] and "by construction" in cell["reason"]
    assert "cannot reach" in (tmp_path / "table.txt").read_text()
    assert "cannot reach" in proc.stdout
    assert tagged_pids(tag) == []


def test_interrupt_kills_every_child_and_keeps_partial_results(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{TAG: tag})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioladder.bench.runner", "--servers", "epoll,c-epoll",
         "--connections", "10", "--fixed-rate", "0", "--repeat", "3", "--warmup", "0.2",
         "--duration", "5", "--no-plots", "--out", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not server_running(tag):
            time.sleep(0.05)
        assert server_running(tag), "the runner never started a server"
        time.sleep(0.5)  # inside the run: generator connected, window open
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read() if proc.stderr else ""
    assert tagged_pids(tag) == []
    results = runner.load(tmp_path / "results.json")
    assert results["interrupted"] is True


def test_sigterm_also_kills_every_child(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{TAG: tag})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioladder.bench.runner", "--servers", "asyncio",
         "--connections", "10", "--fixed-rate", "0", "--warmup", "0.2", "--duration", "5",
         "--no-plots", "--no-perf", "--out", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not server_running(tag):
            time.sleep(0.05)
        assert server_running(tag), "the runner never started a server"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert tagged_pids(tag) == []


# ------------------------------------------------------------------------- pieces


def test_connection_counts_are_capped_by_rlimit_nofile_and_say_so() -> None:
    cases, notes = runner.cap_cases([runner.Case(10, 64, 1), runner.Case(10000, 64, 1)], 5000,
                                    "RLIMIT_NOFILE is 5,064")
    assert [c.connections for c in cases] == [10, 5000]
    assert cases[1].requested == 10000 and cases[1].id == "c10000-s64-d1"
    assert cases[1].capped and "5,000" in cases[1].capped
    assert len(notes) == 1 and "RLIMIT_NOFILE" in notes[0]


def test_thread_per_connection_rung_past_the_thread_limit_cannot_reach() -> None:
    spec = runner.ServerSpec("blocking", "rung", "test", threads_per_connection=1.0,
                             mechanism="threads")
    why = runner.cannot_reach(spec, runner.Case(10000, 64, 1), (5000, "RLIMIT_NPROC=5000"))
    assert why is not None and "RLIMIT_NPROC=5000" in why and "threads" in why
    assert runner.cannot_reach(spec, runner.Case(100, 64, 1), (5000, "x")) is None


def test_rung_holding_two_descriptors_per_connection_past_nofile_cannot_reach() -> None:
    spec = next(s for s in runner.all_servers() if s.name == "overlapped-event")
    assert spec.fds_per_connection == 2  # the rung class says so; the bench reads it
    why = runner.cannot_reach(spec, runner.Case(10000, 64, 1), (10**6, "x"), nofile=20000)
    assert why is not None and "RLIMIT_NOFILE (20,000)" in why and "2 descriptors" in why
    assert runner.cannot_reach(spec, runner.Case(1000, 64, 1), (10**6, "x"), nofile=20000) is None
    one = next(s for s in runner.all_servers() if s.name == "epoll")
    assert runner.cannot_reach(one, runner.Case(10000, 64, 1), (10**6, "x"), nofile=20000) is None


def test_server_groups_resolve_in_ladder_order() -> None:
    specs = runner.all_servers()
    chosen, _ = runner.select_servers(specs, "floor,asyncio,epoll")
    names = [s.name for s in chosen]
    assert names == ["epoll", "asyncio", runner.FLOOR]
    chosen, _ = runner.select_servers(specs, "peers")
    assert {s.name for s in chosen} == set(peers.names())
    with pytest.raises(SystemExit):
        runner.select_servers(specs, "no-such-server")


def test_profiles_are_the_documented_matrices() -> None:
    full = runner.PROFILES["full"]()
    closed = [c for c in full.cases if not c.rate]
    assert {c.connections for c in closed} == {1, 10, 100, 1000, 10000}
    assert {c.size for c in closed} == {64, 4096} and {c.depth for c in closed} == {1, 16}
    assert len(closed) == 20 and full.repeat == 3
    assert [c for c in full.cases if c.rate] == [runner.FIXED]
    quick = runner.PROFILES["quick"]()
    assert runner.FIXED in quick.cases and quick.repeat == 1


@pytest.mark.parametrize("name", peers.names())
def test_peer_echoes_verified_bytes_and_stops_on_sigterm(name: str) -> None:
    why = peers.reason(name)
    if why is not None:
        pytest.skip(why)
    proc = subprocess.Popen([sys.executable, "-m", "ioladder.bench.peers", "--peer", name],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        port = int(line.split()[1])
        for size, depth in ((64, 1), (4096, 16)):
            result = run_inprocess("127.0.0.1", port, connections=10, size=size, depth=depth,
                                   warmup=0.05, duration=0.2)
            assert result.connections == 10
            assert result.errors == 0 and result.connect_errors == 0
            assert result.messages > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
