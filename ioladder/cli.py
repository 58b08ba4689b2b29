"""The ``ioladder`` command: ``serve``, ``models``, ``load``, ``bench``, ``demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from . import rungs
from .apps import APPS

log = logging.getLogger("ioladder")


def models_table() -> Table:
    """The ladder as ``ioladder models`` prints it, built from the rung classes themselves."""
    table = Table(title="The ioladder rungs (bottom of the ladder first)", show_lines=True)
    for col in ("id", "seed concept", "Windows API", "Linux mechanism", "trait kept",
                "available here"):
        table.add_column(col, overflow="fold")
    for name in rungs.names():
        why = rungs.reason(name)
        try:
            cls = rungs.get(name)
            row = [cls.seed, cls.windows_api, cls.mechanism, cls.trait]
        except ImportError as exc:
            row = ["?", "?", "?", f"cannot load: {exc}"]
        table.add_row(name, *row, "yes" if why is None else f"no: {why}")
    return table


def cmd_models(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
        console = Console(width=180)
    console.print(models_table())
    return 0


#: ``ioladder serve``'s idle timeout for the HTTP apps when none is given, seconds (nginx's
#: keep-alive default): a client that opens a connection, or begins a request head, and then
#: goes silent does not hold it forever. The raw TCP apps have none by default.
HTTP_IDLE_TIMEOUT = 75.0


def serve_idle_timeout(app: str, given: float | None) -> float | None:
    """The idle timeout ``ioladder serve`` uses: ``--idle-timeout`` (0: none), else the
    app's default (``HTTP_IDLE_TIMEOUT`` for ``http``/``files``, none for the others)."""
    if given is None:
        return HTTP_IDLE_TIMEOUT if app in ("http", "files") else None
    return given if given > 0 else None


def cmd_serve(args: argparse.Namespace) -> int:
    from .allocator import settle_allocator
    from .apps import AppOptions, make_factory
    from .server import StopRequest, serve

    if args.workers < 1:
        print("ioladder: --workers must be >= 1", file=sys.stderr)
        return 2
    root = os.path.abspath(args.root) if args.root is not None else None
    if args.idle_timeout is not None and not args.idle_timeout >= 0:
        print("ioladder: --idle-timeout must be >= 0 seconds (0: none)", file=sys.stderr)
        return 2
    idle_timeout = serve_idle_timeout(args.app, args.idle_timeout)
    if args.header_timeout is not None and not args.header_timeout >= 0:
        print("ioladder: --header-timeout must be >= 0 seconds (0: no limit)", file=sys.stderr)
        return 2
    options = AppOptions(root=root, workers=args.workers, header_timeout=args.header_timeout)
    stop = StopRequest.on_signals(signal.SIGINT, signal.SIGTERM)  # not a threading.Event
    try:
        if args.workers > 1:
            from .workers import serve_workers
            srv: Any = serve_workers(
                args.app, args.host, args.port, workers=args.workers, model=args.model,
                app_options=options, backlog=args.backlog,
                max_connections=args.max_connections, idle_timeout=idle_timeout,
                linger=args.linger, shutdown_timeout=args.shutdown_timeout)
            how = f"{args.workers} workers (pids {', '.join(map(str, srv.pids))})"
        else:
            settle_allocator()  # glibc's thresholds as in a long-running process (the
            # worker processes above settle their own)
            srv = serve(make_factory(args.app, options), args.host, args.port,
                        model=args.model, backlog=args.backlog,
                        max_connections=args.max_connections,
                        idle_timeout=idle_timeout, linger=args.linger,
                        reuse_port=args.reuse_port)
            how = f"pid {os.getpid()}"
    except (ValueError, TypeError, RuntimeError, TimeoutError, OSError) as exc:
        if isinstance(exc, rungs.ModelUnavailable):
            raise
        print(f"ioladder: {exc}", file=sys.stderr)
        return 2
    addrs = ", ".join(f"{a[0]}:{a[1]}" for a in srv.addresses)
    print(f"ioladder: serving app {args.app!r} on {addrs} with rung {srv.model!r}, {how} "
          f"(Ctrl-C to stop)", flush=True)
    while not stop.wait(0.5):
        if args.workers > 1 and srv.wait_closed(0):
            break  # the supervisor gave up
    print("ioladder: shutting down gracefully", flush=True)
    clean = srv.shutdown(args.shutdown_timeout)
    return 0 if clean is not False else 1


def cmd_delegate(module: str):  # noqa: ANN201 - returns a handler
    def run(args: argparse.Namespace) -> int:
        mod = importlib.import_module(module)
        return int(mod.main(args.rest) or 0)
    return run


#: subcommands whose arguments belong to another module's ``main(argv)``
DELEGATED = {
    "load": ("ioladder.bench.loadgen", "drive a server with the load generator"),
    "bench": ("ioladder.bench.runner", "measure the ladder and its peers"),
    "demo": ("ioladder.bench.demo", "the quick tour: every rung under one load"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ioladder", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="print the ladder: rungs, mechanisms, availability")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="run a built-in app on a rung")
    p.add_argument("--model", default="auto", choices=[*rungs.names(), "auto"])
    p.add_argument("--app", default="echo", choices=sorted(APPS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--max-connections", type=int, default=None)
    p.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                   help="close a connection after this long without a byte either way "
                        f"(0: never; default: {HTTP_IDLE_TIMEOUT:g} s for --app http/files, "
                        "never for the others)")
    p.add_argument("--linger", type=float, default=None, metavar="SECONDS",
                   help="LingerOption: 0 = reset on close, N = close waits up to N s")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--header-timeout", type=float, default=None, metavar="SECONDS",
                   help="--app http/files: seconds a client has to send a request's head, "
                        "then 408 and close (default 30; 0: no limit)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="directory served by --app http (under /static/) and --app files "
                        "(the whole tree; default: the current directory)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N processes sharing the port with SO_REUSEPORT, supervised "
                        "(restarted if they die); default 1: in-process, no supervisor")
    p.add_argument("--reuse-port", action="store_true",
                   help="bind with SO_REUSEPORT (several servers may share the port)")
    p.set_defaults(func=cmd_serve)

    for name, (module, text) in DELEGATED.items():
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=cmd_delegate(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse's REMAINDER does not take an argument list that starts with an option
    # (`ioladder bench --quick` fails, bpo-17050): hand it over before argparse.
    for i, word in enumerate(argv):
        if word in DELEGATED and all(w in ("-v", "--verbose") for w in argv[:i]):
            logging.basicConfig(level=logging.INFO if i else logging.WARNING,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            return int(importlib.import_module(DELEGATED[word][0]).main(argv[i + 1:]) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (rungs.UnknownModel, rungs.ModelUnavailable) as exc:
        print(f"ioladder: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
