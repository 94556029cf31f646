"""``ohip-stream tail --metrics-port`` as a process against the emulator: ``/metrics`` scraped
with a real HTTP client after known events, a drop, a 4409 and an invalid event; ``/readyz``
503 during the lockout, 200 once subscribed again; ``--log-format json``."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

pytest.importorskip("typer")
pytest.importorskip("aiohttp")

pytest.importorskip("prometheus_client")

from ohip_stream.testing import Emulator

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CLI = [sys.executable, "-m", "ohip_stream.cli"]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a Prometheus sample line: {line!r}"
        labels = dict(_LABEL.findall(match.group(2) or ""))
        found.append((match.group(1), labels, float(match.group(3))))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    hits = [
        v
        for n, found, v in samples(text)
        if n == name and all(found.get(k) == want for k, want in labels.items())
    ]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


class Stderr:
    """A process's stderr, collected by a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.done = threading.Event()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.done.set()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if (match := re.search(pattern, line)) is not None:
                return match
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if (match := re.search(pattern, line)) is not None:
                return match
        raise AssertionError(f"no line matching {pattern!r} in stderr: {self.seen}")


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (every 20 ms)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(complete_gap=0.2)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def tail_env(emu: Emulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    env.update(emu.env())
    env.update(
        {
            "OHIP_LOCK_DIR": str(tmp_path / "locks"),
            "OHIP_TIMINGS__COMPLETE_GAP": "0.3",
            "OHIP_TIMINGS__DROP_WAIT": "0.2",
            "OHIP_TIMINGS__BACKOFF_MIN": "0.05",
            "OHIP_TIMINGS__BACKOFF_MAX": "0.5",
            # Long enough to see /readyz answer 503 during it, short enough for a test.
            "OHIP_TIMINGS__LOCKOUT": "1.5",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


@pytest.fixture
def tail(emu: Emulator, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Stderr, str]]:
    with subprocess.Popen(
        [*CLI, "tail", "--json", "--metrics-port", "127.0.0.1:0"],
        cwd=tmp_path,
        env=tail_env(emu, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        err = Stderr(process.stderr)
        try:
            port = err.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1)
            yield process, err, f"http://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung tail
                process.kill()
                process.wait()
            err.done.wait(timeout=5)


@pytest.mark.slow
def test_tail_metrics_after_events_a_drop_a_lockout_and_an_invalid_event(
    emu: Emulator, tail: tuple[subprocess.Popen[str], Stderr, str]
) -> None:
    process, _err, base = tail
    with httpx.Client(base_url=base, timeout=5.0) as client:
        check_metrics(emu, process, client)


def check_metrics(emu: Emulator, process: subprocess.Popen[str], client: httpx.Client) -> None:
    consumed = "messaging_client_consumed_messages_total"
    ok = {"messaging_system": "ohip", "messaging_destination_name": emu.chain_code}

    def metrics() -> str:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        return answer.text

    assert client.get("/livez").status_code == 200

    # Known events: three published, three consumed; subscribed and ready.
    asyncio.run(emu.publish(3))
    eventually(lambda: value(metrics(), consumed, **ok, error_type="") == 3, what="3 consumed")
    text = metrics()
    assert value(text, "ohip_stream_subscribed", **ok) == 1
    assert value(text, "ohip_stream_ready", **ok) == 1
    assert value(text, "ohip_stream_state", ohip_stream_state="live") == 1
    assert value(text, "ohip_stream_dead_letters_total", **ok) == 0
    assert value(text, "ohip_upgrades_used", **ok) == 1
    assert value(text, "ohip_upgrades_limit", **ok) == 150
    assert 3000 < (value(text, "ohip_token_remaining_seconds", **ok) or 0) <= 3600
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.text.startswith("ready\n")

    # A drop (1006): one reconnect for that cause, and the events after it.
    asyncio.run(emu.drop())
    eventually(
        lambda: value(metrics(), "ohip_stream_reconnects_total", ohip_reconnect_cause="1006") == 1,
        what="a 1006 reconnect",
    )
    asyncio.run(emu.publish(2))
    eventually(lambda: value(metrics(), consumed, **ok, error_type="") == 5, what="5 consumed")

    # A 4409: /readyz says 503 during the lockout, then 200 once subscribed again.
    asyncio.run(emu.close_with(4409))
    during = eventually(
        lambda: (a := client.get("/readyz")).status_code == 503 and a, what="503 in the lockout"
    )
    assert "waiting:lockout" in during.text
    text = metrics()
    assert value(text, "ohip_stream_ready", **ok) == 0
    assert value(text, "ohip_stream_state", ohip_stream_state="waiting") == 1
    assert (value(text, "ohip_stream_wait_remaining_seconds", ohip_wait_reason="lockout") or 0) > 0
    eventually(lambda: client.get("/readyz").status_code == 200, what="200 after the lockout")
    text = metrics()
    assert value(text, "ohip_stream_lockouts_total", **ok) == 1
    assert value(text, "ohip_stream_reconnects_total", ohip_reconnect_cause="4409") == 1

    # An event that breaks the schema: one dead letter, one failed consumed message.
    assert asyncio.run(emu.send_invalid_event())
    eventually(
        lambda: value(metrics(), "ohip_stream_dead_letters_total", **ok) == 1, what="dead letter"
    )
    text = metrics()
    assert value(text, consumed, **ok, error_type="invalid_event") == 1
    assert value(text, consumed, **ok, error_type="") == 5
    assert process.poll() is None, "tail ended"

    # No high-cardinality label: no offsets, event ids, hotels or keys anywhere.
    for _name, labels, _value in samples(text):
        for key in labels:
            assert not re.search(r"offset|event_id|hotel|key", key), key
    assert emu.app_key not in text


def test_tail_log_format_json_writes_json_lines(emu: Emulator, tmp_path: Path) -> None:
    asyncio.run(emu.publish(2))
    done = subprocess.run(
        [*CLI, "tail", "--json", "-q", "-v", "--log-format", "json", "--max-events", "2"],
        cwd=tmp_path,
        env=tail_env(emu, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert records, done.stderr
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["logger"].startswith("ohip_stream") for r in records)
    for secret in (emu.client_secret, emu.app_key, emu.key_hash):
        assert secret not in done.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--metrics-port", "http"], "--metrics-port must be PORT or HOST:PORT"),
        (["--metrics-port", "99999"], "from 0 to 65535"),
        (["--log-format", "xml"], "--log-format must be one of text, json"),
    ],
)
def test_bad_metrics_and_log_options_are_one_clear_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ohip_stream import cli

    code = cli.main(["tail", *argv])
    _out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("ohip-stream: error:")]
    assert needle in line


def test_a_port_in_use_is_a_clear_error(emu: Emulator, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*CLI, "tail", "-q", "--metrics-port", str(port)],
            cwd=tmp_path,
            env=tail_env(emu, tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_overhead_benchmark_consumer_runs(emu: Emulator, tmp_path: Path) -> None:
    # The measured half of benchmarks/telemetry_overhead.py, without valgrind.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "telemetry_overhead.py"
    if not script.is_file():
        pytest.skip("benchmarks/ is not part of this distribution")
    asyncio.run(emu.publish(30))
    env_file = tmp_path / "emulator.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in emu.env().items()))
    done = subprocess.run(
        [
            *(sys.executable, str(script), "--consume", "sdk", "--events", "30"),
            *("--env-file", str(env_file), "--collect-every", "10"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
