"""``python -m ohip_stream.testing``: the same command line as ``ohip-stream emulator`` (a local
OHIP gateway in the foreground until Ctrl-C; ``--help`` lists its options)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ohip-stream emulator`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    from ohip_stream.cli import main as cli_main

    return cli_main(["emulator", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
