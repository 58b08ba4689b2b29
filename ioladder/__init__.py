"""ioladder: the server I/O model ladder as runnable, measured Python TCP engines.

Every rung — blocking threads, ``select``, ``WSAAsyncSelect``, ``WSAEventSelect``, overlapped
I/O, I/O completion ports, ``SocketAsyncEventArgs`` — runs any ``asyncio.Protocol`` factory
through one shared transport, on the Linux mechanism that truly corresponds to it.
"""

from __future__ import annotations

from .rungs import ModelUnavailable, UnknownModel
from .server import Server, serve
from .transport import Transport

__version__ = "0.1.0"
__all__ = ["ModelUnavailable", "Server", "Transport", "UnknownModel", "serve", "__version__"]
