"""SQLite and OS errors of the checkpoint file, mapped onto the project's checkpoint errors.

A failure that can pass by itself (a lock held by another program, a full disk, an I/O error)
becomes :class:`~ohip_stream.CheckpointUnavailableError`, which the stream retries with
backoff; one that needs a person (not a SQLite file, permission denied, a corrupt or vanished
file) becomes :class:`~ohip_stream.CheckpointError`. Each message names the file and what to
check.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from ohip_stream._exceptions import CheckpointError, CheckpointUnavailableError
from ohip_stream._logging import redact

__all__ = ["sqlite_failure", "sqlite_failure_kind"]

# SQLite primary result codes (https://www.sqlite.org/rescode.html), by what they mean here.
_BY_PRIMARY_CODE = {
    3: "denied",  # SQLITE_PERM
    5: "locked",  # SQLITE_BUSY
    6: "locked",  # SQLITE_LOCKED
    8: "denied",  # SQLITE_READONLY
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "full",  # SQLITE_FULL
    14: "cantopen",  # SQLITE_CANTOPEN
    23: "denied",  # SQLITE_AUTH
    26: "notadb",  # SQLITE_NOTADB
}
_READONLY_DBMOVED = 8 | (4 << 8)  # the file was moved or unlinked after it was opened

# Python before 3.11 gives no result code: the message is all there is.
_BY_MESSAGE = (
    ("locked", "locked"),
    ("busy", "locked"),
    ("disk is full", "full"),
    ("disk i/o error", "io"),
    ("not a database", "notadb"),
    ("malformed", "corrupt"),
    ("readonly", "denied"),
    ("unable to open", "cantopen"),
)

_BY_ERRNO = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EACCES: "denied",
    errno.EPERM: "denied",
    errno.EROFS: "denied",
    errno.ENOTDIR: "cantopen",
    errno.EISDIR: "cantopen",
    errno.EEXIST: "cantopen",
    errno.EIO: "io",
}

_TRANSIENT = frozenset({"locked", "full", "io"})

_HINTS = {
    "locked": (
        "it stayed locked by another connection for {timeout} s (busy_timeout): check for a "
        "backup tool or another program holding a write lock on it"
    ),
    "full": (
        "the disk is full (or the database hit its size limit): free space on the file system "
        "that holds it"
    ),
    "io": "a disk I/O error: check the disk and the file system that hold it",
    "denied": (
        "permission denied: check the owner and mode of the file, of its -wal and -shm files "
        "and of its directory (the consumer writes all of them)"
    ),
    "corrupt": (
        "the file is corrupt: restore it from a backup, or move it away and set the offset "
        "with `ohip-stream checkpoint set`"
    ),
    "notadb": (
        "the file is not a SQLite database: point the store at a checkpoint file (or a new "
        "path) and move this file away"
    ),
    "cantopen": (
        "it cannot be opened: check that the path names a file (not a directory) and that "
        "its directory exists and is writable"
    ),
    "moved": (
        "the file was moved or deleted while this consumer was running: stop the consumer, "
        "restore the file, then start it again"
    ),
    "other": "check the path and the file",
}


def sqlite_failure_kind(exc: sqlite3.Error | OSError) -> str:
    """What a SQLite or OS error means for the checkpoint file: a key of the hints above."""
    if isinstance(exc, OSError):
        return _BY_ERRNO.get(exc.errno or 0, "other")
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        if code == _READONLY_DBMOVED:
            return "moved"
        return _BY_PRIMARY_CODE.get(code & 0xFF, "other")
    text = str(exc).lower()
    return next((kind for needle, kind in _BY_MESSAGE if needle in text), "other")


def sqlite_failure(
    path: Path, action: str, exc: sqlite3.Error | OSError, *, busy_timeout: float
) -> CheckpointError:
    """The project error for ``exc``, raised while trying to ``action`` the file at ``path``."""
    kind = sqlite_failure_kind(exc)
    hint = _HINTS[kind].format(timeout=f"{busy_timeout:g}")
    message = f"cannot {action} the checkpoint database {path}: {hint} ({redact(str(exc))})"
    if kind in _TRANSIENT:
        return CheckpointUnavailableError(message)
    return CheckpointError(message)
