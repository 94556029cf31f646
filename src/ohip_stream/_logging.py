"""Logging with secrets redacted, in our records and in what our dependencies log through us.

The library logs to ``ohip_stream.*`` (a ``NullHandler`` on the package logger: the application
decides where records go). Every record on those loggers, and on the loggers of httpx, httpcore,
websockets and the emulator's server, passes :class:`RedactingFilter`, which removes:

* every value registered with :func:`register_secret` (client secret, password, access tokens,
  the raw application key and its hash);
* anything shaped like a secret, whoever registered it: ``Bearer ...``, ``Basic ...``, JWTs,
  ``key=<hash>`` and bare 64-hex digests, and the values of ``x-app-key``, ``client_secret``,
  ``password`` and ``access_token`` fields.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "get_logger",
    "install_redaction",
    "redact",
    "redact_registered",
    "register_secret",
]

REDACTED = "[REDACTED]"

_PATTERNS = (
    re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"),
    re.compile(r"(?i)([?&]key=)[^&\s'\"]+"),
    re.compile(r"\b[0-9a-fA-F]{64}\b"),
    re.compile(
        r"(?i)(?<![A-Za-z0-9_])([\"']?(?:x-app-key|client_secret|password|access_token|authorization)[\"']?"
        r"\s*[:=]\s*[\"']?)[^\"'&,\s}]+"
    ),
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_ordered_secrets: tuple[str, ...] = ()

# Loggers of the libraries that log on our behalf.
_THIRD_PARTY_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "websockets",
    "websockets.client",
    "websockets.server",
    "aiohttp",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "tenacity",
)


#: Access tokens kept for redaction: the most recent ones. A stream fetches a token per
#: rotation for as long as it runs; keeping every one would grow the registry (and the cost of
#: rebuilding its pattern, paid on the event loop) without end. Older tokens have expired, and
#: every JWT is redacted by shape anyway.
TRANSIENT_SECRETS = 16
_transient: dict[str, None] = {}  # insertion order: oldest first


def register_secret(*values: str | None, transient: bool = False) -> None:
    """Add values that must never appear in a log record (empty and ``None`` are ignored).

    ``transient=True`` is for values that are replaced over time (access tokens): only the
    last :data:`TRANSIENT_SECRETS` of them are kept. A value registered as transient stays
    transient if registered again without the flag (the stream registers the token its
    provider already registered).
    """
    global _ordered_secrets
    added = [v for v in values if v and len(v) >= 3]
    if not added:
        return
    with _secrets_lock:
        changed = False
        for value in added:
            if value in _secrets:
                continue
            if value in _transient:
                del _transient[value]
                _transient[value] = None  # the most recent again
                continue
            changed = True
            if transient:
                _transient[value] = None
                while len(_transient) > TRANSIENT_SECRETS:
                    del _transient[next(iter(_transient))]
            else:
                _secrets.add(value)
        if changed:
            # Longest first, so that a secret containing another is removed whole. Plain
            # substring replacement: compiling a pattern of every secret costs more than it
            # saves, and would be paid again at each token.
            _ordered_secrets = tuple(sorted(_secrets.union(_transient), key=len, reverse=True))


@contextlib.contextmanager
def registry_kept() -> Iterator[None]:
    """Leaves the registry of secrets as it was on entry, whatever was registered inside.

    Redaction is process-wide: tests that register random values use this, so that a value
    such as ``"ent"`` is not redacted from the text of every later test.
    """
    global _ordered_secrets
    with _secrets_lock:
        saved = (set(_secrets), dict(_transient), _ordered_secrets)
    try:
        yield
    finally:
        with _secrets_lock:
            _secrets.clear()
            _secrets.update(saved[0])
            _transient.clear()
            _transient.update(saved[1])
            _ordered_secrets = saved[2]


def redact_registered(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]`` (no shape patterns)."""
    for secret in _ordered_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(text: str) -> str:
    """``text`` with every registered secret and secret-shaped value replaced by ``[REDACTED]``."""
    text = redact_registered(text)
    for shape in _PATTERNS:
        if shape.groups:
            text = shape.sub(lambda m: f"{m.group(1)}{_tail(m)}", text)
        else:
            text = shape.sub(REDACTED, text)
    return text


def _tail(match: re.Match[str]) -> str:
    # For "Bearer xyz" keep the scheme word; for "key=..." and "field: ..." keep the prefix.
    prefix = match.group(1)
    return (" " if prefix.isalpha() else "") + REDACTED


class RedactingFilter(logging.Filter):
    """A filter that rewrites each record's message with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; leave it as it is
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(exc_text)
        return True


_FILTER = RedactingFilter()
_installed: set[str] = set()


def _attach(names: Iterable[str]) -> None:
    for name in names:
        if name in _installed:
            continue
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        _installed.add(name)


def install_redaction() -> None:
    """Attach the redacting filter to the loggers of httpx, httpcore, websockets and servers."""
    _attach(_THIRD_PARTY_LOGGERS)


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (under ``ohip_stream``) with the redacting filter attached."""
    _attach((name,))
    return logging.getLogger(name)


logging.getLogger("ohip_stream").addHandler(logging.NullHandler())
