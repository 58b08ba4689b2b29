"""The HTTP bench (``ioladder bench --profile http``): wrk's output parsed, the verdict on a run,
nginx's generated config and lifecycle, the HTTP peers, one real short wrk run against the
``http`` app on the ``epoll`` rung, the report and the docs section.

Nothing here asserts a speed. What needs wrk or nginx skips, saying so, where they are not
installed (``make ensure-wrk`` installs both). Every child of a bench started here carries a
unique environment tag, so leftovers are found by the tag, not by a name other tests also use.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ioladder import rungs
from ioladder.bench import http as hb
from ioladder.bench import peers, report, runner

WRK = hb.find_wrk()
NGINX = hb.find_nginx()
needs_wrk = pytest.mark.skipif(WRK is None, reason="wrk is not installed (make ensure-wrk)")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed "
                                                       "(make ensure-wrk)")
needs_epoll = pytest.mark.skipif(rungs.reason("epoll") is not None,
                                 reason=f"rung epoll unavailable: {rungs.reason('epoll')}")
TAG = "IOLADDER_HTTP_BENCH_TEST_TAG"

# ------------------------------------------------------------------ captured wrk output

SAMPLE_LATENCY = """\
Running 2s test @ http://127.0.0.1:18080/
  1 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.14ms    2.32ms  17.95ms   77.76%
    Req/Sec    30.45k    15.89k   69.80k    75.00%
  Latency Distribution
     50%    2.26ms
     75%    4.21ms
     90%    6.59ms
     99%   10.17ms
  60747 requests in 2.02s, 7.71MB read
Requests/sec:  30131.39
Transfer/sec:      3.82MB
"""

SAMPLE_ERRORS = """\
Running 1s test @ http://127.0.0.1:18080/nope
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.22ms    1.67ms  12.00ms   84.75%
    Req/Sec    16.23k     6.24k   29.02k    70.00%
  Latency Distribution
     50%  362.00us
     75%    1.62ms
     90%    3.68ms
     99%    7.87ms
  16292 requests in 1.01s, 2.19MB read
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 16292
Requests/sec:  16079.64
Transfer/sec:      2.16MB
"""

SAMPLE_EXACT = """\
Running 2s test @ http://127.0.0.1:54215/
  1 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.17ms    1.47ms  12.67ms   87.92%
    Req/Sec    95.91k    25.94k  137.02k    55.00%
  Latency Distribution
     50%  659.00us
     75%  822.00us
     90%    3.22ms
     99%    7.39ms
  190840 requests in 2.00s, 29.30MB read
Requests/sec:  95184.75
Transfer/sec:     14.61MB
ioladder-wrk requests=190840 duration_us=2004943 bytes=30725240 connect=0 read=0 write=0 \
status=0 timeout=0 mean_us=1172.89 stdev_us=1471.79 max_us=12668 p50=659 p75=822 p90=3222 \
p99=7387 p99.9=10667
"""

SAMPLE_SLOW = """\
Running 1m test @ http://127.0.0.1:8080/
  4 threads and 1000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50s   300.00ms   2.00s    60.00%
    Req/Sec   812.00     40.00     1.20k    70.00%
  Latency Distribution
     50%    1.50s
     75%    1.70s
     90%    1.90s
     99%    2.00s
  194880 requests in 1.00m, 1.20GB read
  Socket errors: connect 0, read 0, write 0, timeout 125
Requests/sec:   3248.00
Transfer/sec:     20.48MB
"""


def test_parse_wrk_with_latency_distribution() -> None:
    r = hb.parse_wrk(SAMPLE_LATENCY)
    assert (r.threads, r.connections, r.requests) == (1, 100, 60747)
    assert r.duration_s == pytest.approx(2.02)
    assert r.bytes_read == pytest.approx(7.71 * 1024 ** 2)
    assert r.requests_per_s == pytest.approx(30131.39)
    assert r.transfer_per_s == pytest.approx(3.82 * 1024 ** 2)
    assert r.latency_avg_us == pytest.approx(3140.0)
    assert r.latency_max_us == pytest.approx(17950.0)
    assert r.percentiles_us == pytest.approx({"50": 2260.0, "75": 4210.0, "90": 6590.0,
                                              "99": 10170.0})
    assert r.errors == 0 and r.error_text() == "" and not r.exact


def test_parse_wrk_counts_socket_errors_and_bad_statuses() -> None:
    r = hb.parse_wrk(SAMPLE_ERRORS)
    assert (r.connect_errors, r.read_errors, r.write_errors, r.timeouts) == (0, 3, 1, 7)
    assert r.non_2xx_3xx == 16292
    assert r.socket_errors == 11 and r.errors == 16303
    assert "16292 non-2xx/3xx" in r.error_text() and "timeout 7" in r.error_text()
    assert r.percentiles_us["50"] == pytest.approx(362.0)


def test_parse_wrk_takes_exact_counts_and_p999_from_the_done_script() -> None:
    r = hb.parse_wrk(SAMPLE_EXACT)
    assert r.exact
    assert r.requests == 190840 and r.bytes_read == 30725240
    assert r.duration_s == pytest.approx(2.004943)
    assert r.requests_per_s == pytest.approx(190840 / 2.004943)
    assert r.percentiles_us == {"50": 659.0, "75": 822.0, "90": 3222.0, "99": 7387.0,
                                "99.9": 10667.0}
    assert r.latency_max_us == 12668.0
    assert r.to_dict()["errors"] == 0


def test_parse_wrk_units_seconds_minutes_and_gigabytes() -> None:
    r = hb.parse_wrk(SAMPLE_SLOW)
    assert (r.threads, r.connections) == (4, 1000)
    assert r.duration_s == pytest.approx(60.0)
    assert r.bytes_read == pytest.approx(1.2 * 1024 ** 3)
    assert r.latency_avg_us == pytest.approx(1.5e6)
    assert r.latency_stdev_us == pytest.approx(300e3)
    assert r.percentiles_us["99"] == pytest.approx(2e6)
    assert r.timeouts == 125 and r.non_2xx_3xx == 0
    assert hb.metric("1.20k") == pytest.approx(1200.0) and hb.metric("812.00") == 812.0


@pytest.mark.parametrize("text", ["", "unable to connect to 127.0.0.1:1 Connection refused\n",
                                  SAMPLE_LATENCY.split("  60747")[0]])
def test_parse_wrk_refuses_what_is_not_a_finished_run(text: str) -> None:
    with pytest.raises(ValueError):
        hb.parse_wrk(text)


@pytest.mark.parametrize("bad", ["12", "3.1xs", "MB", "1.0 ms"])
def test_unit_parsers_refuse_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        hb.time_us(bad)
    with pytest.raises(ValueError):
        hb.binary_bytes(bad + "Q")


def test_a_run_with_errors_is_failed_and_says_why() -> None:
    status, reason = hb.judge(hb.parse_wrk(SAMPLE_ERRORS), 10)
    assert status == "error" and "non-2xx/3xx" in reason and "read 3" in reason
    assert hb.judge(hb.parse_wrk(SAMPLE_LATENCY), 100) == ("ok", None)
    status, reason = hb.judge(hb.parse_wrk(SAMPLE_LATENCY), 50)
    assert status == "error" and "100 connections, not 50" in reason
    # 7.71 MiB over 60,747 requests is ~133 B each: a 200 B checked response is flagged
    assert hb.judge(hb.parse_wrk(SAMPLE_LATENCY), 100, 133) == ("ok", None)
    status, reason = hb.judge(hb.parse_wrk(SAMPLE_LATENCY), 100, 200)
    assert status == "ok" and "per response" in reason


def test_wrk_command_line_is_one_thread_100_connections_with_latency() -> None:
    argv = hb.wrk_argv("wrk", 8080, 5, script="done.lua")
    assert argv == ["wrk", "-t1", "-c100", "-d5s", "--latency", "-s", "done.lua",
                    "http://127.0.0.1:8080/"]


def test_profile_selection_on_the_bench_command_line() -> None:
    assert hb.wants_http(["--profile", "http", "--repeat", "1"])
    assert hb.wants_http(["--http"]) and hb.wants_http(["--profile=http"])
    assert not hb.wants_http(["--profile", "echo"]) and not hb.wants_http(["--quick"])


def test_bench_skips_with_a_note_when_wrk_is_missing(tmp_path: Path) -> None:
    env = dict(os.environ, IOLADDER_WRK=str(tmp_path / "no-wrk-here"))
    proc = subprocess.run([sys.executable, "-m", "ioladder", "bench", "--profile", "http",
                           "--out", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: wrk is not installed" in proc.stdout
    assert "make ensure-wrk" in proc.stdout
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_nginx_is_an_unavailable_server_with_the_install_hint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IOLADDER_NGINX", str(tmp_path / "no-nginx-here"))
    spec = {s.name: s for s in hb.all_http_servers()}[hb.NGINX]
    assert spec.reason is not None and "make ensure-wrk" in spec.reason
    chosen, notes = hb.select_http_servers([spec], "nginx")
    assert chosen == [spec] and notes and "nginx skipped" in notes[0]


def test_wait_quiet_is_bounded() -> None:
    t0 = time.monotonic()
    waited, busy = hb.wait_quiet({0}, 0.0)  # no patience: one half-second sample
    assert time.monotonic() - t0 < 5.0
    assert waited >= 0.0 and 0.0 <= busy <= 1.5


def test_server_groups() -> None:
    specs = hb.all_http_servers()
    names = [s.name for s in specs]
    assert names[-4:] == [hb.NGINX, *peers.http_names()]
    rung_only, _ = hb.select_http_servers(specs, "rungs")
    assert [s.name for s in rung_only] == rungs.names()
    peer_only, _ = hb.select_http_servers(specs, "peers")
    assert [s.name for s in peer_only] == [hb.NGINX, *peers.http_names()]
    with pytest.raises(SystemExit):
        hb.select_http_servers(specs, "no-such-server")


# ------------------------------------------------------------------------------ nginx


def test_nginx_config_one_worker_return_200_no_access_log_loopback_only() -> None:
    conf = hb.nginx_config(18081)
    assert "worker_processes 1;" in conf
    assert "access_log off;" in conf
    assert 'return 200 "Hello, World!";' in conf
    assert "listen 127.0.0.1:18081" in conf
    assert "default_type text/plain;" in conf
    # every path nginx writes is relative to its prefix (the temp dir)
    for line in conf.splitlines():
        words = line.split()
        if words and (words[0].endswith("_path") or words[0] == "pid"):
            assert not words[1].startswith("/"), line


@needs_nginx
def test_generated_config_passes_nginx_t(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(hb.nginx_config(hb.free_port()))
    proc = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _alive_any(pids: list[int]) -> list[int]:
    return [p for p in pids if hb._alive(p)]


@needs_nginx
def test_nginx_starts_serves_and_stops_without_leftovers() -> None:
    server = hb.NginxServer(cpu=None)
    try:
        server.wait_ready()
        size = hb.check_hello(server.port)
        assert 100 < size < 400
        pids = server.pids()
        assert len(pids) >= 2  # master and worker, both counted
        directory = server.dir
        assert (directory / "nginx.conf").exists()
    finally:
        rc, _ = server.stop()
    assert rc in (0, -signal.SIGTERM)
    assert _alive_any(pids) == []
    assert not directory.exists()
    assert server not in hb._NGINX_LIVE


@needs_nginx
def test_nginx_worker_is_ended_even_when_the_master_was_killed() -> None:
    server = hb.NginxServer(cpu=None)
    server.wait_ready()
    pids = server.pids()
    os.kill(server.pid, signal.SIGKILL)  # the worker outlives its master unless ended
    server.stop(timeout=2.0)
    assert _alive_any(pids) == []


# ------------------------------------------------------------------------- HTTP peers


@pytest.mark.parametrize("name", peers.http_names())
def test_http_peer_answers_hello_keeps_alive_and_stops_on_sigterm(name: str) -> None:
    why = peers.reason(name)
    if why is not None:
        pytest.skip(why)
    spec = hb.HttpServerSpec(name, "peer", name)
    server = runner.ServerProcess(spec, cpu=0)
    try:
        server.wait_ready()
        assert hb.check_hello(server.port) > len(hb.BODY)
    finally:
        rc, tail = server.stop()
    assert rc in (0, -signal.SIGTERM), tail


@needs_epoll
def test_check_hello_refuses_a_server_that_does_not_say_hello() -> None:
    spec = runner.ServerSpec("epoll", "rung", "epoll")  # the echo app: not HTTP at all
    server = runner.ServerProcess(spec, cpu=0)
    try:
        server.wait_ready()
        with pytest.raises(hb.ResponseError):
            hb.check_hello(server.port, timeout=2.0)
    finally:
        server.stop()


# ----------------------------------------------------------------- real runs with wrk


def tagged_pids(tag: str) -> list[int]:
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


def _cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]


@needs_wrk
@needs_epoll
def test_one_real_short_wrk_run_against_the_http_app_on_epoll(tmp_path: Path) -> None:
    script = tmp_path / "done.lua"
    script.write_text(hb.WRK_SCRIPT)
    server_cpu, load_cpu = _cpus()
    opts = hb.HttpOptions(server_cpu=server_cpu, load_cpu=load_cpu, connections=10, warmup=0,
                          duration=1, repeat=1, wrk=WRK, script=str(script))
    spec = hb.HttpServerSpec("epoll", "rung", "epoll")
    rec = hb.run_one(spec, opts)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["requests"] > 0 and rec["errors"] == 0
    assert rec["wrk"]["exact"] and rec["wrk"]["connections"] == 10
    for key in ("p50_us", "p75_us", "p90_us", "p99_us", "p999_us"):
        assert rec[key] is not None and rec[key] > 0
    assert rec["p50_us"] <= rec["p99_us"] <= rec["p999_us"]
    assert rec["cpu_us_per_rt"] > 0 and rec["server_cpu_s"] > 0
    assert rec["response_bytes"] == pytest.approx(rec["bytes_per_response"], rel=0.02)
    assert "Requests/sec:" in rec["wrk_output"]
    assert rec["server_exit"] in (0, -signal.SIGTERM)


@needs_wrk
@needs_epoll
def test_bench_cli_end_to_end_writes_results_docs_and_leaves_nothing(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nthe echo page\n")
    out = tmp_path / "out"
    env = dict(os.environ, **{TAG: tag})
    proc = subprocess.run([sys.executable, "-m", "ioladder", "bench", "--profile", "http",
                           "--servers", "epoll", "--repeat", "1", "--warmup", "0",
                           "--duration", "1", "--connections", "10", "--no-plots",
                           "--out", str(out), "--docs", str(docs)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = runner.load(out / "results.json")
    assert runner.validate(results) == []
    assert hb.is_http_results(results)
    cell = results["cases"][0]["results"]["epoll"]
    assert cell["status"] == "ok", cell["reason"]
    assert (out / "table.txt").read_text().count("epoll") >= 1
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nthe echo page\n")
    assert hb.DOCS_BEGIN in text and hb.DOCS_END in text and "make bench-http" in text
    deadline = time.monotonic() + 5
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged_pids(tag) == []


# ------------------------------------------------------------------ report and docs


def _run(rt: float, cpu_us: float, **extra: Any) -> dict[str, Any]:
    run = {"rep": 0, "status": "ok", "reason": None, "order": 0, "rt_per_s": rt,
           "mb_per_s": rt * 160 / 1e6, "p50_us": 600.0, "p75_us": 800.0, "p90_us": 2000.0,
           "p99_us": 7000.0, "p999_us": 11000.0, "requests": int(rt * 5), "connections": 100,
           "errors": 0, "server_cpu_s": rt * cpu_us / 1e6 * 4.7, "server_cpu_util": 0.95,
           "cpu_us_per_rt": cpu_us, "cpu_s_per_100k": cpu_us / 10, "rss_idle_kib": 20000,
           "rss_held_kib": 21000, "rss_load_kib": 21000, "rss_per_conn_b": 10240.0,
           "threads": 1, "client_cpu_util": 0.8, "bytes_per_response": 133.0,
           "response_bytes": 133, "load": {}, "syscalls_note": "off"}
    run.update(extra)
    return run


def synthetic() -> dict[str, Any]:
    case = {"id": hb.CASE_ID, "label": "HTTP GET /", "connections": 100,
            "requested_connections": 100, "capped": None, "size": 13, "depth": 1, "rate": 0.0,
            "kind": "http", "ceiling": None, "results": {}}
    figures = {"epoll": (60000, 11.0), "saea": (118000, 6.9), hb.NGINX: (122000, 7.8),
               hb.RAW: (120000, 7.1), "asyncio-httptools": (104000, 9.5),
               "uvicorn": (36000, 27.0)}
    for name, (rt, cpu) in figures.items():
        case["results"][name] = hb.finish_cell([
            _run(rt, cpu, user_us_per_rt=cpu * 0.3, kernel_us_per_rt=cpu * 0.7),
            _run(rt * 1.02, cpu * 0.98, interference="other work used 20% of server CPU 0")])
    case["results"]["blocking"] = hb.finish_cell([_run(0, 0, status="error",
                                                       reason="wrk: 12 non-2xx/3xx responses")])
    hb.finish_case(case)
    servers = [{"name": n, "kind": "rung" if n in rungs.names() else "peer", "description": n,
                "available": True, "reason": None}
               for n in ("blocking", "epoll", "saea", hb.NGINX, hb.RAW, "asyncio-httptools",
                         "uvicorn")]
    return {"schema": runner.SCHEMA, "created": "2026-01-01T00:00:00+00:00",
            "command": "ioladder bench --profile http", "interrupted": False,
            "elapsed_s": 300.0,
            "profile": {"name": "http", "description": "test", "warmup_s": 1,
                        "duration_s": 5, "repeat": 2, "server_cpu": 0, "load_cpu": 1,
                        "perf": False, "client": "wrk -t1 -c100 -d5s --latency",
                        "window": "inside wrk's", "order": "interleaved"},
            "machine": {"cpu_model": "Test CPU", "cores": 2, "kernel": "6.0", "python": "3.11",
                        "packages": {"uvloop": "0.23"}, "rlimit_nofile": [1024, 4096],
                        "perf": "available", "wrk": "wrk 4.1.0", "nginx": "nginx/1.22.1"},
            "servers": servers, "notes": ["a note"], "cases": [case]}


def test_synthetic_http_results_follow_the_schema_and_ratios_are_against_this_run() -> None:
    results = synthetic()
    assert runner.validate(results) == []
    cells = results["cases"][0]["results"]
    assert cells["saea"]["vs"][hb.NGINX]["rt_per_s"] == pytest.approx(118 / 122)
    assert cells["saea"]["vs"][hb.RAW]["cpu_us_per_rt"] == pytest.approx(6.9 / 7.1)
    assert results["cases"][0]["ceiling"]["server"] == hb.NGINX
    assert cells["saea"]["near_ceiling"] and not cells["epoll"]["near_ceiling"]
    assert cells["blocking"]["status"] == "error"


def test_targets_are_judged_against_nginx_the_raw_server_and_uvicorn() -> None:
    rows = hb.target_rows(synthetic())
    assert [r[1] for r in rows] == [">= 0.95x", "<= 1.00x", ">= 3.00x"]
    assert rows[0][2].startswith("0.97x (met)")
    assert rows[1][2].startswith("0.97x (met)")
    assert rows[2][2].startswith("3.28x (met)")
    results = synthetic()
    del results["cases"][0]["results"]["saea"]
    assert all("not measured" in r[2] for r in hb.target_rows(results))


def test_table_html_and_plots_render(tmp_path: Path) -> None:
    results = synthetic()
    text = hb.table_text(results)
    assert "FAILED" in text and "12 non-2xx/3xx" in text and "⚑" in text
    plots = hb.write_plots(results, tmp_path)
    assert set(plots) == {"http_rps", "http_cpu", "http_latency"}
    page = hb.write_html(results, tmp_path, plots).read_text()
    assert "data:image/png;base64," in page and "uvloop-httptools" in page


def test_docs_section_is_written_replaced_and_kept_by_the_echo_page(tmp_path: Path) -> None:
    import test_report  # the echo report's synthetic results, from the same test folder

    docs = tmp_path / "benchmarks.md"
    report.write_docs(test_report.synthetic(), docs)
    echo_page = docs.read_text()
    hb.write_docs_section(synthetic(), docs, "make bench-http")
    first = docs.read_text()
    assert first.startswith(echo_page.rstrip("\n"))
    section = first[first.index(hb.DOCS_BEGIN):]
    for needle in ("## HTTP: the `http` app under wrk", "make bench-http", "### Targets",
                   "### Reading", "shared and noisy", "| **saea** |", "nginx/1.22.1",
                   "user space + kernel", "The undisturbed runs only",
                   "undisturbed runs only |"):
        assert needle in section, needle
    # writing it again replaces it, once
    changed = copy.deepcopy(synthetic())
    changed["created"] = "2026-02-02T00:00:00+00:00"
    hb.write_docs_section(changed, docs, "make bench-http")
    again = docs.read_text()
    assert again.count(hb.DOCS_BEGIN) == 1 and "2026-02-02" in again
    # the echo page's writer keeps the section as it is
    report.write_docs(test_report.synthetic(), docs)
    kept = docs.read_text()
    assert kept.count(hb.DOCS_BEGIN) == 1
    assert kept[kept.index(hb.DOCS_BEGIN):] == again[again.index(hb.DOCS_BEGIN):]


def test_report_cli_renders_a_stored_http_run(tmp_path: Path) -> None:
    path = runner.save(synthetic(), tmp_path)
    docs = tmp_path / "b.md"
    proc = subprocess.run([sys.executable, "-m", "ioladder.bench.report", str(path), "--html",
                           str(tmp_path / "html"), "--docs", str(docs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "html" / "report.html").exists()
    assert hb.DOCS_BEGIN in docs.read_text() and "make bench-http" in docs.read_text()


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "--profile", "http", "--help"],
                                  ["load", "--help"]])
def test_every_bench_help_page_prints(argv: list[str]) -> None:
    # argparse %-formats help strings: a stray '%' broke `--profile http --help` once.
    proc = subprocess.run([sys.executable, "-m", "ioladder", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
