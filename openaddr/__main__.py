"""``python -m openaddr``: the ``openaddr`` command line (how the ``process_source`` task starts its subprocess)."""

from __future__ import annotations

import sys

from openaddr.cli import main

if __name__ == "__main__":
    sys.exit(main())
