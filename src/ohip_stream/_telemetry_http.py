"""One port for a service's operators: ``/metrics`` (Prometheus text), ``/livez``, ``/readyz``.

The metrics are :meth:`Telemetry.readings`, rendered by ``prometheus-client`` at each scrape
(nothing is kept between scrapes). The OpenTelemetry names become Prometheus names the way the
OpenTelemetry-to-Prometheus compatibility rules say: dots become underscores, the unit ``s``
adds ``_seconds``, annotations in braces (``{message}``) add nothing, a counter ends in
``_total``; so ``messaging.client.consumed.messages`` is
``messaging_client_consumed_messages_total``.

The server is a small asyncio one on the stream's own event loop: it reads snapshots where the
stream runs (no thread, no lock), answers one request per connection, and reads at most a few
kilobytes of a request, with a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ohip_stream._logging import get_logger
from ohip_stream._telemetry_table import PROCESS_BUCKETS, Attributes, Reading

if TYPE_CHECKING:
    from ohip_stream._telemetry import Telemetry

__all__ = ["MetricsServer", "parse_listen", "prometheus_name", "prometheus_text"]

_log = get_logger("ohip_stream.telemetry")

#: The most bytes of a request's line and headers read before answering 431.
_MAX_REQUEST = 8192
#: Seconds a client has to send its request.
_REQUEST_TIMEOUT = 5.0
_UNIT_SUFFIXES = {"s": "seconds", "By": "bytes"}


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus name of an OpenTelemetry metric (``_total`` included for a counter)."""
    base = re.sub(r"[^A-Za-z0-9_:]", "_", name)
    suffix = _UNIT_SUFFIXES.get(unit, "")
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    return f"{base}_total" if kind == "counter" else base


def _labels(attributes: Attributes) -> dict[str, str]:
    return {re.sub(r"[^A-Za-z0-9_]", "_", key): value for key, value in attributes.items()}


class _Collector:
    """A ``prometheus-client`` collector over a :class:`Telemetry` (read at each scrape)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for reading in self._telemetry.readings():
            yield self._family(reading, CounterMetricFamily, GaugeMetricFamily)
        durations = self._telemetry.process_durations()
        if durations:
            family = HistogramMetricFamily(
                "messaging_process_duration_seconds",
                "Duration of processing one commit batch of events",
                labels=sorted(_labels(durations[0][0])),
            )
            for attributes, counts, total, _count in durations:
                labels = _labels(attributes)
                cumulative, buckets = 0, []
                for bound, count in zip((*PROCESS_BUCKETS, float("inf")), counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
                family.add_metric([labels[k] for k in sorted(labels)], buckets, total)
            yield family

    @staticmethod
    def _family(reading: Reading, counter: Any, gauge: Any) -> Any:
        name = prometheus_name(reading.name, reading.unit, reading.kind)
        keys = sorted({key for point in reading.points for key in _labels(point.attributes)})
        if reading.kind == "counter":
            family = counter(name.removesuffix("_total"), reading.description, labels=keys)
        else:
            family = gauge(name, reading.description, labels=keys)
        for point in reading.points:
            labels = _labels(point.attributes)
            family.add_metric([labels.get(key, "") for key in keys], point.value)
        return family


def prometheus_text(telemetry: Telemetry) -> bytes:
    """The Prometheus text exposition of ``telemetry``, now."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(telemetry))
    return generate_latest(registry)


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); host defaults to
    ``127.0.0.1`` (this machine only: give ``0.0.0.0:PORT`` for a scraper elsewhere)."""
    host, _, port_text = value.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(
            f"--metrics-port must be PORT or HOST:PORT with a port from 0 to 65535, got "
            f"{value!r} (e.g. 9464, or 0.0.0.0:9464 to be scraped from another host)"
        )
    return host, int(port_text)


_TEXT = "text/plain; charset=utf-8"


class MetricsServer:
    """``/metrics``, ``/livez`` and ``/readyz`` for a :class:`Telemetry`, on one port.

    ``async with MetricsServer(telemetry, port=9464) as server``: :attr:`port` is the bound
    port (give 0 for a free one).
    """

    def __init__(self, telemetry: Telemetry, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._telemetry = telemetry
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the asked one before :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        _log.info("metrics and health checks on http://%s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), timeout=_REQUEST_TIMEOUT
                )
            except asyncio.LimitOverrunError:
                await self._answer(writer, "GET", 431, _TEXT, b"request too large\n")
                return
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            if len(head) > _MAX_REQUEST:
                await self._answer(writer, "GET", 431, _TEXT, b"request too large\n")
                return
            method, target = _request_line(head)
            status, kind, body = self._route(method, target)
            await self._answer(writer, method, status, kind, body)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _route(self, method: str, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD\n"
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            return 200, CONTENT_TYPE_LATEST, prometheus_text(self._telemetry)
        if path == "/livez":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            ready, states = self._telemetry.ready()
            lines = [f"{stream} {state}" for stream, state in sorted(states.items())]
            verdict = "ready" if ready else "not ready"
            body = "\n".join([verdict, *lines]) + "\n"
            return (200 if ready else 503), _TEXT, body.encode()
        return 404, _TEXT, b"not found: /metrics, /livez, /readyz\n"

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter, method: str, status: int, kind: str, body: bytes
    ) -> None:
        reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}
        head = (
            f"HTTP/1.1 {status} {reasons.get(status, 'Request Header Fields Too Large')}\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()


def _request_line(head: bytes) -> tuple[str, str]:
    first = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(first) < 2:
        return "", ""
    return first[0].upper(), first[1]
