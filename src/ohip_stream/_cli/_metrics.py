"""What ``--metrics-port`` and ``--log-format json`` add to a command that consumes streams.

``--metrics-port`` serves ``/metrics``, ``/livez`` and ``/readyz`` for the command's streams
while they run (:class:`~ohip_stream._telemetry_http.MetricsServer`); ``--log-format json``
writes the command's log records as JSON lines on stderr. Both need nothing unless asked:
``prometheus-client`` is imported only with ``--metrics-port`` (extra ``metrics``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ohip_stream._cli._common import MissingExtraError
from ohip_stream._exceptions import ConfigurationError

__all__ = ["LOG_FORMATS", "check_listen", "json_logs", "serve_metrics"]

LOG_FORMATS = ("text", "json")


def check_listen(value: str | None) -> tuple[str, int] | None:
    """``--metrics-port``, checked: (host, port), or None when not given."""
    if value is None:
        return None
    from ohip_stream._telemetry_http import parse_listen

    try:
        return parse_listen(value)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def json_logs(log_format: str) -> None:
    """With ``json``: the handlers on the root logger (those ``setup_logging`` installed)
    write JSON lines."""
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(
            f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}"
        )
    if log_format != "json":
        return
    from ohip_stream._telemetry_logs import JsonFormatter

    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "ohip-stream: --metrics-port needs prometheus-client: "
            'pip install "ohip-stream[metrics]"'
        ) from None


@contextlib.asynccontextmanager
async def serve_metrics(
    streams: list[Any], listen: tuple[str, int] | None
) -> AsyncIterator[int | None]:
    """Serve the streams' metrics and health on ``listen`` for the block; yields the bound port
    (None without ``listen``)."""
    if listen is None:
        yield None
        return
    _require_prometheus()
    from ohip_stream._telemetry import Telemetry

    telemetry = Telemetry()
    for stream in streams:
        telemetry.watch(stream)
    async with serve_telemetry(telemetry, listen) as port:
        yield port


@contextlib.asynccontextmanager
async def serve_telemetry(telemetry: Any, listen: tuple[str, int]) -> AsyncIterator[int]:
    """Serve ``telemetry``'s metrics and health on ``listen`` for the block (the streams it
    reports may come and go, as a fleet worker's do); yields the bound port."""
    _require_prometheus()
    from ohip_stream._telemetry_http import MetricsServer

    host, port = listen
    server = MetricsServer(telemetry, host=host, port=port)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigurationError(
            f"--metrics-port: cannot listen on {host}:{port} ({exc.strerror or exc}): "
            "choose a free port"
        ) from None
    try:
        yield server.port
    finally:
        await server.stop()
