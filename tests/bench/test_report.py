"""The report from a results dict alone: tables, flags, plots, HTML, docs and compare.

A synthetic ``results.json`` (built here, in the documented schema) stands in for a run, so
every rendering path is pinned without starting a process.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ioladder.bench import report, runner


def _run(rt: float, cpu_us: float, **extra: Any) -> dict[str, Any]:
    run = {"rep": 0, "status": "ok", "reason": None, "order": 0, "rt_per_s": rt,
           "mb_per_s": rt * 64 / 1e6, "p50_us": 50.0, "p99_us": 200.0, "p999_us": 900.0,
           "messages": int(rt), "elapsed_s": 1.0, "connections": 100, "errors": 0,
           "connect_errors": 0, "server_cpu_s": rt * cpu_us / 1e6,
           "server_cpu_util": rt * cpu_us / 1e6, "cpu_source": "schedstat",
           "cpu_us_per_rt": cpu_us, "cpu_s_per_100k": cpu_us / 10, "rss_idle_kib": 20000,
           "rss_held_kib": 20300, "rss_load_kib": 20400, "rss_hwm_kib": 20500,
           "rss_per_conn_b": 300 * 1024 / 100, "threads_idle": 1, "threads_held": 1,
           "threads": 1, "syscalls": int(rt * 2), "syscalls_per_rt": 2.0,
           "client_cpu_util": 0.95, "offered_rate": 0.0, "server_exit": 0, "load": {}}
    run.update(extra)
    return run


def _cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return runner.finish_cell(runs)


def synthetic() -> dict[str, Any]:
    cases = []
    for conns, depth, rate in ((100, 1, 0.0), (1000, 1, 0.0), (100, 1, 40000.0)):
        case = runner.Case(conns, 64, depth, rate)
        rec = {"id": case.id, "label": case.label, "connections": conns,
               "requested_connections": conns, "capped": None, "size": 64, "depth": depth,
               "rate": rate, "kind": case.kind, "ceiling": None, "results": {}}
        fixed = bool(rate)
        rec["results"]["epoll"] = _cell([_run(40000 if fixed else 100000, 9.0),
                                         _run(40000 if fixed else 104000, 9.5)])
        rec["results"]["asyncio"] = _cell([_run(40000 if fixed else 60000, 14.0)])
        rec["results"][runner.FLOOR] = _cell([_run(40000 if fixed else 110000, 6.0)])
        if conns == 1000:
            rec["results"]["select"] = {
                "status": "unreachable", "reason": "cannot reach: select holds at most 1,016 "
                "connections by construction (select(2))", "runs": [], "summary": {},
                "near_ceiling": False, "vs_floor": None}
        else:
            rec["results"]["select"] = _cell([_run(50000, 20.0)])
        runner.finish_case(rec)
        cases.append(rec)
    servers = [{"name": n, "kind": k, "description": n, "available": True, "reason": None}
               for n, k in (("select", "rung"), ("epoll", "rung"), ("asyncio", "peer"),
                            (runner.FLOOR, "floor"))]
    servers.append({"name": "trio", "kind": "peer", "description": "trio", "available": False,
                    "reason": "package 'trio' is not installed"})
    return {
        "schema": runner.SCHEMA, "created": "2026-01-01T00:00:00+00:00",
        "command": "ioladder bench --quick", "interrupted": False, "elapsed_s": 12.0,
        "profile": {"name": "quick", "description": "test", "warmup_s": 0.3,
                    "duration_s": 1.0, "repeat": 2, "server_cpu": 0, "load_cpu": 1,
                    "perf": True, "order": "interleaved"},
        "machine": {"cpu_model": "Test CPU 9000", "cores": 2, "cpus_allowed": [0, 1],
                    "kernel": "6.0-test", "os": "TestOS", "python": "3.11.7",
                    "python_implementation": "CPython", "gcc": "12", "mem_total_mib": 1024,
                    "packages": {"uvloop": "0.1", "trio": None}, "rlimit_nofile": [1024, 4096],
                    "threads_limit": "x", "perf": "available", "io_uring_disabled": "0"},
        "servers": servers,
        "notes": ["trio skipped: package 'trio' is not installed"],
        "cases": cases,
    }


def test_synthetic_results_follow_the_documented_schema() -> None:
    assert runner.validate(synthetic()) == []
    broken = synthetic()
    del broken["cases"][0]["results"]["epoll"]["runs"][0]["rt_per_s"]
    assert any("rt_per_s" in p for p in runner.validate(broken))


def test_medians_and_spread_over_repetitions() -> None:
    cell = synthetic()["cases"][0]["results"]["epoll"]
    rt = cell["summary"]["rt_per_s"]
    assert (rt["median"], rt["min"], rt["max"], rt["n"]) == (102000, 100000, 104000, 2)
    assert report.spread(cell, "rt_per_s", report.fmt_rate) == "102k [100k-104k]"


def test_ratios_are_against_the_floor_of_the_same_case() -> None:
    case = synthetic()["cases"][0]
    vs = case["results"]["asyncio"]["vs_floor"]
    assert abs(vs["rt_per_s"] - 60000 / 110000) < 1e-9
    assert abs(vs["cpu_us_per_rt"] - 14.0 / 6.0) < 1e-9


def test_servers_within_ten_percent_of_the_ceiling_are_flagged() -> None:
    case = synthetic()["cases"][0]
    assert case["ceiling"]["server"] == runner.FLOOR
    flags = {n: c["near_ceiling"] for n, c in case["results"].items()}
    assert flags == {"epoll": True, "asyncio": False, runner.FLOOR: True, "select": False}
    text = report.table_text(synthetic())
    assert report.CEILING_MARK in text and "within 10% of ceiling" in text


def test_fixed_rate_case_has_no_ceiling_flags() -> None:
    fixed = synthetic()["cases"][2]
    assert fixed["kind"] == "fixed-rate" and fixed["ceiling"] is None
    assert not any(c["near_ceiling"] for c in fixed["results"].values())
    assert "figure of merit" in report.case_title(fixed)


def test_unreachable_cell_shows_the_reason_instead_of_numbers() -> None:
    results = synthetic()
    case = results["cases"][1]
    row = report.row_cells("select", case["results"]["select"], case)
    assert row[1] == "cannot reach" and "FD_SETSIZE" not in row[1]
    assert "1,016" in row[-1]
    assert all(c == "-" for c in row[2:-1])


def test_failed_runs_are_reported_as_failures_not_numbers() -> None:
    cell = runner.finish_cell([_run(1000, 5.0, status="error", reason="3 errors (3 bytes wrong)")])
    assert cell["status"] == "error" and "bytes wrong" in cell["reason"]
    mixed = runner.finish_cell([_run(1000, 5.0), _run(0, 0, status="error", reason="boom")])
    assert mixed["status"] == "ok" and "1 of 2 runs failed: boom" in mixed["reason"]


def test_terminal_tables_render() -> None:
    console = Console(record=True, width=220)
    console.print(report.summary_tables(synthetic()))
    text = console.export_text()
    for word in ("epoll", "asyncio", "select", runner.FLOOR, "p99.9", "RSS/conn",
                 "syscalls/rt", "cannot reach"):
        assert word in text


def test_plots_and_self_contained_html(tmp_path: Path) -> None:
    results = synthetic()
    plots = report.write_plots(results, tmp_path)
    assert set(plots) == {"throughput", "latency", "rss", "cpu"}
    for path in plots.values():
        assert path.read_bytes()[:4] == b"\x89PNG"
    html = report.write_html(results, tmp_path, plots).read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "Test CPU 9000" in html and "6.0-test" in html and "uvloop 0.1" in html
    assert "trio" in html and "not installed" in html
    assert "<script" not in html and "src='http" not in html


def test_compare_table_ratios(tmp_path: Path) -> None:
    old = synthetic()
    new = copy.deepcopy(old)
    new["cases"][0]["results"]["epoll"]["summary"]["cpu_us_per_rt"]["median"] *= 0.5
    console = Console(record=True, width=200)
    console.print(report.compare_table(old, new))
    text = console.export_text()
    epoll = [ln for ln in text.splitlines() if " epoll " in ln][0]
    assert "1.00x" in epoll and "0.50x" in epoll
    assert "old unreachable, new unreachable" in text


def test_docs_page_holds_numbers_commands_and_a_reading(tmp_path: Path) -> None:
    path = report.write_docs(synthetic(), tmp_path / "benchmarks.md")
    text = path.read_text()
    for heading in ("## Reproduce", "## Machine", "## Method", "## Results",
                    "## The load generator's ceiling", "## Reading the ladder",
                    "## The peers, against the C floor", "## Design targets"):
        assert heading in text, heading
    assert "make bench-docs" in text and "`quick` profile" in text
    assert "### `epoll` vs `select`" in text
    assert "Test CPU 9000" in text
    # numbers from the results, and the verdict they imply
    assert "100k" in text or "102k" in text
    assert "**gains**" in text
    # a rung that could not reach a case says why instead of a comparison
    assert "cannot reach" in text


def test_report_cli_rerenders_a_stored_run(tmp_path: Path) -> None:
    results = synthetic()
    runner.save(results, tmp_path)
    assert report.main([str(tmp_path / "results.json"), "--html", str(tmp_path / "html"),
                        "--docs", str(tmp_path / "b.md")]) == 0
    assert (tmp_path / "html" / "report.html").is_file()
    assert (tmp_path / "b.md").read_text().startswith("# Benchmarks")


def test_extra_syscalls_are_explained_only_where_measured(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    results = synthetic()
    case = report.find_case(results, connections=100, size=64, depth=1, rate=0.0)
    assert case is not None
    for name, per_rt in (("asyncio", 5.0), ("select", 4.0)):
        for run in case["results"][name]["runs"]:
            run["syscalls_per_rt"] = per_rt
        case["results"][name] = runner.finish_cell(case["results"][name]["runs"])
    monkeypatch.setitem(report.WHY_SYSCALLS, "select", "one `select` per message, measured")
    text = report.write_docs(results, tmp_path / "benchmarks.md").read_text()
    section = text.split("## Where the extra syscalls come from")[1].split("\n## ")[0]
    assert "- `select`: 4.00 (floor 2.00): one `select` per message, measured" in section
    assert "- `asyncio`: 5.00 (floor 2.00): not analysed here" in section
    assert "(`ioladder.allocator.settle_allocator`" in section
    # the case bullets point there, and name no cause themselves
    assert "(see *Where the extra syscalls come from*)" in text
    assert "allocator traffic" not in text
