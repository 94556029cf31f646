"""MkDocs hook: replace ``<!-- cli-help: tail -->`` with the output of ``ohip-stream tail --help``.

The command line reference then always matches the installed command line. Used by
``mkdocs.yml`` only; not shipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

_MARKER = re.compile(r"^<!-- cli-help:(?P<args>[^>]*)-->$", re.MULTILINE)


def _help(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    for name in list(env):
        if name.startswith("OHIP_"):
            del env[name]
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from ohip_stream.cli import main; sys.exit(main())",
         *args, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"ohip-stream {' '.join(args)} --help failed: {result.stderr.strip()}")
    return result.stdout.rstrip()


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        args = match.group("args").split()
        return f"```text\n$ ohip-stream {' '.join([*args, '--help'])}\n{_help(args)}\n```"

    return _MARKER.sub(replace, markdown)
