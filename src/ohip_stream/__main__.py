"""``python -m ohip_stream``: the ``ohip-stream`` command line."""

from __future__ import annotations

import sys

from ohip_stream.cli import main

if __name__ == "__main__":
    sys.exit(main())
