"""``python -m ioladder``: the command line (see ``ioladder.cli``)."""

import sys

from .cli import main

sys.exit(main())
