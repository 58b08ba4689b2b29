"""Child process of ``test_blocking_threads.py``: the ``blocking`` rung out of threads.

``python nproc_server.py NPROC``: as root, import everything, drop to user ``nobody`` (root
ignores ``RLIMIT_NPROC``), lower ``RLIMIT_NPROC`` to NPROC — the threads this server may
run — serve the app below, print the port, serve until stdin closes, shut down, print
``shutdown done`` to stderr and exit 0. Log lines go to stderr.

The app echoes, except ``BIG <n>[ CLOSE]``: it writes n bytes (into a 256 KiB kernel send
buffer) and, with ``CLOSE``, closes the connection.
"""

from __future__ import annotations

import asyncio
import encodings.idna  # noqa: F401 - needed by getaddrinfo, and not importable as nobody
import logging
import os
import pwd
import resource
import socket
import sys

import ioladder
import ioladder.rungs.blocking  # noqa: F401 - imported while the files are readable


class App(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"BIG "):
            words = data.split()
            self.transport.write(b"b" * int(words[1]))
            if b"CLOSE" in words:
                self.transport.close()
        else:
            self.transport.write(data)


def main() -> None:
    nproc = int(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    nobody = pwd.getpwnam("nobody")
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    server = ioladder.serve(App, "127.0.0.1", 0, model="blocking")
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown(timeout=3.0)
    print("shutdown done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
