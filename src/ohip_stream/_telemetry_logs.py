"""Structured logs: one JSON object per record, secrets redacted.

For log pipelines that parse lines (``ohip-stream tail --log-format json``): the fields are
``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message`` and, when the
record has one, ``exception`` (the formatted traceback). Every text field passes
:func:`~ohip_stream._logging.redact` (the handler's redacting filter runs first; this is the
second line, for records that reach a handler without it).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from ohip_stream._logging import redact

__all__ = ["JsonFormatter"]


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON (see the module's docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, str] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = redact(record.exc_text or self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        return json.dumps(line, ensure_ascii=False)
