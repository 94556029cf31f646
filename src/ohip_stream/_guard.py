"""One consumer per stream, enforced before any network I/O.

OHIP allows exactly one consumer of a stream (gateway, chain code, application key): a second
one gets 4409, and Oracle's portal warns that using one key from several applications at once
stops the streaming service (protocol §7). The guard refuses a second consumer locally:

* in this process, from any thread, through a registry of held keys;
* across processes on this host, through an OS file lock in ``lock_dir`` (``filelock``), which
  the OS releases if the process dies.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

from filelock import FileLock, Timeout

from ohip_stream._exceptions import ConfigurationError, ConsumerAlreadyRunningError

__all__ = ["StreamGuard", "default_lock_dir"]

_held: set[str] = set()
_held_lock = threading.Lock()


def default_lock_dir() -> Path:
    """``$TMPDIR/ohip-stream-locks`` (shared by every user of this host's temp directory)."""
    return Path(tempfile.gettempdir()) / "ohip-stream-locks"


class StreamGuard:
    """Holds the right to consume one stream; :meth:`acquire` fails if someone else holds it.

    ``key`` is a non-reversible digest (the stream id, or the key digest for
    ``guard_scope="app_key"``), safe to use as a file name and to print.
    """

    def __init__(
        self,
        key: str,
        *,
        lock_dir: str | Path | None = None,
        description: str = "",
        upgrades_key: str | None = None,
    ) -> None:
        self.key = key
        # Upgrades are counted per application key (Oracle's 429 limit): the streams of one key
        # share the file of recent upgrades, named by this non-reversible digest.
        self.upgrades_key = upgrades_key or key
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.description = description or f"stream {key}"
        self._file_lock: FileLock | None = None
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this guard holds its stream."""
        return self._held

    def acquire(self) -> None:
        """Take the stream, or raise :class:`ConsumerAlreadyRunningError`."""
        if self._held:
            return
        with _held_lock:
            if self.key in _held:
                raise ConsumerAlreadyRunningError(
                    f"{self.description} already has a consumer in this process; OHIP allows "
                    "one consumer per stream (a second one is refused with 4409): use one "
                    "EventStream per stream and share its events"
                )
            _held.add(self.key)
        try:
            self._lock_file()
        except BaseException:
            with _held_lock:
                _held.discard(self.key)
            raise
        self._held = True

    def _lock_file(self) -> None:
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the lock directory {self.lock_dir}: {exc}; set lock_dir= "
                "(or OHIP_LOCK_DIR) to a writable directory"
            ) from exc
        path = self.lock_dir / f"{self.key}.lock"
        # thread_local=False: the stream may be closed from another thread than the one that
        # opened it. No soft-lock fallback: only an OS lock is released when a process dies.
        lock = FileLock(path, timeout=0, thread_local=False, fallback_to_soft=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConsumerAlreadyRunningError(
                f"{self.description} already has a consumer in another process on this host "
                f"(lock file {path}); OHIP allows one consumer per stream. Stop the other "
                "process, or run this one with standby=True to take over when it stops"
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"cannot lock {path}: {exc}; set lock_dir= (or OHIP_LOCK_DIR) to a writable "
                "local directory"
            ) from exc
        self._file_lock = lock
        # The pid file is a courtesy for operators; the lock is what counts.
        with contextlib.suppress(OSError):
            path.with_suffix(".pid").write_text(str(os.getpid()), encoding="ascii")

    # --- upgrades made under this guard, across processes (protocol §1: 429 past 150 in 2 min) --

    @property
    def _upgrades_path(self) -> Path:
        return self.lock_dir / f"{self.upgrades_key}.upgrades"

    def recent_upgrades(self, window: float, now: float) -> list[float]:
        """Epoch times of the upgrades recorded under this key in the last ``window`` seconds,
        by this process or an earlier one (a crash-looping consumer must not reset its upgrade
        budget by restarting). Best effort: an unreadable file counts as none."""
        try:
            text = self._upgrades_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return []
        times: list[float] = []
        for line in text.split():
            with contextlib.suppress(ValueError):
                at = float(line)
                if now - window < at <= now:
                    times.append(at)
        return sorted(times)

    def record_upgrade(self, at: float, window: float) -> None:
        """Add an upgrade made at epoch time ``at``; entries older than ``window`` are dropped.
        Only the holder writes (the lock is held), so a plain rewrite is safe."""
        if not self._held:
            return
        times = [*self.recent_upgrades(window, at), at]
        with contextlib.suppress(OSError):
            self._upgrades_path.write_text("".join(f"{t:.6f}\n" for t in times), encoding="ascii")

    def release(self) -> None:
        """Give the stream back (idempotent)."""
        if not self._held:
            return
        self._held = False
        lock, self._file_lock = self._file_lock, None
        if lock is not None:
            lock.release(force=True)
        with _held_lock:
            _held.discard(self.key)

    def __enter__(self) -> StreamGuard:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"StreamGuard(key={self.key!r}, held={self._held})"
