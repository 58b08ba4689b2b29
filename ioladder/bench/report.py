"""Everything the bench shows: the live progress, terminal tables, plots, the HTML report, the
comparison of two runs, and ``docs/benchmarks.md``.

All of it is computed from a ``results.json`` dict (schema in :mod:`ioladder.bench.runner`), so
a stored run can be re-rendered: ``python -m ioladder.bench.report RESULTS.json [--html DIR]
[--docs docs/benchmarks.md]``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table

FLOOR = "c-epoll"
CEILING_MARK = "⚑"

# ------------------------------------------------------------------------------ numbers


def fmt_rate(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e5:
        return f"{x / 1e3:.0f}k"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def fmt_us(x: float | None) -> str:
    """Microseconds with a unit: 65.9us, 372us, 4.2ms, 1.26s."""
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}s"
    if x >= 10000:
        return f"{x / 1000:.0f}ms"
    if x >= 1000:
        return f"{x / 1000:.1f}ms"
    if x >= 100:
        return f"{x:.0f}us"
    return f"{x:.1f}us"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    sign = "-" if b < 0 else ""
    b = abs(b)
    if b >= 1024 * 1024:
        return f"{sign}{b / 1024 / 1024:.1f} MiB"
    if b >= 10 * 1024:
        return f"{sign}{b / 1024:.0f} KiB"
    if b >= 1024:
        return f"{sign}{b / 1024:.1f} KiB"
    return f"{sign}{b:.0f} B"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def med(cell: dict[str, Any], metric: str) -> float | None:
    m = cell.get("summary", {}).get(metric)
    return m["median"] if m else None


def spread(cell: dict[str, Any], metric: str, fmt: Any) -> str:
    """``median`` or ``median [min-max]`` when there is more than one run."""
    m = cell.get("summary", {}).get(metric)
    if not m:
        return "-"
    text = fmt(m["median"])
    if m["n"] > 1:
        text += f" [{fmt(m['min'])}-{fmt(m['max'])}]"
    return text


def server_order(results: dict[str, Any]) -> list[str]:
    return [s["name"] for s in results["servers"]]


def ordered_cells(results: dict[str, Any], case: dict[str, Any]) -> list[tuple[str, dict]]:
    return [(n, case["results"][n]) for n in server_order(results) if n in case["results"]]


# ------------------------------------------------------------------------------- tables

COLUMNS = [("server", "left"), ("rt/s", "right"), ("xfloor", "right"), ("MB/s", "right"),
           ("p50", "right"), ("p99", "right"), ("p99.9", "right"),
           ("CPU s/100k rt", "right"), ("CPU xfloor", "right"), ("RSS", "right"),
           ("RSS/conn", "right"), ("thr", "right"), ("syscalls/rt", "right"), ("note", "left")]


def row_cells(name: str, cell: dict[str, Any], case: dict[str, Any]) -> list[str]:
    """One table row as plain strings (the terminal, HTML and markdown tables share it)."""
    status = cell["status"]
    if status != "ok":
        word = {"unreachable": "cannot reach", "error": "FAILED",
                "skipped": "skipped"}.get(status, status)
        return [name, word, *["-"] * 11, cell.get("reason") or ""]
    vs = cell.get("vs_floor") or {}
    rt = spread(cell, "rt_per_s", fmt_rate)
    if cell.get("near_ceiling"):
        rt += f" {CEILING_MARK}"
    rss_conn = med(cell, "rss_per_conn_b")
    sys_rt = med(cell, "syscalls_per_rt")
    notes = []
    if cell.get("reason"):
        notes.append(cell["reason"])
    if cell.get("near_ceiling"):
        ceiling = case.get("ceiling") or {}
        notes.append("ceiling" if ceiling.get("server") == name else "within 10% of ceiling")
    sys_text = f"{sys_rt:.2f}" if sys_rt is not None else (cell.get("syscalls_note") or "-")
    threads = med(cell, "threads")
    return [
        name,
        rt,
        fmt_ratio(vs.get("rt_per_s")),
        spread(cell, "mb_per_s", lambda x: f"{x:.1f}"),
        fmt_us(med(cell, "p50_us")),
        fmt_us(med(cell, "p99_us")),
        fmt_us(med(cell, "p999_us")),
        spread(cell, "cpu_s_per_100k", lambda x: f"{x:.3f}"),
        fmt_ratio(vs.get("cpu_us_per_rt")),
        fmt_bytes((med(cell, "rss_load_kib") or 0) * 1024),
        fmt_bytes(rss_conn) if rss_conn is not None else "-",
        f"{threads:.0f}" if threads is not None else "-",
        sys_text,
        "; ".join(notes),
    ]


def case_title(case: dict[str, Any]) -> str:
    title = case["label"]
    if case["kind"] == "fixed-rate":
        title += " (figure of merit: server CPU per round trip)"
    if case.get("capped"):
        title += f" [capped: {case['capped']}]"
    return title


#: columns dropped on a terminal narrower than WIDE (the files always hold every column)
NARROW_DROP = {"MB/s", "p99.9", "RSS", "xfloor"}
WIDE = 170


def case_table(results: dict[str, Any], case: dict[str, Any], compact: bool = False) -> Table:
    table = Table(title=case_title(case), title_justify="left", header_style="bold",
                  pad_edge=False, expand=False)
    keep = [i for i, (name, _) in enumerate(COLUMNS) if not (compact and name in NARROW_DROP)]
    for i in keep:
        name, justify = COLUMNS[i]
        table.add_column(name, justify=justify, overflow="fold",
                         max_width=48 if name == "note" else None,
                         min_width=24 if name == "note" else None)
    for name, cell in ordered_cells(results, case):
        row = row_cells(name, cell, case)
        cells = [row[i] for i in keep]
        style = None
        if cell["status"] != "ok":
            style = "yellow" if cell["status"] == "unreachable" else "red"
        elif name == FLOOR:
            style = "cyan"
        table.add_row(*cells, style=style)
    return table


def ceiling_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for case in results["cases"]:
        c = case.get("ceiling")
        if not c:
            continue
        util = c.get("client_cpu_util")
        busy = ""
        if util is not None:
            busy = (f"; generator CPU {util:.0%}"
                    + (" (its core is saturated: this ceiling is the generator's)"
                       if util >= 0.9 else " (not saturated: the ceiling is the server's and "
                                             "loopback TCP's)"))
        near = [n for n, cell in case["results"].items() if cell.get("near_ceiling")]
        lines.append(f"{case['label']}: ceiling {fmt_rate(c['rt_per_s'])} rt/s by {c['server']}"
                     f"{busy}; within 10 %: {', '.join(near) or 'none'}")
    return lines


def footer_lines(results: dict[str, Any]) -> list[str]:
    out = [f"{CEILING_MARK} = within 10 % of the load generator's ceiling in this case (the "
           "fastest server, normally the C floor): there the generator, not the server, may be "
           "the limit. xfloor = ratio to the C epoll floor measured in the same run. CPU s/100k "
           "rt x 10 = CPU us per round trip. RSS = at the end of the window; RSS/conn = (RSS "
           "with every connection open - RSS idle) / connections."]
    out += ["generator ceiling: " + line for line in ceiling_lines(results)]
    out += ["note: " + n for n in results.get("notes", [])]
    prof = results["profile"]
    out.append(f"profile {prof['name']}: {prof['warmup_s']:g} s warm-up + {prof['duration_s']:g}"
               f" s measured, {prof['repeat']} repetition(s), medians [min-max]; "
               f"took {results.get('elapsed_s', 0):.0f} s")
    return out


def summary_tables(results: dict[str, Any], width: int = WIDE) -> Group:
    """Every case's table; fewer columns when the terminal is narrower than WIDE."""
    compact = width < WIDE
    return Group(*[case_table(results, c, compact) for c in results["cases"]])


def table_text(results: dict[str, Any], width: int = 220) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      highlight=False)
    for case in results["cases"]:
        console.print(case_table(results, case))
        console.print()
    for line in footer_lines(results):
        console.print(line, soft_wrap=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- progress


def run_with_progress(bench: Any, console: Console, total: int) -> dict[str, Any]:
    """Run ``bench`` under a live rich progress bar; print one line per finished case."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                  BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=console, refresh_per_second=2,
                  transient=False) as progress:
        task = progress.add_task("starting", total=total)

        def on_case(case: dict[str, Any]) -> None:
            ok = [(n, med(c, "rt_per_s")) for n, c in case["results"].items()
                  if c["status"] == "ok"]
            bad = [n for n, c in case["results"].items() if c["status"] != "ok"]
            if case["kind"] == "fixed-rate":
                cpu = [(n, med(c, "cpu_us_per_rt")) for n, c in case["results"].items()
                       if c["status"] == "ok" and med(c, "cpu_us_per_rt")]
                best = min(cpu, key=lambda x: x[1]) if cpu else None
                what = f"least CPU {best[0]} {best[1]:.1f} us/rt" if best else "no result"
            else:
                best = max(ok, key=lambda x: x[1] or 0) if ok else None
                what = f"fastest {best[0]} {fmt_rate(best[1])} rt/s" if best else "no result"
            extra = f"; not measured: {', '.join(bad)}" if bad else ""
            progress.console.print(f"[green]done[/] {case['label']}: {what}{extra}")

        results = bench.run(progress=lambda text: progress.update(task, description=text),
                            on_case=on_case, advance=lambda: progress.advance(task))
        progress.update(task, description="done")
    return results


# -------------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def _ok_servers(results: dict[str, Any]) -> list[str]:
    names = []
    for n in server_order(results):
        if any(c["results"].get(n, {}).get("status") == "ok" for c in results["cases"]):
            names.append(n)
    return names


def _grid(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else 2
    return math.ceil(n / cols), cols


def plot_throughput(results: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for case in results["cases"]:
        if case["kind"] == "closed":
            groups.setdefault((case["size"], case["depth"]), []).append(case)
    names = _ok_servers(results)
    if not groups or not names:
        return None
    colors = _colors(names)
    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    for ax, ((size, depth), cases) in zip(axes.flat, sorted(groups.items()), strict=False):
        cases = sorted(cases, key=lambda c: c["connections"])
        for n in names:
            xs, ys, lo, hi = [], [], [], []
            for c in cases:
                cell = c["results"].get(n)
                if cell and cell["status"] == "ok":
                    s = cell["summary"]["rt_per_s"]
                    xs.append(c["connections"])
                    ys.append(s["median"])
                    lo.append(s["median"] - s["min"])
                    hi.append(s["max"] - s["median"])
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=n,
                            color=colors[n], linewidth=2.2 if n == FLOOR else 1.2,
                            linestyle="--" if n == FLOOR else "-")
        ax.set_xscale("log")
        counts = [c["connections"] for c in cases]
        ax.set_xticks(counts)
        ax.set_xticklabels([f"{c:,}" for c in counts])
        ax.set_xlim(min(counts) / 2, max(counts) * 2)
        ax.minorticks_off()
        ax.set_title(f"{size} B, depth {depth}")
        ax.set_xlabel("connections")
        ax.set_ylabel("round trips / s")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle("Throughput vs connections (median, bars min-max)")
    fig.tight_layout(rect=(0, 0, 0.85, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _bar_cases(results: dict[str, Any], limit: int = 6) -> list[dict[str, Any]]:
    cases = results["cases"]
    preferred = [c for c in cases if c["kind"] == "fixed-rate" or c["connections"] in (100, 1000)]
    rest = [c for c in cases if c not in preferred]
    return (preferred + rest)[:limit]


def plot_latency(results: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    names = _ok_servers(results)
    cases = [c for c in _bar_cases(results)
             if any(c["results"].get(n, {}).get("status") == "ok" for n in names)]
    if not cases:
        return None
    rows, cols = _grid(len(cases))
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 0.32 * len(names) * rows + 1.6 * rows),
                             squeeze=False)
    pct = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
    shades = ["#4c72b0", "#dd8452", "#c44e52"]
    for ax, case in zip(axes.flat, cases, strict=False):
        present = [n for n in names if case["results"].get(n, {}).get("status") == "ok"]
        h = 0.27
        for j, ((metric, label), shade) in enumerate(zip(pct, shades, strict=True)):
            ys = [i + (j - 1) * h for i in range(len(present))]
            vals = [med(case["results"][n], metric) or 0 for n in present]
            ax.barh(ys, vals, height=h, label=label, color=shade)
        ax.set_yticks(range(len(present)))
        ax.set_yticklabels(present, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("latency, microseconds (log)")
        ax.set_title(case["label"], fontsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    fig.suptitle("Latency percentiles (median of runs)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _rss_points(results: dict[str, Any], name: str) -> list[tuple[int, float]]:
    by_conns: dict[int, float] = {}
    for case in sorted(results["cases"], key=lambda c: (c["depth"], c["size"], c["rate"])):
        cell = case["results"].get(name)
        v = med(cell, "rss_per_conn_b") if cell and cell["status"] == "ok" else None
        if v is not None and case["connections"] not in by_conns:
            by_conns[case["connections"]] = v
    return sorted(by_conns.items())


def plot_rss(results: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    names = _ok_servers(results)
    points = {n: _rss_points(results, n) for n in names}
    conns = sorted({c for pts in points.values() for c, _ in pts if c >= 10})
    if not conns:
        return None
    colors = _colors(names)
    fig, ax = plt.subplots(figsize=(max(7, 1.0 * len(names)), 4.5))
    width = 0.8 / len(conns)
    for j, c in enumerate(conns):
        vals = [dict(points[n]).get(c) for n in names]
        xs = [i + (j - (len(conns) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [(v or 0) / 1024 for v in vals], width=width, label=f"{c:,} conns",
               color=[colors[n] for n in names], alpha=0.45 + 0.55 * (j + 1) / len(conns),
               edgecolor="black", linewidth=0.3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("KiB of RSS per open connection")
    ax.set_title("Memory per connection: (RSS with connections open - RSS idle) / connections")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_cpu(results: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    cases = _bar_cases(results)
    names = _ok_servers(results)
    if not cases or not names:
        return None
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.7 * len(names) + 3)), 5))
    width = 0.8 / len(cases)
    for j, case in enumerate(cases):
        xs = [i + (j - (len(cases) - 1) / 2) * width for i in range(len(names))]
        vals = [med(case["results"].get(n, {}), "cpu_us_per_rt") or float("nan") for n in names]
        ax.bar(xs, vals, width=width, label=case["label"])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("server CPU us per round trip (log)")
    ax.set_title("Server CPU per round trip (lower is better; the floor is c-epoll)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    for name, fn in (("throughput", plot_throughput), ("latency", plot_latency),
                     ("rss", plot_rss), ("cpu", plot_cpu)):
        path = fn(results, out / f"{name}.png")
        if path is not None:
            plots[name] = path
    return plots


# --------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
td:first-child,th:first-child,td.note{text-align:left}td.note{white-space:normal;max-width:30em}
tr.floor{background:#eef7fb}tr.unreachable{background:#fff8e1}tr.error{background:#fdecea}
tr.near td:nth-child(2){font-weight:bold}
.kv td{text-align:left}img{max-width:100%;border:1px solid #eee;margin:1em 0}
code{background:#f4f4f4;padding:0 .3em}
"""


def _html_table(header: list[str], rows: Iterable[tuple[list[str], str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for cells, cls in rows:
        tds = []
        for i, c in enumerate(cells):
            klass = ' class="note"' if i == len(cells) - 1 else ""
            tds.append(f"<td{klass}>{html.escape(c)}</td>")
        out.append(f'<tr class="{cls}">' + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def machine_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    m = results["machine"]
    pk = ", ".join(f"{k} {v or 'absent'}" for k, v in m.get("packages", {}).items())
    return [
        ("CPU", f"{m.get('cpu_model')} ({m.get('cores')} cores; allowed {m.get('cpus_allowed')})"),
        ("memory", f"{m.get('mem_total_mib')} MiB"),
        ("kernel", f"{m.get('kernel')} ({m.get('os')})"),
        ("Python", f"{m.get('python')} ({m.get('python_implementation')})"),
        ("gcc", str(m.get("gcc"))),
        ("packages", pk),
        ("RLIMIT_NOFILE", "{} soft / {} hard".format(*m.get("rlimit_nofile", ["?", "?"]))),
        ("thread limit", str(m.get("threads_limit"))),
        ("perf (syscalls)", str(m.get("perf"))),
        ("io_uring_disabled", str(m.get("io_uring_disabled"))),
    ]


def write_html(results: dict[str, Any], out: Path, plots: dict[str, Path]) -> Path:
    prof = results["profile"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ioladder bench</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>ioladder bench: the ladder measured</h1>",
             f"<p>Created {html.escape(results['created'])} by "
             f"<code>{html.escape(results.get('command') or 'ioladder bench')}</code>. "
             f"Profile <b>{html.escape(prof['name'])}</b>: {html.escape(prof['description'])}. "
             f"{prof['warmup_s']:g} s warm-up + {prof['duration_s']:g} s measured per run, "
             f"{prof['repeat']} repetition(s); server pinned to CPU {prof['server_cpu']}, load "
             f"generator to CPU {prof['load_cpu']}; {html.escape(prof['order'])}. Took "
             f"{results.get('elapsed_s', 0):.0f} s.</p>"]
    if results.get("interrupted"):
        parts.append("<p><b>Interrupted: these results are partial.</b></p>")
    parts.append("<h2>Machine</h2><table class='kv'>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in machine_rows(results)) + "</table>")
    parts.append("<h2>Servers</h2><table class='kv'>" + "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['description'])}</td>"
        f"<td>{'available' if s['available'] else html.escape('unavailable: ' + str(s['reason']))}"
        f"</td></tr>" for s in results["servers"]) + "</table>")
    if results.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li>{html.escape(n)}</li>" for n in results["notes"]) + "</ul>")
    parts.append("<h2>Results</h2><p>" + html.escape(footer_lines(results)[0]) + "</p>")
    header = [c for c, _ in COLUMNS]
    for case in results["cases"]:
        rows = []
        for name, cell in ordered_cells(results, case):
            cls = cell["status"] if cell["status"] != "ok" else (
                "floor" if name == FLOOR else "")
            if cell.get("near_ceiling"):
                cls += " near"
            rows.append((row_cells(name, cell, case), cls))
        parts.append(f"<h3>{html.escape(case_title(case))}</h3>" + _html_table(header, rows))
    lines = ceiling_lines(results)
    if lines:
        parts.append("<h2>The load generator's ceiling</h2><ul>" + "".join(
            f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    captions = {"throughput": "Throughput vs connections", "latency": "Latency percentiles",
                "rss": "Memory per connection", "cpu": "Server CPU per round trip"}
    if plots:
        parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(captions.get(name, name))}</h3>"
                     f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


# ------------------------------------------------------------------------------ compare


def compare_table(old: dict[str, Any], new: dict[str, Any]) -> Table:
    """Per case and server present in both: NEW / OLD of the medians."""
    table = Table(title=f"ioladder bench --compare: NEW ({new['created']}) / OLD "
                        f"({old['created']})", title_justify="left", header_style="bold")
    for col in ("case", "server", "rt/s new", "rt/s ratio", "p99 ratio", "CPU/rt ratio",
                "RSS/conn ratio", "note"):
        table.add_column(col, justify="left" if col in ("case", "server", "note") else "right")
    old_cases = {c["id"]: c for c in old["cases"]}
    matched = 0
    for case in new["cases"]:
        oc = old_cases.get(case["id"])
        if oc is None:
            continue
        for name, cell in ordered_cells(new, case):
            ocell = oc["results"].get(name)
            if ocell is None:
                table.add_row(case["label"], name, fmt_rate(med(cell, "rt_per_s")), "-", "-",
                              "-", "-", "only in NEW")
                continue
            matched += 1
            if cell["status"] != "ok" or ocell["status"] != "ok":
                table.add_row(case["label"], name, "-", "-", "-", "-", "-",
                              f"old {ocell['status']}, new {cell['status']}")
                continue

            def ratio(metric: str, a: dict = cell, b: dict = ocell) -> str:
                x, y = med(a, metric), med(b, metric)
                return fmt_ratio(x / y) if x and y else "-"
            table.add_row(case["label"], name, fmt_rate(med(cell, "rt_per_s")),
                          ratio("rt_per_s"), ratio("p99_us"), ratio("cpu_us_per_rt"),
                          ratio("rss_per_conn_b"), "")
    if not matched:
        table.add_row("-", "-", "-", "-", "-", "-", "-", "no case and server in common")
    return table


# --------------------------------------------------------------------------------- docs


def md_table(results: dict[str, Any], case: dict[str, Any]) -> str:
    header = [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if j == "left" else "---:" for _, j in COLUMNS) + "|"]
    for name, cell in ordered_cells(results, case):
        cells = [c.replace("|", "/") for c in row_cells(name, cell, case)]
        if name == FLOOR:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: What each rung changes against the one below it, and what that should cost or save. The
#: docs state these next to the measured ratios, and say when the numbers disagree.
WHY_RUNG = {
    "blocking": (
        "a thread per connection parked in `recv()`. Every message is a thread wake-up and a "
        "GIL hand-off; with many connections the threads queue for one GIL on one core, so the "
        "scheduler, not the I/O, sets the pace, and each connection pays a thread's stack "
        "pages and objects in RSS."),
    "select": (
        "one thread and no GIL hand-offs, so a message costs no context switch; but every "
        "pass rebuilds the `fd_set` from the slot array and the kernel scans every descriptor: "
        "O(connections) per wait, which grows with connections, and 1,024 descriptors is a "
        "wall."),
    "asyncselect": (
        "the kernel posts one realtime signal per socket event into a queue read from a "
        "`signalfd`: no O(n) scan per wait, one thread; the price is edge-like messages "
        "(re-posted reads, sends until EAGAIN) and a full rescan if the signal queue "
        "overflows."),
    "eventselect": (
        "`poll(2)` on groups of at most 64 descriptors, a thread per group: each wait scans "
        "only its group, but threads grow with connections (connections / 63) and hand the "
        "GIL to each other, and every reported event is disarmed until re-enabled (an extra "
        "`poll` set change per message)."),
    "epoll": (
        "one kernel-held interest set, registered once per socket: waits cost O(ready), one "
        "thread, no per-pass rebuild; the Linux readiness baseline every event loop uses."),
    "overlapped-event": (
        "io_uring operations that own their buffers, with an eventfd per pending operation "
        "waited in groups of 64: completion instead of readiness, but one wait object per "
        "operation."),
    "overlapped-routine": (
        "io_uring operations whose callbacks run on the issuing thread inside its own wait "
        "(APCs): no event objects, completions dispatched where they were asked for."),
    "iocp": (
        "one completion queue for every socket drained by a worker pool with a concurrency "
        "limit: the shared queue removes per-socket wait objects; Python workers still share "
        "one GIL."),
    "saea": (
        "pooled, reused operation contexts over the completion ring: multishot accept and "
        "recv into one provided-buffer slab, batched submission, no allocation per "
        "operation: the fewest syscalls and the least Python work per round trip."),
}

#: What the extra syscalls per round trip are, for a server `_syscall_heavy` may list:
#: measured with ``perf stat -e 'syscalls:sys_enter_*' -p PID`` at 20k rt/s, 100 conns, 64 B.
WHY_SYSCALLS = {
    "gevent": "per round trip, 2 `recvfrom` (the second finds nothing and the greenlet waits), "
              "a `getsockopt` and a `sendto`; per loop pass an `epoll_wait` and a `getpid`.",
}

WHY_PEER = {
    "asyncio": "the stdlib selector loop (epoll here) with a Protocol: the same wake-up "
               "pattern as the `epoll` rung, its Python overhead in the loop and transport.",
    "asyncio-streams": "the same loop plus StreamReader/StreamWriter and a coroutine per "
                       "connection: every message crosses a Future and a task switch.",
    "uvloop": "libuv's loop and transports in C (Cython): the Python work per message is "
              "only the Protocol callback.",
    "uvloop-streams": "uvloop under asyncio streams: the C loop, the Python streams layer.",
    "aio": "ioladder's own asyncio loop on the completion engine.",
    "aio-streams": "ioladder's own asyncio loop under asyncio streams.",
    "trio": "trio's structured tasks over epoll: a task per connection, every receive and send "
            "a checkpoint through trio's scheduler.",
    "gevent": "greenlets on libev: blocking-style code, a greenlet switch per wait.",
}

DOCS_CASES = [
    ("100 connections, 64 B, 1 in flight", dict(connections=100, size=64, depth=1, rate=0.0)),
    ("100 connections, 64 B, 16 in flight", dict(connections=100, size=64, depth=16, rate=0.0)),
    ("1,000 connections, 64 B, 1 in flight", dict(connections=1000, size=64, depth=1, rate=0.0)),
    ("fixed offered load", dict(kind="fixed-rate")),
]


def find_case(results: dict[str, Any], **want: Any) -> dict[str, Any] | None:
    for case in results["cases"]:
        if all(case.get(k) == v for k, v in want.items()):
            return case
    return None


def _ok(case: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if case is None:
        return None
    cell = case["results"].get(name)
    return cell if cell and cell["status"] == "ok" else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _verdict(rt: float | None, cpu: float | None, tol: float) -> str:
    """gains / loses / ties on server CPU per round trip, the design's figure of merit: it
    is what a server costs per unit of work, and it survives a shared CPU better than rt/s
    (time stolen by other work lowers rt/s but is not the server's CPU)."""
    if cpu is None:
        return "?"
    verdict = "gains" if cpu < 1 - tol else "loses" if cpu > 1 + tol else "ties"
    if rt is not None and verdict != "ties":
        if (verdict == "gains" and rt < 1 - tol) or (verdict == "loses" and rt > 1 + tol):
            verdict += " on CPU, not on rt/s"
    return verdict


def _disturbed(cell: dict[str, Any]) -> bool:
    return any(r.get("interference") for r in cell.get("runs", []))


def pair_lines(results: dict[str, Any], upper: str, lower: str, tol: float) -> list[str]:
    """One bullet per reference case: how ``upper`` fares against ``lower``, with numbers."""
    heavy = {name for name, _, _ in _syscall_heavy(results)}
    lines = []
    for title, want in DOCS_CASES:
        case = find_case(results, **want)
        if case is None:
            continue
        a, b = _ok(case, upper), _ok(case, lower)
        fixed = case["kind"] == "fixed-rate"
        label = case["label"] if fixed else title
        if a is None or b is None:
            missing = [(n, case["results"].get(n)) for n in (upper, lower)
                       if (a if n == upper else b) is None]
            why = "; ".join(f"{n}: {c['status'] if c else 'not run'}"
                            + (f" ({c['reason']})" if c and c.get("reason") else "")
                            for n, c in missing)
            lines.append(f"- {label}: no comparison ({why}).")
            continue
        rt = _ratio(med(a, "rt_per_s"), med(b, "rt_per_s"))
        cpu = _ratio(med(a, "cpu_us_per_rt"), med(b, "cpu_us_per_rt"))
        sys_a, sys_b = med(a, "syscalls_per_rt"), med(b, "syscalls_per_rt")
        thr_a, thr_b = med(a, "threads"), med(b, "threads")
        parts = [f"**{_verdict(rt, cpu, tol)}**:",
                 f"server CPU {med(a, 'cpu_us_per_rt') or 0:.1f} vs "
                 f"{med(b, 'cpu_us_per_rt') or 0:.1f} us per round trip ({fmt_ratio(cpu)})",
                 f"{fmt_rate(med(a, 'rt_per_s'))} vs {fmt_rate(med(b, 'rt_per_s'))} rt/s "
                 f"({fmt_ratio(rt)})",
                 f"p99 {fmt_us(med(a, 'p99_us'))} vs {fmt_us(med(b, 'p99_us'))}"]
        if sys_a is not None and sys_b is not None:
            text = f"{sys_a:.2f} vs {sys_b:.2f} syscalls per round trip"
            if case["depth"] == 1 and abs(sys_a - sys_b) >= 1.5 and {upper, lower} & heavy:
                text += " (see *Where the extra syscalls come from*)"
            parts.append(text)
        if thr_a is not None and thr_b is not None and (thr_a > 2 or thr_b > 2):
            parts.append(f"{thr_a:.0f} vs {thr_b:.0f} threads")
        if case["connections"] >= 1000:
            ra, rb = med(a, "rss_per_conn_b"), med(b, "rss_per_conn_b")
            if ra is not None and rb is not None:
                parts.append(f"{fmt_bytes(ra)} vs {fmt_bytes(rb)} RSS per connection")
        tails = []
        flags = [n for n, c in ((upper, a), (lower, b)) if c.get("near_ceiling")]
        if flags:
            tails.append(f"within 10 % of the generator's ceiling: {', '.join(flags)}, so its "
                         "rt/s may be the generator's")
        unsustained = [n for n, c in ((upper, a), (lower, b))
                       if fixed and c.get("reason") and "sustained" in c["reason"]]
        if unsustained:
            tails.append(f"did not sustain the offered rate: {', '.join(unsustained)}")
        noisy = [n for n, c in ((upper, a), (lower, b)) if _disturbed(c)]
        if noisy:
            tails.append(f"disturbed by other work on the CPUs: {', '.join(noisy)}")
        tail = f" ({'; '.join(tails)})" if tails else ""
        lines.append(f"- {label}: {parts[0]} " + ", ".join(parts[1:]) + "." + tail)
    return lines


def _target_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """design.md section 8, checked against this run where it measured the servers."""
    fixed = find_case(results, kind="fixed-rate")
    d1 = find_case(results, connections=100, size=64, depth=1, rate=0.0)
    d16 = find_case(results, connections=100, size=64, depth=16, rate=0.0)
    k1 = find_case(results, connections=1000, size=64, depth=1, rate=0.0)

    def vs(case: dict[str, Any] | None, name: str, ref: str, metric: str) -> float | None:
        a, b = _ok(case, name), _ok(case, ref)
        return _ratio(med(a, metric), med(b, metric)) if a and b else None

    def show(x: float | None, limit: float, le: bool) -> tuple[str, str]:
        if x is None:
            return "not measured", "-"
        ok = x <= limit if le else x >= limit
        return fmt_ratio(x), "met" if ok else "missed"

    rows = []
    for what, case, name, ref, metric, limit, le in (
        ("`saea` CPU per round trip, fixed rate, vs C epoll", fixed, "saea", FLOOR,
         "cpu_us_per_rt", 1.05, True),
        ("`saea` CPU per round trip, 16 in flight, vs C epoll", d16, "saea", FLOOR,
         "cpu_us_per_rt", 1.10, True),
        ("`saea` rt/s, 1 in flight, 100 conns, vs C epoll", d1, "saea", FLOOR, "rt_per_s",
         0.95, False),
        ("`saea` rt/s, 16 in flight, 100 conns, vs C epoll", d16, "saea", FLOOR, "rt_per_s",
         0.95, False),
        ("`saea` rt/s, 1 in flight, 1,000 conns, vs C epoll", k1, "saea", FLOOR, "rt_per_s",
         0.95, False),
        ("`aio` Protocol CPU per round trip vs uvloop, fixed rate", fixed, "aio", "uvloop",
         "cpu_us_per_rt", 1.0, True),
        ("`aio` streams CPU per round trip vs uvloop streams, fixed rate", fixed,
         "aio-streams", "uvloop-streams", "cpu_us_per_rt", 0.85, True),
        ("uvloop CPU per round trip vs C epoll, fixed rate (article: 1.18x)", fixed, "uvloop",
         FLOOR, "cpu_us_per_rt", 1.18, True),
        ("asyncio CPU per round trip vs C epoll, fixed rate (article: 1.26x)", fixed, "asyncio",
         FLOOR, "cpu_us_per_rt", 1.26, True),
    ):
        target = f"<= {limit:.2f}x" if le else f">= {limit:.2f}x"
        measured, verdict = show(vs(case, name, ref, metric), limit, le)
        rows.append((what, target, f"{measured} ({verdict})" if verdict != "-" else measured))
    return rows


def _syscall_heavy(results: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Servers with >= 1.5 more syscalls per round trip than the floor at 100 conns, depth 1."""
    case = find_case(results, connections=100, size=64, depth=1, rate=0.0)
    floor = _ok(case, FLOOR)
    f = med(floor, "syscalls_per_rt") if floor else None
    if case is None or f is None:
        return []
    out = []
    for name, cell in ordered_cells(results, case):
        v = med(cell, "syscalls_per_rt") if cell["status"] == "ok" else None
        if v is not None and v - f >= 1.5:
            out.append((name, v, f))
    return out


def write_docs(results: dict[str, Any], path: Path, command: str = "make bench-docs") -> Path:
    """Write ``docs/benchmarks.md`` from a results dict: numbers, commands, and a reading."""
    prof = results["profile"]
    rung_names = [s["name"] for s in results["servers"] if s["kind"] == "rung"]
    measured_rungs = [n for n in rung_names
                      if any(_ok(c, n) for c in results["cases"])]
    peer_names = [s["name"] for s in results["servers"] if s["kind"] == "peer"
                  and any(_ok(c, s["name"]) for c in results["cases"])]
    tol = 0.10 if prof["repeat"] < 3 else 0.05
    disturbed = sum(1 for c in results["cases"] for cell in c["results"].values()
                    for r in cell.get("runs", []) if r.get("interference"))
    total_runs = sum(len(cell.get("runs", [])) for c in results["cases"]
                     for cell in c["results"].values())
    out: list[str] = []
    w = out.append
    w("# Benchmarks: the ladder measured")
    w("")
    w("<!-- Generated by `make bench-docs` (ioladder/bench/report.py, write_docs) from "
      "results.json. Edit the generator, not this file. -->")
    w("")
    w(f"These numbers were measured on the machine described below on "
      f"{results['created'][:10]}, with the **`{prof['name']}` profile** "
      f"(`{results.get('command') or 'ioladder bench'}`): {prof['description']}. "
      f"Each run: {prof['warmup_s']:g} s warm-up, {prof['duration_s']:g} s measured, "
      f"{prof['repeat']} repetition(s) per case and server; cells show the median "
      + ("and [min-max] of the repetitions." if prof["repeat"] > 1 else
         "of a single run, so differences under ~10 % are noise.")
      + f" The whole run took {results.get('elapsed_s', 0) / 60:.1f} minutes.")
    w("")
    if disturbed:
        w(f"> **Caveat:** {disturbed} of {total_runs} runs saw other work on the benchmark's "
          "CPUs (this machine was shared while it ran); those cells say `disturbed` in their "
          "note, and their absolute rates are low. Server CPU per round trip, on which "
          "the reading below judges, holds up better than round trips/s, but it too is "
          "noisier than on a quiet machine: regenerate with `make bench-docs` on an otherwise "
          "idle machine before quoting a number.")
        w("")
    w("## Reproduce")
    w("")
    w("| command | what it runs |")
    w("|---|---|")
    w(f"| `{command}` | this page: `ioladder bench --profile {prof['name']} --out "
      "bench-out/docs`, then `python -m ioladder.bench.report bench-out/docs/results.json "
      "--docs docs/benchmarks.md` (`make bench-docs` alone uses the `docs` profile; "
      "`DOCS_PROFILE=quick` is the two-minute version) |")
    w("| `make demo` = `ioladder bench --quick --out bench-out` | the two-minute tour: table, "
      "results.json, plots, report.html |")
    w("| `make bench` = `ioladder bench --full --out bench-out/full` | the whole matrix (1 to 10,000 connections, "
      "64 B and 4 KiB, depth 1 and 16, fixed rate), 3 repetitions |")
    w("| `make bench-echo RUNG=saea` | issue 3's echo cases for one rung beside asyncio, "
      "uvloop and the C floor |")
    w("| `ioladder bench --compare old.json new.json` | per-case ratios of two runs |")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for k, v in machine_rows(results):
        w(f"| {k} | {v.replace('|', '/')} |")
    w("")
    w("## Method")
    w("")
    w(f"- Server pinned to CPU {prof['server_cpu']}, the C load generator to CPU "
      f"{prof['load_cpu']}; one fresh server process per run; for each case, for each "
      "repetition, every server in turn (order rotated each repetition).")
    w("- The generator connects every connection (each counts after one verified round "
      "trip), then starts on GO; only the measured window counts. Every echoed byte is "
      "verified; a run with any error shows the error instead of numbers.")
    w("- Server CPU comes from `/proc` (per-thread schedstat, or utime+stime above 256 "
      "threads) over the measured window only; syscalls from `perf stat -e "
      "raw_syscalls:sys_enter`, switched on and off inside the same window. RSS per "
      "connection = (RSS with every connection open - RSS idle) / connections. Other work "
      "on either CPU during the window is measured from `/proc/stat` and flagged.")
    w("- Closed loop cases: the fastest server sets the generator's ceiling; servers within "
      f"10 % of it are marked {CEILING_MARK}. The fixed-rate case offers the same load to "
      "every server: its figure of merit is server CPU per round trip.")
    w("- `xfloor` columns are ratios to the C epoll floor (`c-epoll`) measured in the same "
      "case of the same run. `CPU s/100k rt` x 10 = CPU microseconds per round trip.")
    w("- Every Python server (`ioladder serve` for the rungs, `python -m "
      "ioladder.bench.peers` for the peers) first raises glibc's dynamic mmap and trim "
      "thresholds to 16 and 32 MiB, as a long-running process has them "
      "(`ioladder.allocator.settle_allocator`). Without it, what a fresh process pays per "
      "message depends on its start-up: `mmap`, `mremap` and `munmap` for each 256 KiB "
      "`recv()` of the stdlib loop, or page faults after each trim of a thread's arena.")
    w("")
    w("## Results")
    w("")
    for case in results["cases"]:
        w(f"### {case_title(case)}")
        w("")
        w(md_table(results, case))
        w("")
    lines = ceiling_lines(results)
    if lines:
        w("## The load generator's ceiling")
        w("")
        w("The generator is one C thread on one core. In each closed-loop case the fastest "
          "server sets the ceiling; where the generator's CPU was near 100 % in that run, "
          "the ceiling is the generator's, and every server near it may be faster than shown.")
        w("")
        for line in lines:
            w(f"- {line}")
        w("")
    if results.get("notes"):
        w("## Notes from the run")
        w("")
        for n in results["notes"]:
            w(f"- {n}")
        w("")
    w("## The ladder at a glance")
    w("")
    w("Server CPU per round trip as a multiple of the C floor's in the same case (lower is "
      "better; 1.00x = as cheap as the floor), and memory and threads with 1,000 "
      "connections open.")
    w("")
    glance = [(t, find_case(results, **want)) for t, want in DOCS_CASES]
    glance = [(t, c) for t, c in glance if c is not None]
    k1 = find_case(results, connections=1000, size=64, depth=1, rate=0.0)
    heads = ["server", *[("fixed rate" if c["kind"] == "fixed-rate" else t) for t, c in glance]]
    if k1 is not None:
        heads += ["RSS/conn @1,000", "threads @1,000"]
    w("| " + " | ".join(heads) + " |")
    w("|---|" + "---:|" * (len(heads) - 1))
    for s_ in results["servers"]:
        name = s_["name"]
        if not any(_ok(c, name) for _, c in glance):
            continue
        row = [f"`{name}`"]
        for _, c in glance:
            cell = _ok(c, name)
            if cell is None:
                other = c["results"].get(name)
                row.append(other["status"] if other else "-")
            else:
                row.append(fmt_ratio((cell.get("vs_floor") or {}).get("cpu_us_per_rt")))
        if k1 is not None:
            cell = _ok(k1, name)
            row.append(fmt_bytes(med(cell, "rss_per_conn_b")) if cell else "-")
            thr = med(cell, "threads") if cell else None
            row.append(f"{thr:.0f}" if thr is not None else "-")
        w("| " + " | ".join(row) + " |")
    w("")
    w("## Reading the ladder, rung by rung")
    w("")
    w("Each rung against the one below it, in the four reference cases. The verdict is "
      "judged on server CPU per round trip (the design's figure of merit: what the server "
      "spends per unit of work, and robust to time other work steals from the CPU); "
      f"'ties' = within {tol:.0%}; where round trips/s point the other way the verdict says "
      "so. The mechanism notes say what the rung changes; the bullets say what that bought "
      "here.")
    w("")
    prev = None
    for name in measured_rungs:
        w(f"### `{name}`" + (f" vs `{prev}`" if prev else " (the bottom)"))
        w("")
        w(f"What changes: {WHY_RUNG.get(name, 'see `ioladder models`.')}")
        w("")
        if prev is None:
            ref = FLOOR
            w(f"Against the C floor (`{FLOOR}`), to set the scale:")
            w("")
        else:
            ref = prev
        for line in pair_lines(results, name, ref, tol):
            w(line)
        w("")
        prev = name
    skipped = [s for s in results["servers"] if s["kind"] == "rung" and not s["available"]]
    for s in skipped:
        w(f"- `{s['name']}` was not measured: {s['reason']}")
    not_in_run = [n for n in WHY_RUNG if n not in rung_names]
    if not_in_run:
        w(f"- Not in this build yet: {', '.join(f'`{n}`' for n in not_in_run)}.")
    w("")
    if peer_names:
        w("## The peers, against the C floor")
        w("")
        for name in peer_names:
            w(f"### `{name}`")
            w("")
            w(WHY_PEER.get(name, ""))
            w("")
            for line in pair_lines(results, name, FLOOR, tol):
                w(line)
            w("")
    heavy = _syscall_heavy(results)
    if heavy:
        w("## Where the extra syscalls come from")
        w("")
        w("At one message in flight the C floor makes about 2 syscalls per round trip (a read "
          "and a write, plus a share of `epoll_wait`). These servers made 1.5 or more extra "
          "per round trip in the 100-connection, depth-1 case:")
        w("")
        for name, mine, floor in heavy:
            why = WHY_SYSCALLS.get(name, "not analysed here; `perf trace -s -p PID` names them")
            w(f"- `{name}`: {mine:.2f} (floor {floor:.2f}): {why}")
        w("")
        w("A server that asks `recv()` for 256 KiB, as the stdlib selector loop does, can pay "
          "three more: CPython allocates 256 KiB for the result and shrinks it to what arrived, "
          "and glibc serves that size with `mmap` (then `mremap`, `munmap`) until the process "
          "has freed an mmapped block larger than it, which raises glibc's threshold for good. "
          "Whether a fresh process has done so depends on its start-up (measured here: the "
          "asyncio peer paid it when started from one working directory and not from another, "
          "about twice the CPU per round trip). So that every run measures the same thing, "
          "every server raises the threshold first "
          "(`ioladder.allocator.settle_allocator`, see *Method*), the state a long-running "
          "process reaches anyway; the rungs also receive into a buffer they reuse (or read "
          "at most 64 KiB).")
        w("")
    w("## Design targets (design.md section 8)")
    w("")
    w("| target | limit | this run |")
    w("|---|---|---|")
    for what, limit, got in _target_rows(results):
        w(f"| {what} | {limit} | {got} |")
    w("")
    # --- HTTP profile hook: the HTTP section (written by `make bench-http`) is kept as it is
    from .http import preserved_section
    http_section = preserved_section(path)
    if http_section:
        w(http_section)
    # --- end of the HTTP profile hook
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ioladder.bench.report",
                                description="Render a stored results.json again.")
    p.add_argument("results")
    p.add_argument("--html", metavar="DIR", help="write plots and report.html into DIR")
    p.add_argument("--docs", metavar="FILE", help="write docs/benchmarks.md from the results")
    p.add_argument("--docs-command", default="make bench-docs",
                   help="the command that produced the results, for the docs page")
    args = p.parse_args(argv)
    from .runner import load

    results = load(args.results)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    # --- HTTP profile hook: an HTTP results file renders through ioladder.bench.http
    from . import http as http_bench
    if http_bench.is_http_results(results):
        for written in http_bench.render(results, args.html, args.docs, args.docs_command
                                         if args.docs_command != "make bench-docs"
                                         else "make bench-http"):
            console.print(f"wrote {written}")
        if not args.html and not args.docs:
            console.print(http_bench.table_text(results, console.width), highlight=False)
        return 0
    # --- end of the HTTP profile hook
    if args.html:
        out = Path(args.html)
        plots = write_plots(results, out)
        console.print(f"wrote {write_html(results, out, plots)}")
    if args.docs:
        path = write_docs(results, Path(args.docs), args.docs_command)
        console.print(f"wrote {path}")
    if not args.html and not args.docs:
        console.print(summary_tables(results, console.width))
        for line in footer_lines(results):
            console.print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

