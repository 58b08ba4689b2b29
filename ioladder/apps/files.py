"""``files``: serve a directory tree over HTTP/1.1 — the ``http`` app with static files only.

``ioladder serve --app files --root DIR`` (default: the current directory) answers ``GET``/
``HEAD /<path>`` with the file ``DIR/<path>`` (a directory serves its ``index.html``), with every
guarantee of :mod:`ioladder.apps.http`: no path escapes the root, only regular files are
served, bodies go out through the transport's zero-copy hook (``sendfile_nowait``) where the
rung has one and in flow-controlled chunks otherwise, keep-alive and pipelining, and the same
400/403/404/405/408/413/431 answers. There is no ``/`` hello or ``/echo`` route.
"""

from __future__ import annotations

import os
from typing import Any

from .http import HttpConfig, header_timeout_option


def build_files(options: Any) -> HttpConfig:
    """The ``files`` app rooted at ``options.root`` (default: the current directory)."""
    root = options.root if options.root is not None else os.getcwd()
    return HttpConfig(root=root, static_prefix="/", routes=False,
                      worker_pid=options.workers > 1,
                      header_timeout=header_timeout_option(options))


def make_files_factory(root: str | os.PathLike[str] | None = None, **kwargs: Any) -> HttpConfig:
    """A ``files`` protocol factory with explicit settings (see :class:`HttpConfig`)."""
    return HttpConfig(root=root if root is not None else os.getcwd(), static_prefix="/",
                      routes=False, **kwargs)


__all__ = ["build_files", "make_files_factory"]
