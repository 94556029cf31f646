"""What the commands of the command line share: logging, settings, output, errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from ohip_stream import _logging
from ohip_stream._exceptions import ConfigurationError, OhipError
from ohip_stream._logging import RedactingFilter, redact
from ohip_stream._models import Event

PROG = "ohip-stream"
EMULATOR_EXTRA_HINT = (
    f'{PROG}: this command needs the emulator extra: pip install "ohip-stream[cli,emulator]"'
)
DEFAULT_CHECKPOINT_DB = "ohip-checkpoints.db"


class MissingExtraError(Exception):
    """An optional dependency of a command is not installed (the message is the whole line)."""


class CliState:
    """Options that apply to the whole run (set by the commands, read when an error comes)."""

    verbose = 0


def one_line(message: object) -> str:
    """``message`` as one redacted line."""
    text = " ".join(str(message).split())
    if isinstance(message, OhipError):
        # The library's messages never hold secrets (its contract); the shape patterns would
        # also eat words such as "OHIP_CLIENT_SECRET: set it", so only the values it registered
        # are removed, as a second guard.
        return redact_registered(text)
    return redact(text)


def redact_registered(text: str) -> str:
    """``text`` without the secrets registered with the library (keys, secrets, tokens)."""
    return _logging.redact_registered(text)


def error_line(message: object) -> str:
    """The line an expected error prints: ``ohip-stream: error: <message>``."""
    return f"{PROG}: error: {one_line(message)}"


def require_emulator_extra() -> None:
    """Raise :class:`MissingExtraError` when the emulator's server stack is missing."""
    if importlib.util.find_spec("aiohttp") is None:
        raise MissingExtraError(EMULATOR_EXTRA_HINT)


# --- offsets ----------------------------------------------------------------------------------

# An offset is 1 to 20 ASCII digits (a 64-bit counter; the gateway refuses longer ones).
# str.isdigit() would accept '²' and '١٢', which int() then reads or refuses.
_OFFSET = re.compile(r"[0-9]{1,20}")


def is_offset(value: str) -> bool:
    """Whether ``value`` is a stream offset: 1 to 20 ASCII digits."""
    return _OFFSET.fullmatch(value) is not None


def offset_argument(name: str, value: str) -> str:
    """``value`` as an offset (leading zeros dropped), else a :class:`ConfigurationError`."""
    text = value.strip(" ")
    if not is_offset(text):
        raise ConfigurationError(
            f"{name} must be an offset of 1 to 20 ASCII digits (such as 1200), got {value!r}"
        )
    return str(int(text))


# --- logging ----------------------------------------------------------------------------------

_VERBOSE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _ShortFormatter(logging.Formatter):
    """``ohip-stream: warning: message`` and no traceback (tracebacks only with --verbose)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {one_line(record.getMessage())}"


class _WarningsOnly(logging.Filter):
    # Errors that end a stream reach the user as the exception's one line; their log record
    # would say the same thing twice.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.name.startswith("ohip_stream")


class _CallbackHandler(logging.Handler):
    def __init__(self, sink: Callable[[logging.LogRecord], None], level: int) -> None:
        super().__init__(level)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink(record)
        except Exception:
            self.handleError(record)


_installed: list[tuple[logging.Logger, logging.Handler, int]] = []


def setup_logging(
    verbose: int,
    *,
    stream: TextIO | None = None,
    sink: Callable[[logging.LogRecord], None] | None = None,
) -> None:
    """Route log records to stderr (or ``sink``), secrets redacted.

    ``verbose`` 0: WARNING and above, one short line each. 1 (``-v``): the library's INFO
    lifecycle (connected, rotated, waiting...) with timestamps; other libraries stay at WARNING.
    2 (``-vv``): DEBUG from every library (websockets, httpx...), frames included.
    """
    reset_logging()
    level = int(verbose)
    root = logging.getLogger()
    handler: logging.Handler
    floor = logging.DEBUG if level >= 2 else logging.INFO if level == 1 else logging.WARNING
    if sink is not None:
        handler = _CallbackHandler(sink, floor)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setLevel(floor)
        handler.setFormatter(logging.Formatter(_VERBOSE_FORMAT) if level else _ShortFormatter())
    # The library filters its own loggers; a handler sees records of every logger, so it
    # redacts too (records that propagate skip the filters of the loggers they pass).
    handler.addFilter(RedactingFilter())
    if not level:
        handler.addFilter(_WarningsOnly())
    root.addHandler(handler)
    _installed.append((root, handler, root.level))
    root.setLevel(logging.DEBUG if level >= 2 else logging.WARNING)
    if level:
        # The library's package logger may have a level of its own; open it for this run.
        package = logging.getLogger("ohip_stream")
        _installed.append((package, logging.NullHandler(), package.level))
        package.setLevel(logging.DEBUG if level >= 2 else logging.INFO)


def reset_logging() -> None:
    """Remove what :func:`setup_logging` installed (``main`` runs many times in tests)."""
    while _installed:
        logger, handler, level = _installed.pop()
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- settings ---------------------------------------------------------------------------------


def resolve_env_file(env_file: Path | None) -> Path | None:
    """``--env-file``: the given file (it must exist), else ``./.env`` if present, else none."""
    if env_file is not None:
        try:
            exists = env_file.is_file()
        except OSError as exc:  # a name too long for the file system, and the like
            raise ConfigurationError(f"--env-file cannot be read: {exc.strerror}") from None
        if not exists:
            raise ConfigurationError(f"--env-file {env_file} does not exist: pass an existing file")
        return env_file
    default = Path(".env")
    return default if default.is_file() else None


def load_settings(env_file: Path | None, **flags: Any) -> Any:
    """``OhipSettings`` from flags (first), the environment, then the env file."""
    from ohip_stream._settings import OhipSettings

    values = {k: v for k, v in flags.items() if v is not None}
    return OhipSettings.load(env_file=resolve_env_file(env_file), **values)


def checkpoint_path(flag: Path | None, settings: Any) -> Path:
    """``--checkpoint-db``, else ``OHIP_CHECKPOINT_DB``, else ``./ohip-checkpoints.db``."""
    if flag is not None:
        return flag
    if settings.checkpoint_db is not None:
        return Path(settings.checkpoint_db)
    return Path(DEFAULT_CHECKPOINT_DB)


# --- output -----------------------------------------------------------------------------------


def event_json(event: Event) -> str:
    """The event in its wire form (camelCase) as one JSON line (no newline)."""
    return json.dumps(event.model_dump(by_alias=True, mode="json"), separators=(",", ":"))


def write_line(text: str, out: TextIO | None = None) -> None:
    """Write one line and flush (for ``jq`` and pipes)."""
    target = out if out is not None else sys.stdout
    target.write(text + "\n")
    target.flush()


def folded(values: Iterable[str] | None) -> frozenset[str]:
    """Filter values compared case-insensitively (``--module reservation`` = RESERVATION)."""
    return frozenset(v.strip().casefold() for v in values or () if v.strip())


class EventFilter:
    """``--module``, ``--event``, ``--hotel``: an event passes when it matches every given one."""

    def __init__(
        self,
        modules: Iterable[str] | None = None,
        events: Iterable[str] | None = None,
        hotels: Iterable[str] | None = None,
    ) -> None:
        self.modules = folded(modules)
        self.events = folded(events)
        self.hotels = folded(hotels)

    def __call__(self, event: Event) -> bool:
        if self.modules and event.module_name.casefold() not in self.modules:
            return False
        if self.events and event.event_name.casefold() not in self.events:
            return False
        return not self.hotels or (event.hotel_id or "").casefold() in self.hotels


def format_reconnects(reconnects: dict[str, int]) -> str:
    """``2 (1006: 1, rotation: 1)`` or ``0``."""
    total = sum(reconnects.values())
    if not total:
        return "0"
    causes = ", ".join(f"{cause}: {count}" for cause, count in sorted(reconnects.items()))
    return f"{total} ({causes})"
