"""Telemetry: names against the OpenTelemetry semantic conventions, values from snapshots,
readiness, the Prometheus endpoint, JSON logs, the rules file and the dashboard."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ohip_stream._lifecycle import StreamState, Wait
from ohip_stream._logging import register_secret
from ohip_stream._snapshot import StreamSnapshot
from ohip_stream._stats import StreamStats
from ohip_stream._telemetry import Telemetry
from ohip_stream._telemetry_http import MetricsServer, parse_listen, prometheus_name
from ohip_stream._telemetry_logs import JsonFormatter
from ohip_stream._telemetry_table import METRICS, readiness

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "ohip-stream-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ohip-stream-dashboard.json"
NOW = 1_800_000_000.0


class FakeStream:
    """An observable stream whose snapshot the test sets."""

    def __init__(self, stream_id: str = "0123456789abcdef", **fields: Any) -> None:
        self.stream_id = stream_id
        self.snap = StreamSnapshot(
            stream_id=stream_id,
            gateway_host="gw.example",
            chain_code="OHIPCN",
            state=StreamState.CONNECTING,
            waiting=None,
            stats=StreamStats(),
            checkpoint_offset=None,
            checkpoint_updated_at=None,
            completed_at=None,
            last_event_timestamp=None,
            token_expires_at=None,
            upgrades_used=0,
            upgrade_budget=(150, 120.0),
            buffered=0,
            taken_at=NOW,
        )
        self.set(**fields)

    def set(self, **fields: Any) -> None:
        self.snap = dataclasses.replace(self.snap, **fields)

    def snapshot(self) -> StreamSnapshot:
        return self.snap


def points(telemetry: Telemetry, name: str) -> list[tuple[dict[str, str], float]]:
    reading = next(r for r in telemetry.readings() if r.name == name)
    return [(p.attributes, p.value) for p in reading.points]


def one(telemetry: Telemetry, name: str) -> float | None:
    found = points(telemetry, name)
    assert len(found) <= 1, found
    return found[0][1] if found else None


# --- the semantic conventions ---------------------------------------------------------------

# From the OpenTelemetry semantic conventions for messaging metrics (written out here, not read
# from the code): name, instrument, unit, required attributes, and the conditionally required
# or recommended ones this consumer sets.
CONSUMED = ("messaging.client.consumed.messages", "counter", "{message}")
PROCESS = ("messaging.process.duration", "histogram", "s")
REQUIRED = {"messaging.operation.name", "messaging.system"}
SET_BY_US = {"messaging.destination.name", "messaging.consumer.group.name"}
ALLOWED = REQUIRED | SET_BY_US | {"error.type"}


def collect(telemetry: Telemetry) -> dict[str, Any]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.instrument(provider)
    telemetry.record_process("0123456789abcdef", 40, 0.2)
    data = reader.get_metrics_data()
    assert data is not None
    found = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "ohip_stream"
            for metric in scope.metrics:
                found[metric.name] = metric
    provider.shutdown()
    return found


def test_metric_names_units_and_attributes_follow_the_messaging_conventions() -> None:
    from opentelemetry.sdk.metrics.export import Histogram, Sum

    stream = FakeStream(stats=StreamStats(events=7, invalid=2), state=StreamState.LIVE)
    telemetry = Telemetry(application="pms-sync")
    telemetry.watch(stream)
    found = collect(telemetry)

    consumed = found[CONSUMED[0]]
    assert consumed.unit == CONSUMED[2]
    assert isinstance(consumed.data, Sum)
    assert consumed.data.is_monotonic
    by_error = {}
    for point in consumed.data.data_points:
        attributes = dict(point.attributes)
        assert set(attributes) >= REQUIRED | SET_BY_US
        assert set(attributes) <= ALLOWED
        assert attributes["messaging.system"] == "ohip"
        assert attributes["messaging.destination.name"] == "OHIPCN"
        assert attributes["messaging.consumer.group.name"] == "pms-sync"
        by_error[attributes.get("error.type")] = point.value
    assert by_error == {None: 7, "invalid_event": 2}

    process = found[PROCESS[0]]
    assert process.unit == PROCESS[2]
    assert isinstance(process.data, Histogram)
    (point,) = process.data.data_points
    assert point.count == 1
    assert point.sum == pytest.approx(0.2)
    assert set(point.attributes) >= REQUIRED | SET_BY_US
    assert point.attributes["messaging.operation.name"] == "process"
    # The conventions' advised bucket bounds for durations.
    assert list(point.explicit_bounds) == [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
    ]  # fmt: skip

    # OHIP's own metrics: in the ohip namespace, never in messaging.* (reserved by the
    # conventions), with units in UCUM or braces.
    for name, metric in found.items():
        if name in (CONSUMED[0], PROCESS[0]):
            continue
        assert name.startswith("ohip."), name
        assert metric.unit in {"s", "1"} or re.fullmatch(r"\{[a-z]+\}", metric.unit), metric.unit


def test_prometheus_names_follow_the_compatibility_rules() -> None:
    assert (
        prometheus_name(*CONSUMED[:1], CONSUMED[2], "counter")
        == "messaging_client_consumed_messages_total"
    )
    assert prometheus_name("messaging.process.duration", "s", "histogram") == (
        "messaging_process_duration_seconds"
    )
    assert prometheus_name("ohip.checkpoint.age", "s", "gauge") == "ohip_checkpoint_age_seconds"
    assert prometheus_name("ohip.stream.state", "{state}", "gauge") == "ohip_stream_state"


def test_unconfigured_opentelemetry_reads_nothing() -> None:
    # The API's default provider (no SDK) is a no-op: instrumenting reads no snapshot.
    from opentelemetry.metrics import NoOpMeterProvider

    stream = FakeStream()
    calls = []
    original = stream.snapshot

    def counted() -> StreamSnapshot:
        calls.append(1)
        return original()

    telemetry = Telemetry()
    telemetry.watch(stream)
    calls.clear()
    stream.snapshot = counted  # type: ignore[method-assign]
    telemetry.instrument(NoOpMeterProvider())
    telemetry.record_process(stream.stream_id, 5, 0.1)
    assert calls == []


def test_one_snapshot_per_stream_per_collection_and_fresh_values_each_time() -> None:
    stream = FakeStream(stats=StreamStats(events=1), state=StreamState.LIVE)
    calls = []
    original = stream.snapshot

    def counted() -> StreamSnapshot:
        calls.append(1)
        return original()

    stream.snapshot = counted  # type: ignore[method-assign]
    telemetry = Telemetry()
    telemetry.watch(stream)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.instrument(provider)

    def consumed() -> float:
        data = reader.get_metrics_data()
        assert data is not None
        for metric in data.resource_metrics[0].scope_metrics[0].metrics:
            if metric.name == CONSUMED[0]:
                return next(
                    p.value for p in metric.data.data_points if "error.type" not in p.attributes
                )
        raise AssertionError("no consumed messages")

    calls.clear()
    assert consumed() == 1
    assert len(calls) == 1
    stream.set(stats=StreamStats(events=9))
    assert consumed() == 9
    assert len(calls) == 2
    provider.shutdown()


# --- values -----------------------------------------------------------------------------------


def test_counters_and_gauges_from_the_snapshot() -> None:
    stats = StreamStats(
        events=10, duplicates=3, invalid=1, gaps=4, resets=1, rotations=2, lockouts=1
    )
    stats.reconnects.update({"rotation": 2, "4409": 1, "1006": 1})
    stream = FakeStream(
        stats=stats,
        state=StreamState.LIVE,
        token_expires_at=NOW + 1200,
        upgrades_used=5,
        last_event_timestamp="2027-01-15T07:59:00Z",
        buffered=2,
    )
    telemetry = Telemetry()
    telemetry.watch(stream)
    assert one(telemetry, "ohip.stream.duplicates") == 3
    assert one(telemetry, "ohip.stream.dead_letters") == 1
    assert one(telemetry, "ohip.stream.gaps") == 4
    assert one(telemetry, "ohip.stream.lockouts") == 1
    assert one(telemetry, "ohip.stream.rotations") == 2
    assert one(telemetry, "ohip.token.remaining") == 1200
    assert one(telemetry, "ohip.upgrades.used") == 5
    assert one(telemetry, "ohip.upgrades.limit") == 150
    assert one(telemetry, "ohip.stream.buffered") == 2
    assert one(telemetry, "ohip.stream.subscribed") == 1
    causes = {a["ohip.reconnect.cause"]: v for a, v in points(telemetry, "ohip.stream.reconnects")}
    assert causes == {"rotation": 2, "4409": 1, "1006": 1}
    states = {a["ohip.stream.state"]: v for a, v in points(telemetry, "ohip.stream.state")}
    assert states["live"] == 1
    assert sum(states.values()) == 1
    # The lag: now (2027-01-15T08:00:00Z) minus the event's timestamp.
    assert one(telemetry, "ohip.stream.event.lag") == pytest.approx(60.0)
    # The default consumer group is the stream id, never the key.
    (attributes, _), *_ = points(telemetry, "ohip.stream.duplicates")
    assert attributes["messaging.consumer.group.name"] == stream.stream_id


def test_an_oracle_timestamp_without_a_zone_is_taken_as_utc() -> None:
    stream = FakeStream(last_event_timestamp="15-JAN-27 07.58.00.000000 AM")
    telemetry = Telemetry()
    telemetry.watch(stream)
    assert one(telemetry, "ohip.stream.event.lag") == pytest.approx(120.0)
    stream.set(last_event_timestamp="not a time")
    assert one(telemetry, "ohip.stream.event.lag") is None


def test_seconds_since_the_last_event_count_from_the_collection_that_saw_it() -> None:
    stream = FakeStream(stats=StreamStats(events=5), state=StreamState.LIVE)
    telemetry = Telemetry()
    telemetry.watch(stream)
    assert one(telemetry, "ohip.stream.event.idle") == 0
    stream.set(taken_at=NOW + 90)
    assert one(telemetry, "ohip.stream.event.idle") == 90
    stream.set(taken_at=NOW + 100, stats=StreamStats(events=6))
    assert one(telemetry, "ohip.stream.event.idle") == 0


def test_checkpoint_age_counts_while_the_position_stands_and_events_wait() -> None:
    stream = FakeStream(
        state=StreamState.WAITING,
        waiting=Wait("backoff", NOW + 30),
        checkpoint_offset="41",
        checkpoint_updated_at=NOW - 3600,
    )
    telemetry = Telemetry()
    telemetry.watch(stream)
    # The first look: since the checkpoint was written (by this run or an earlier one).
    assert one(telemetry, "ohip.checkpoint.age") == 3600
    assert one(telemetry, "ohip.checkpoint.resume_window.remaining") == 86400 - 3600
    assert one(telemetry, "ohip.checkpoint.retention.remaining") == 7 * 86400 - 3600
    # A rewrite of the same offset (a completion recorded) does not make it younger.
    stream.set(taken_at=NOW + 600, checkpoint_updated_at=NOW + 500)
    assert one(telemetry, "ohip.checkpoint.age") == 4200
    # Subscribed with frames waiting: still counts.
    stream.set(state=StreamState.LIVE, waiting=None, buffered=3)
    assert one(telemetry, "ohip.checkpoint.age") == 4200
    # Subscribed and caught up: nothing newer exists, a quiet chain raises no alert.
    stream.set(buffered=0)
    assert one(telemetry, "ohip.checkpoint.age") == 0
    # The offset moves: the age starts again from that collection.
    stream.set(taken_at=NOW + 700, checkpoint_offset="42", buffered=5)
    assert one(telemetry, "ohip.checkpoint.age") == 0
    stream.set(taken_at=NOW + 760)
    assert one(telemetry, "ohip.checkpoint.age") == 60


def test_no_attribute_has_high_cardinality() -> None:
    stats = StreamStats(events=3, last_offset="99")
    stats.reconnects["network"] = 1
    stream = FakeStream(stats=stats, checkpoint_offset="99", checkpoint_updated_at=NOW)
    telemetry = Telemetry(application="pms-sync")
    telemetry.watch(stream)
    allowed = {
        "messaging.system",
        "messaging.destination.name",
        "messaging.consumer.group.name",
        "messaging.operation.name",
        "error.type",
        "ohip.reconnect.cause",
        "ohip.stream.state",
        "ohip.wait.reason",
    }
    for reading in telemetry.readings():
        for point in reading.points:
            assert set(point.attributes) <= allowed, (reading.name, point.attributes)
            assert "99" not in point.attributes.values()


def test_application_name_is_checked() -> None:
    with pytest.raises(ValueError, match="application must be a short non-empty name"):
        Telemetry(application="  ")


def test_several_streams_each_have_their_series() -> None:
    first, second = FakeStream("aaaa"), FakeStream("bbbb")
    second.set(chain_code="OTHER", stats=StreamStats(events=2))
    telemetry = Telemetry()
    telemetry.watch(first)
    telemetry.watch(second)
    chains = {
        a["messaging.destination.name"]: v
        for a, v in points(telemetry, "messaging.client.consumed.messages")
        if "error.type" not in a
    }
    assert chains == {"OHIPCN": 0, "OTHER": 2}
    telemetry.forget(first)
    assert len(points(telemetry, "ohip.stream.subscribed")) == 1


# --- readiness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason", "before", "ready"),
    [
        (StreamState.LIVE, None, False, True),
        (StreamState.COMPLETING, None, True, True),
        (StreamState.DRAINING, None, True, True),
        (StreamState.WAITING, "gap", True, True),
        (StreamState.WAITING, "lockout", True, False),
        (StreamState.WAITING, "backoff", True, False),
        (StreamState.WAITING, "budget", True, False),
        (StreamState.WAITING, "rate_limited", True, False),
        (StreamState.CONNECTING, None, False, False),  # before the first subscribe
        (StreamState.CONNECTING, None, True, True),  # after the gap of a planned rotation
        (StreamState.STOPPING, None, True, False),
        (StreamState.CLOSED, None, True, False),
    ],
)
def test_readiness(state: StreamState, reason: str | None, before: bool, ready: bool) -> None:
    assert readiness(state, reason, before) is ready


def test_connecting_after_a_backoff_is_not_ready() -> None:
    stream = FakeStream(state=StreamState.LIVE)
    telemetry = Telemetry()
    telemetry.watch(stream)
    assert telemetry.ready()[0]
    stream.set(state=StreamState.WAITING, waiting=Wait("backoff", NOW + 5))
    assert telemetry.ready() == (False, {stream.stream_id: "waiting:backoff"})
    stream.set(state=StreamState.CONNECTING, waiting=None)
    assert not telemetry.ready()[0]
    stream.set(state=StreamState.LIVE)
    assert telemetry.ready() == (True, {stream.stream_id: "live"})


# --- the endpoint -----------------------------------------------------------------------------


async def test_the_endpoint_serves_metrics_and_health() -> None:
    telemetry = Telemetry()
    async with (
        MetricsServer(telemetry) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert (await client.get("/livez")).status_code == 200
        empty = await client.get("/readyz")
        assert empty.status_code == 503  # nothing consumes yet
        stream = FakeStream(state=StreamState.LIVE, stats=StreamStats(events=4))
        telemetry.watch(stream)
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.text) == (200, f"ready\n{stream.stream_id} live\n")
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert re.search(
            r'^messaging_client_consumed_messages_total\{error_type="",.*\} 4\.0$',
            metrics.text,
            re.MULTILINE,
        )
        telemetry.record_process(stream.stream_id, 10, 0.03)
        text = (await client.get("/metrics")).text
        assert re.search(r'messaging_process_duration_seconds_bucket\{le="0.05",.*\} 1\.0', text)
        assert re.search(r"messaging_process_duration_seconds_count\{.*\} 1\.0", text)
        head = await client.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/metrics")).status_code == 405


async def test_a_slow_or_huge_request_does_not_hold_the_server() -> None:
    async with MetricsServer(Telemetry()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 431")
        writer.close()


def test_listen_address() -> None:
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="PORT or HOST:PORT"):
        parse_listen("http")
    with pytest.raises(ValueError, match="from 0 to 65535"):
        parse_listen("70000")


# --- structured logs --------------------------------------------------------------------------


def test_json_logs_are_one_object_per_record_with_secrets_redacted() -> None:
    register_secret("s3cr3t-value-for-json")
    record = logging.LogRecord(
        "ohip_stream.stream",
        logging.WARNING,
        __file__,
        1,
        "token %s",
        ("s3cr3t-value-for-json",),
        None,
    )
    try:
        raise RuntimeError("failed with s3cr3t-value-for-json")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "ohip_stream.stream"
    assert parsed["message"] == "token [REDACTED]"
    assert parsed["time"].endswith("Z")
    assert "RuntimeError" in parsed["exception"]
    assert "s3cr3t-value-for-json" not in line
    assert "\n" not in line


# --- the rules file and the dashboard ---------------------------------------------------------

PROMETHEUS_NAMES = {prometheus_name(spec.name, spec.unit, spec.kind) for spec in METRICS} | {
    "messaging_process_duration_seconds"
}


LABELS = {
    "messaging_system",
    "messaging_destination_name",
    "messaging_consumer_group_name",
    "messaging_operation_name",
    "ohip_reconnect_cause",
    "ohip_stream_state",
    "ohip_wait_reason",
}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ohip|messaging)_[a-z0-9_]+)", expr)) - LABELS


def _label_names(expr: str) -> set[str]:
    """Labels matched in selectors and named in by (...) / on (...)."""
    matched = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        matched.update(name.strip() for name in group.split(","))
    return matched


def test_the_rules_file_parses_and_names_only_metrics_that_exist() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert set(alerts) == {
        "OhipStreamNotSubscribed",
        "OhipStreamNoEvents",
        "OhipStreamRepeatedLockouts",
        "OhipCheckpointNearResumeWindow",
        "OhipCheckpointNearRetention",
        "OhipDeadLetters",
        "OhipEventsLost",
    }
    for name, rule in alerts.items():
        assert rule["annotations"]["summary"], name
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert _metric_names(rule["expr"]) <= PROMETHEUS_NAMES, name
        assert _label_names(rule["expr"]) <= LABELS | {"error_type"}, name
    assert "[10m]" in alerts["OhipStreamNotSubscribed"]["expr"]
    assert "[30m]" in alerts["OhipStreamNoEvents"]["expr"]
    assert "> 72000" in alerts["OhipCheckpointNearResumeWindow"]["expr"]  # 20 hours
    # 5 days less an hour of scrape and evaluation delays.
    assert "> 428400" in alerts["OhipCheckpointNearRetention"]["expr"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_the_rules_file_passes_promtool() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    for expr in exprs:
        assert _metric_names(expr) <= PROMETHEUS_NAMES, expr
        assert _label_names(expr) <= LABELS | {"error_type"}, expr
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
