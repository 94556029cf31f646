"""Metrics and health of streams, read from :meth:`EventStream.snapshot` when they are collected.

Nothing here runs per event: the stream already counts what metrics need (``stream.stats``), so
every count is an observable instrument read at collection time, and every gauge is computed
from one snapshot per stream per collection. An application that never asks for telemetry
never imports this module, nor OpenTelemetry (whose import alone costs tens of milliseconds).

Names follow the OpenTelemetry semantic conventions for messaging consumers
(``messaging.client.consumed.messages``, ``messaging.process.duration``, with
``messaging.system``, ``messaging.operation.name``, ``messaging.destination.name`` = the chain
code and ``messaging.consumer.group.name`` = the application name), and the OHIP signals that
an on-call engineer needs are under ``ohip.*``. No attribute carries an offset, an event id, a
hotel code or the application key: every series is one per stream (at most one per reconnect
cause or state), so the cardinality is bounded by the number of streams.

Two ways out, over the one table of readings (:meth:`Telemetry.readings`):

* :meth:`Telemetry.instrument` registers OpenTelemetry observable instruments on a meter
  (the application's SDK exports them where it wants);
* :mod:`ohip_stream._telemetry_http` serves them as Prometheus text with ``/livez`` and
  ``/readyz`` on one port (``ohip-stream tail --metrics-port``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ohip_stream._snapshot import StreamSnapshot
from ohip_stream._telemetry_table import (
    METRICS,
    PROCESS_BUCKETS,
    PROCESS_DURATION,
    Attributes,
    Observable,
    Point,
    Reading,
    Spec,
    Watched,
    base_attributes,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter, MeterProvider

__all__ = ["Telemetry"]


class Telemetry:
    """Metrics and health of the streams it watches.

    Args:
        application: The name that ``messaging.consumer.group.name`` carries (the application
            that consumes, e.g. ``"pms-sync"``); by default each stream's id. Never the
            application key.

    Example::

        telemetry = Telemetry(application="pms-sync")
        telemetry.watch(stream)
        telemetry.instrument()          # the global MeterProvider of the application's SDK
    """

    def __init__(self, *, application: str | None = None) -> None:
        if application is not None and (not application.strip() or len(application) > 255):
            raise ValueError(
                f"application must be a short non-empty name (1 to 255 characters), got "
                f"{application!r}: it names the consuming application in metrics "
                "(messaging.consumer.group.name)"
            )
        self._application = application
        self._watched: dict[str, Watched] = {}
        self._lock = threading.Lock()
        self._histograms: list[Histogram] = []

    # --- the streams ------------------------------------------------------------------------

    def watch(self, stream: Observable, *, application: str | None = None) -> None:
        """Report ``stream`` (again: replaces the one with its id)."""
        name = application or self._application or stream.stream_id
        with self._lock:
            self._watched[stream.stream_id] = Watched(stream, name, stream.snapshot().chain_code)
        # messaging.process.duration: one observation per commit batch, from the stream (an
        # EventStream calls its commit listeners; another observable may not have any).
        add_listener = getattr(stream, "add_commit_listener", None)
        if add_listener is not None:
            add_listener(functools.partial(self.record_process, stream.stream_id))

    def forget(self, stream: Observable) -> None:
        """Stop reporting ``stream`` (unknown: nothing happens)."""
        with self._lock:
            self._watched.pop(stream.stream_id, None)

    def _streams(self) -> list[Watched]:
        with self._lock:
            return list(self._watched.values())

    # --- health -----------------------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Whether every watched stream is ready (see :func:`readiness`), and each one's state.

        With no stream watched: not ready (nothing consumes yet). The states map stream id to
        ``"live"``, ``"waiting:lockout"``...: what ``/readyz`` prints.
        """
        states: dict[str, str] = {}
        everyone = True
        for watched in self._streams():
            snap = watched.stream.snapshot()
            watched.observe(snap)
            reason = snap.waiting.reason if snap.waiting is not None else None
            states[snap.stream_id] = snap.state.value + (f":{reason}" if reason else "")
            everyone = everyone and watched.ready
        return bool(states) and everyone, states

    # --- commit batches ---------------------------------------------------------------------

    def record_process(self, stream_id: str, count: int, seconds: float) -> None:
        """One commit batch of ``count`` events processed in ``seconds``: one observation of
        ``messaging.process.duration`` (per batch, not per event: a synchronous instrument per
        event would cost a third of an event's own cost)."""
        with self._lock:
            watched = self._watched.get(stream_id)
            if watched is None or count <= 0:
                return
            index = next(
                (i for i, bound in enumerate(PROCESS_BUCKETS) if seconds <= bound),
                len(PROCESS_BUCKETS),
            )
            watched.process_buckets[index] += 1
            watched.process_sum += seconds
            watched.process_count += 1
            attributes = base_attributes(watched.application, watched.chain_code)
        attributes["messaging.operation.name"] = "process"
        for histogram in self._histograms:
            histogram.record(seconds, attributes)

    def process_durations(self) -> list[tuple[Attributes, list[int], float, int]]:
        """Per stream: attributes, counts per bucket (``PROCESS_BUCKETS`` then +Inf), sum, count."""
        found = []
        for watched in self._streams():
            if watched.process_count:
                attrs = {
                    **base_attributes(watched.application, watched.chain_code),
                    "messaging.operation.name": "process",
                }
                found.append(
                    (
                        attrs,
                        list(watched.process_buckets),
                        watched.process_sum,
                        watched.process_count,
                    )
                )
        return found

    # --- readings ---------------------------------------------------------------------------

    def readings(self) -> list[Reading]:
        """Every metric of every watched stream, now (one snapshot per stream)."""
        rows: dict[str, list[Point]] = {spec.name: [] for spec in METRICS}
        for watched in self._streams():
            snap, base = self._look(watched)
            for spec in METRICS:
                rows[spec.name].extend(spec.read(snap, watched, base))
        return [
            Reading(spec.name, spec.kind, spec.unit, spec.description, tuple(rows[spec.name]))
            for spec in METRICS
        ]

    def _look(self, watched: Watched) -> tuple[StreamSnapshot, Attributes]:
        """A snapshot of the stream, what it changes in the memory kept between collections,
        and the stream's attributes."""
        snap = watched.stream.snapshot()
        watched.observe(snap)
        return snap, base_attributes(watched.application, snap.chain_code)

    # --- OpenTelemetry ----------------------------------------------------------------------

    def instrument(self, meter_provider: MeterProvider | None = None) -> None:
        """Register the observable instruments (and the process-duration histogram's reader)
        on a meter of ``meter_provider`` (default: the global one the SDK set up).

        Needs ``opentelemetry-api`` (``pip install "ohip-stream[metrics]"``). Without an SDK the
        API's meter is a no-op: nothing is ever read.
        """
        try:
            from opentelemetry import metrics
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ImportError(
                'Telemetry.instrument needs OpenTelemetry: pip install "ohip-stream[metrics]"'
            ) from exc
        from ohip_stream._version import __version__

        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("ohip_stream", __version__)
        self._histograms.append(_register(meter, self))


class _Collection:
    """One snapshot per stream per collection, shared by every instrument's callback.

    The SDK calls the callbacks in the order the instruments were made, once each per
    collection: a callback whose index is not past the previous one's starts a new collection
    (so a reader that skips some instruments still gets fresh values).
    """

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._readings: dict[str, Reading] | None = None
        self._last = -1

    def points(self, index: int, name: str) -> list[Point]:
        if self._readings is None or index <= self._last:
            self._readings = {r.name: r for r in self._telemetry.readings()}
        self._last = index
        return list(self._readings[name].points)


def _register(meter: Meter, telemetry: Telemetry) -> Histogram:
    """Observable instruments over the table (read at collection, one snapshot per stream),
    and the histogram of commit batches."""
    from opentelemetry.metrics import CallbackOptions, Observation

    collection = _Collection(telemetry)

    def callback_for(index: int, spec: Spec) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            points = collection.points(index, spec.name)
            return [Observation(p.value, p.attributes) for p in points]

        return callback

    for index, spec in enumerate(METRICS):
        make = (
            meter.create_observable_counter
            if spec.kind == "counter"
            else meter.create_observable_gauge
        )
        make(
            spec.name,
            callbacks=[callback_for(index, spec)],
            unit=spec.unit,
            description=spec.description,
        )
    return meter.create_histogram(
        PROCESS_DURATION,
        unit="s",
        description="Duration of processing one commit batch of events",
        explicit_bucket_boundaries_advisory=list(PROCESS_BUCKETS),
    )
