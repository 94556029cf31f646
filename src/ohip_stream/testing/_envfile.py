"""The emulator's env files: it writes only a file it wrote itself (marked by its first line),
mode 0600, atomically. The command line and ``serve_foreground`` share this rule; no server
stack is imported here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ohip_stream._exceptions import ConfigurationError

__all__ = ["ENV_MARKER", "check_env_file", "env_file_is_ours", "write_marked_env_file"]

#: The first line of every env file the emulator writes; a file without it is the user's.
ENV_MARKER = "# written by ohip-stream emulator; it rewrites this file on its next start"


def env_file_is_ours(path: Path) -> bool:
    """Whether ``path`` may be written: absent, or a regular file that starts with the marker."""
    if not os.path.lexists(path):
        return True
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().rstrip("\r\n") == ENV_MARKER
    except OSError:
        return False


def check_env_file(path: Path) -> None:
    """Raise :class:`ConfigurationError` unless :func:`env_file_is_ours` says ``path`` is free."""
    if not env_file_is_ours(path):
        raise ConfigurationError(
            f"env_file {str(path)!r} exists and was not written by the emulator (its first line "
            "is not the emulator's marker), so it is left alone: pass another env_file, or "
            "env_file=None"
        )


def write_marked_env_file(path: Path, variables: Mapping[str, str]) -> Path:
    """Write ``variables`` as ``NAME=value`` lines under :data:`ENV_MARKER`, mode 0600.

    The text goes to a temporary file in the same directory, then replaces ``path`` in one
    rename, so a reader never sees half a file. Raises :class:`ConfigurationError` when
    ``path`` exists and was not written by the emulator.
    """
    check_env_file(path)
    text = ENV_MARKER + "\n" + "".join(f"{name}={value}\n" for name, value in variables.items())
    fd, temporary = tempfile.mkstemp(prefix=".ohip-env-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path
