"""``ohip-stream bridge``: configuration errors in one line (exit 2), and a bridge process into a
webhook stopped by SIGTERM after the last event (exit 0, the checkpoint at the last offset)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ohip_stream import SQLiteCheckpointStore, cli
from ohip_stream._stream import stream_id_for
from ohip_stream.testing import Emulator

FAST = {
    "OHIP_TIMINGS__COMPLETE_GAP": "0.2",
    "OHIP_TIMINGS__BACKOFF_MIN": "0.05",
    "OHIP_TIMINGS__BACKOFF_MAX": "0.3",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OHIP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OHIP_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(complete_gap=0.2) as emulator:
        for name, value in {**emulator.env(), **FAST}.items():
            monkeypatch.setenv(name, value)
        yield emulator


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ohip-stream: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_postgres_without_a_database_names_the_variable(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bridge", "postgres"]) == 2
    assert "OHIP_SINK_POSTGRES_DSN" in error_line(capsys.readouterr().err)


def test_webhook_without_an_endpoint_names_the_variable(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bridge", "webhook"]) == 2
    assert "OHIP_SINK_WEBHOOK_URL" in error_line(capsys.readouterr().err)


def test_a_bad_webhook_secret_is_refused_without_being_shown(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OHIP_SINK_WEBHOOK_SECRET", "hunter2-not-whsec")
    code = cli.main(["bridge", "webhook", "--webhook-url", "http://127.0.0.1:9/h"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "whsec_" in error_line(err)
    assert "hunter2" not in err


def test_a_bad_subject_template_is_refused(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bridge", "nats", "--subject", "ohip.{room}"]) == 2
    assert "room" in error_line(capsys.readouterr().err)


def test_a_bridge_into_a_webhook_delivers_and_stops_on_sigterm(
    emu: Emulator, tmp_path: Path
) -> None:
    received: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.add(self.headers["Idempotency-Key"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    emu.publish_sync(20)
    db = tmp_path / "offsets.db"
    env = dict(os.environ)
    env["OHIP_SINK_WEBHOOK_URL"] = f"http://127.0.0.1:{server.server_port}/hooks"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    command = ["bridge", "webhook", "--checkpoint-db", str(db), "--metrics-port", str(metrics_port)]
    try:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "ohip_stream", *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(received) < 20 and time.monotonic() < deadline and bridge.poll() is None:
            time.sleep(0.05)
        # The bridge serves the operations endpoint too.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "messaging_client_consumed_messages_total" in metrics
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/livez", timeout=5).status_code == 200
        bridge.send_signal(signal.SIGTERM)
        _, err = bridge.communicate(timeout=30)
    finally:
        server.shutdown()
        server.server_close()

    assert bridge.returncode == 0, err
    assert len(received) == 20
    assert "delivered 20 events" in err
    store = SQLiteCheckpointStore(db)
    try:
        saved = store.load_sync(stream_id_for(emu.gateway_url, emu.chain_code, emu.app_key))
    finally:
        store.close()
    assert saved is not None
    assert saved.offset == "20"
