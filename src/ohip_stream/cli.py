"""The ``ohip-stream`` command line: ``demo``, ``tail``, ``replay``, ``checkpoint``, ``emulator``.

The command line needs the ``cli`` extra (Typer, Rich, python-dotenv); ``demo`` and ``emulator``
also need the ``emulator`` extra (aiohttp). Without them the entry point prints one line saying
which extra to install, never a traceback.

Exit codes: 0 success (a SIGTERM stop included); 1 a runtime error (authentication refused,
connection rejected, another consumer running, events lost in the demo); 2 a configuration or
usage error; 130 interrupted (Ctrl-C, SIGINT).
:func:`main` runs the command line in-process and returns the exit code (for tests).
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["entry_point", "main"]

PROG = "ohip-stream"
CLI_EXTRA_HINT = f'{PROG}: the command line needs the cli extra: pip install "ohip-stream[cli]"'


def _has_cli_extra() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("typer", "rich", "dotenv"))


def main(argv: list[str] | None = None) -> int:
    """Run ``ohip-stream`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    if not _has_cli_extra():
        sys.stderr.write(CLI_EXTRA_HINT + "\n")
        return 2
    from ohip_stream._cli._app import run

    return run(list(sys.argv[1:] if argv is None else argv))


def entry_point() -> None:
    """The ``ohip-stream`` console script."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover - python -m ohip_stream.cli
    entry_point()
