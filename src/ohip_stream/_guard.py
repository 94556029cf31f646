"""One consumer per stream on this host, enforced before any network I/O.

OHIP allows one consumer per stream (gateway, chain code, application key); a second one gets
4409 (protocol §7). The guard refuses it locally: in this process through a registry, across
processes through OS file locks (``flock``, released when a process dies) in a lock directory.
Beside the locks it keeps what every consumer on this host must read whatever its checkpoint
store: each key's upgrades (protocol §1) and the stream's last completion (protocol §4).

Files are never opened through a symbolic link nor in a way that can block (a planted FIFO):
both are refused. Data files are replaced whole (a new file renamed over the old one), so
nothing is ever written into a file someone else put there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from ohip_stream._budget import format_upgrades, parse_upgrades
from ohip_stream._exceptions import ConfigurationError, ConsumerAlreadyRunningError
from ohip_stream._logging import get_logger

__all__ = ["STALE_AFTER", "GuardScope", "StreamGuard", "default_lock_dir", "prepare_lock_dir"]

_log = get_logger("ohip_stream.guard")

GuardScope = Literal["stream", "app_key"]

#: Completion and upgrade records and free lock files older than this (s) are removed.
STALE_AFTER = 3600.0
_TEMP_STALE_AFTER = 60.0  # a replacement's temporary file this old: its writer died
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_MODE = 0o640  # readable by the group of a directory shared by several OS users
_READ_LIMIT = 1 << 20
# A sweep holds a free lock for microseconds: a contender retries this many times, this apart.
_CONTENTION_TRIES, _CONTENTION_PAUSE = 5, 0.005
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Held in this process: stream ids, and application key ids with -1 (exclusive, app_key scope)
# or the number of stream-scope holders (shared).
_streams: set[str] = set()
_keys: dict[str, int] = {}
_registry_lock = threading.Lock()


def default_lock_dir() -> Path:
    """The lock directory when none is given, private to this OS user:
    ``$XDG_RUNTIME_DIR/ohip-stream`` when that is a directory of this user nobody else may
    write to, else ``<temp dir>/ohip-stream-<uid>``. Created with mode 0700; refused if it is a
    symbolic link, belongs to another user or is writable by group or others.

    Consumers run by several OS users share a ``lock_dir`` (``OHIP_LOCK_DIR``) an administrator
    creates, owned by a group they are all in, mode 2770 (``install -d -m 2770 -g ohip DIR``).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and _is_private_dir(Path(runtime)):
        return Path(runtime) / "ohip-stream"
    return Path(tempfile.gettempdir()) / f"ohip-stream-{os.getuid()}"


def _is_private_dir(path: Path) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & 0o022
        and os.access(path, os.W_OK | os.X_OK)
    )


def prepare_lock_dir(lock_dir: str | Path | None) -> Path:
    """The lock directory to use, created if missing and checked (see :func:`default_lock_dir`).

    Raises :class:`ConfigurationError` naming what is wrong and how to fix it.
    """
    if lock_dir is None:
        return _private_dir(default_lock_dir())
    return _given_dir(Path(lock_dir))


def _private_dir(path: Path) -> Path:
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the lock directory {path}: {exc.strerror}; pass lock_dir= "
            "(OHIP_LOCK_DIR) a writable directory"
        ) from None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    elif info.st_mode & 0o022:
        problem = f"is writable by its group or others (mode {stat.S_IMODE(info.st_mode):o})"
    else:
        return path
    raise ConfigurationError(
        f"the default lock directory {path} {problem}: another user could plant files in it; "
        f"remove {path} (or fix it), or pass lock_dir= (OHIP_LOCK_DIR) a directory of yours"
    )


def _given_dir(path: Path) -> Path:
    try:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
        info = os.stat(path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot use the lock directory {path}: {exc.strerror}; pass lock_dir= "
            "(OHIP_LOCK_DIR) a writable directory"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"lock_dir {path} is not a directory: pass a directory")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise ConfigurationError(
            f"lock_dir {path} is writable by every user of this host and has no sticky bit: "
            "anyone could replace its lock files. Make it group-owned with mode 2770 "
            f"(chgrp <group> {path}; chmod 2770 {path}), or add the sticky bit (chmod +t)"
        )
    return path


def _open(path: Path, flags: int) -> int:
    """An fd on the regular file ``path``; a link, FIFO, device or directory is refused."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, _FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link (Linux, BSD)
            raise ConfigurationError(
                f"{path} is a symbolic link: refused, never followed; remove it (someone may "
                "be trying to make this process write elsewhere)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigurationError(
            f"{path} is not a regular file (a FIFO, device or directory is there): refused; "
            "remove it"
        )
    return fd


def _same_file(fd: int, path: Path) -> bool:
    # A sweep may remove a free lock file between our open and our lock: the lock then holds
    # a file nobody else will open. Checked after locking, the path must still name our file.
    try:
        here, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _try_lock(path: Path, *, shared: bool = False, create: bool = True) -> int | None:
    """An fd holding ``flock`` on ``path``, or None if another holder conflicts (or, without
    ``create``, if the file is gone)."""
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    for _ in range(8):
        try:
            fd = _open(path, os.O_RDONLY | (os.O_CREAT if create else 0))
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"{path} keeps being replaced")


def _lock_retrying(path: Path, *, shared: bool = False) -> int | None:
    # A sweep of stale files by another consumer holds a free lock for microseconds: a lock
    # busy that briefly is no consumer.
    for attempt in range(_CONTENTION_TRIES):
        fd = _try_lock(path, shared=shared)
        if fd is not None:
            return fd
        if attempt + 1 < _CONTENTION_TRIES:
            time.sleep(_CONTENTION_PAUSE)
    return None


def _read(path: Path) -> str | None:
    """The text of ``path``, or None if it is missing, not a regular file or unreadable."""
    try:
        fd = _open(path, os.O_RDONLY)
    except (OSError, ConfigurationError):
        return None
    try:
        return os.read(fd, _READ_LIMIT).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to a new file and rename it over ``path`` (a link there is replaced,
    never followed; readers see the old content or the new, never a part)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, _FILE_MODE)
    try:
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class StreamGuard:
    """Holds the right to consume one stream; :meth:`acquire` fails if someone else holds it.

    ``stream_id`` and ``key_id`` (:func:`ohip_stream._budget.key_id`) are non-reversible
    digests of the stream and its application key: file names, safe to print.
    ``scope="stream"`` takes the stream's lock and a SHARED lock on the key (other chains of
    the key run beside it); ``scope="app_key"`` takes the key's lock EXCLUSIVE and the
    stream's lock: it excludes every other consumer of the key, whatever its scope.

    ``lock_dir`` is private to the user by default (:func:`default_lock_dir`). For consumers
    run by several OS users, an administrator creates one directory owned by a group they are
    all in, mode 2770 (``chgrp ohip DIR; chmod 2770 DIR``), and each passes it as ``lock_dir``;
    a world-writable one without the sticky bit is refused. Files of streams nobody holds are
    removed once they cannot matter (:data:`STALE_AFTER`).
    """

    def __init__(
        self,
        stream_id: str,
        *,
        key_id: str | None = None,
        scope: GuardScope = "stream",
        lock_dir: str | Path | None = None,
        description: str = "",
        upgrade_window: float = 120.0,
        upgrades_key: str | None = None,
    ) -> None:
        """``upgrade_window``: the budget window of this consumer (its upgrade records are
        kept at least that long). ``upgrades_key`` is another name of ``key_id``."""
        key_id = key_id or upgrades_key
        for label, value in (("stream_id", stream_id), ("key_id", key_id)):
            if value is not None and not _NAME.fullmatch(value):
                raise ConfigurationError(
                    f"{label} {value!r} cannot name a lock file: use the digest of the stream "
                    "or key (letters, digits, '-' and '_', at most 64)"
                )
        if scope not in ("stream", "app_key") or (scope == "app_key" and key_id is None):
            raise ConfigurationError(f"scope must be 'stream', or 'app_key' with key_id: {scope!r}")
        self.key = stream_id
        self.key_id = key_id
        self.scope: GuardScope = scope
        self._lock_dir_given = lock_dir
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.description = description or f"stream {stream_id}"
        self.upgrade_window = upgrade_window
        self._fds: list[int] = []
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this guard holds its stream."""
        return self._held

    def _path(self, suffix: str, name: str | None = None) -> Path:
        return self.lock_dir / f"{name or self.key}{suffix}"

    # --- acquire and release ------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the stream, or raise :class:`ConsumerAlreadyRunningError`.

        Raises :class:`ConfigurationError` for a lock directory or file that is not safe.
        """
        if self._held:
            return
        self.lock_dir = prepare_lock_dir(self._lock_dir_given)
        with _registry_lock:
            self._claim()
        try:
            self._lock_files()
        except BaseException:
            self._close_files()
            with _registry_lock:
                self._unclaim()
            raise
        self._held = True
        with contextlib.suppress(OSError):  # the pid is a courtesy for operators
            _replace(self._path(".pid"), f"{os.getpid()}\n")
        self._sweep(time.time())

    def _claim(self) -> None:
        key = self.key_id
        conflict = ""
        if self.key in _streams:
            conflict = f"{self.description} already has a consumer in this process"
        elif key is not None and (
            _keys.get(key) == -1 or (self.scope == "app_key" and key in _keys)
        ):
            conflict = (
                f"application key {key} has a consumer in this process, and guard_scope="
                "'app_key' (here or there) takes every chain of the key"
            )
        if conflict:
            raise ConsumerAlreadyRunningError(
                f"{conflict}; OHIP allows one consumer per stream (a second one is refused "
                "with 4409): use one EventStream per stream and share its events"
            )
        _streams.add(self.key)
        if key is not None:
            _keys[key] = -1 if self.scope == "app_key" else _keys.get(key, 0) + 1

    def _unclaim(self) -> None:
        _streams.discard(self.key)
        key = self.key_id
        if key is not None and _keys.get(key, 0) > 1:
            _keys[key] -= 1
        elif key is not None:
            _keys.pop(key, None)  # the last shared holder, or the exclusive one (-1)

    def _lock_files(self) -> None:
        stream = (self._path(".lock"), False)
        key = None if self.key_id is None else (self._path(".key.lock", self.key_id), True)
        if self.scope == "app_key" and key is not None:
            order = [(key[0], False), stream]
        else:
            order = [stream] if key is None else [stream, key]
        for path, shared in order:
            fd = _lock_retrying(path, shared=shared)
            if fd is None:
                raise ConsumerAlreadyRunningError(
                    f"{self.description} already has a consumer in another process on this "
                    f"host (lock file {path}{self._holder()}); OHIP allows one consumer per "
                    "stream: stop the other process, or wait until it stops"
                )
            self._fds.append(fd)

    def _holder(self) -> str:
        pid = (_read(self._path(".pid")) or "").strip()
        return f", pid {pid}" if pid.isdigit() else ""

    def _close_files(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        """Give the stream back (idempotent)."""
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(OSError):  # still ours: the stream lock is held
            os.unlink(self._path(".pid"))
        self._close_files()  # closing the fds releases the OS locks
        with _registry_lock:
            self._unclaim()

    def __enter__(self) -> StreamGuard:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"StreamGuard(key={self.key!r}, scope={self.scope!r}, held={self._held})"

    # --- upgrades of the key (protocol §1: 429 past 150 in 2 minutes) ---------------------------

    @property
    def _upgrades_path(self) -> Path:
        return self._path(".upgrades", self.key_id)

    def recent_upgrades(self, window: float, now: float) -> list[float]:
        """Epoch times of the upgrades recorded under this key in the last ``window`` seconds,
        by this process or an earlier one (a crash-looping consumer must not reset its upgrade
        budget by restarting). Best effort: an unreadable file counts as none."""
        return parse_upgrades(_read(self._upgrades_path) or "", window, now)

    def record_upgrade(self, at: float, window: float) -> None:
        """Add an upgrade made at epoch time ``at``; entries older than ``window`` are dropped.

        The consumers of every chain of the key write this file: each update holds the file's
        own lock and replaces it whole. Best effort."""
        if not self._held:
            return
        path = self._upgrades_path
        try:
            fd = _lock_retrying(path)  # the writers' lock: no update is lost
            if fd is None:
                return
            try:
                _replace(path, format_upgrades([*self.recent_upgrades(window, at), at]))
            finally:
                os.close(fd)
        except (OSError, ConfigurationError) as exc:
            _log.warning("cannot record the upgrade in %s: %s", path, exc)

    # --- the stream's last completion (protocol §4: the gap holds across processes) -----------

    def record_completed(self, at: float) -> None:
        """Record that the stream's connection completed at epoch time ``at`` (kept when a
        later time is there already). Every consumer of the stream on this host reads it with
        :meth:`last_completed`, whatever its checkpoint store. Only the holder writes."""
        if not self._held:
            return
        path = self._path(".completed")
        latest = self.last_completed()
        if latest is not None and latest >= at:
            return
        try:
            _replace(path, f"{at:.6f}\n")
        except OSError as exc:
            _log.warning("cannot record the completion in %s: %s", path, exc)

    def last_completed(self) -> float | None:
        """Epoch time the stream's last connection completed, as recorded on this host (None:
        unknown)."""
        text = _read(self._path(".completed"))
        try:
            at = float(text or "")
        except ValueError:
            return None
        return at if math.isfinite(at) else None

    # --- files nobody needs any more (issue: no pile-up in the lock directory) -----------------

    def _sweep(self, now: float) -> None:
        """Remove the files of streams and keys nobody holds once they cannot matter: pid files
        at once; completion and upgrade records and lock files after :data:`STALE_AFTER` (or
        the upgrade window if longer). Best effort."""
        try:
            names = os.listdir(self.lock_dir)
        except OSError:
            return
        before = now - max(STALE_AFTER, self.upgrade_window)
        for name in names:
            path = self.lock_dir / name
            with contextlib.suppress(OSError, ConfigurationError):
                if name.startswith(".") and name.endswith(".tmp"):
                    _remove_if_older(path, now - _TEMP_STALE_AFTER)
                elif name.endswith((".lock", ".upgrades")):
                    _sweep_under_lock(path, before, now)


def _sweep_under_lock(path: Path, before: float, now: float) -> None:
    # Under the lock that the file's holder (a lock file) or writers (upgrades) take: a file
    # someone holds is left alone, and nobody can write one between the check and the removal.
    fd = _try_lock(path, create=False)
    if fd is None:
        return
    try:
        if path.suffix == ".upgrades":
            if not parse_upgrades(_read(path) or "", now - before, now):
                os.unlink(path)
            return
        stem = path.name[: -len(".lock")]
        if not stem.endswith(".key"):  # a stream's lock: nobody holds the stream
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.with_name(f"{stem}.pid"))
            completed = path.with_name(f"{stem}.completed")
            _remove_if_older(completed, before)
            if completed.exists():
                return
        _remove_if_older(path, before)
    finally:
        os.close(fd)


def _remove_if_older(path: Path, before: float) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_mtime < before:
            os.unlink(path)
