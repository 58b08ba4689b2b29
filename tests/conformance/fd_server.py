"""Child process of ``test_accept_backs_off_without_spinning_when_out_of_fds``.

``python fd_server.py RUNG NOFILE``: serve the echo app on RUNG with RLIMIT_NOFILE lowered to
NOFILE, print the port, serve until stdin closes, then shut down and exit 0. Warnings (the
EMFILE back-off) go to stderr.
"""

from __future__ import annotations

import logging
import resource
import sys

import ioladder
from ioladder.apps import EchoProtocol


def main() -> None:
    model, nofile = sys.argv[1], int(sys.argv[2])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    server = ioladder.serve(EchoProtocol, "127.0.0.1", 0, model=model)
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown(timeout=5.0)


if __name__ == "__main__":
    main()
