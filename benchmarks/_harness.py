"""Shared pieces of the benchmarks: the emulator in its own process, tokens, client options.

The benchmarks are scripts (``python benchmarks/throughput.py``); this module sits beside them
and is imported as ``_harness``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ohip_stream import EventStream
from ohip_stream._net import subscription_url
from ohip_stream._protocol import SUBPROTOCOL
from ohip_stream._query import build_subscription

#: The websockets client options of the plain clients, matched to the stream's own connection:
#: no permessage-deflate offered (the stream offers none; the emulator, like many gateways,
#: accepts none), 16 MiB messages at most, and as many whole messages held before the socket
#: stops being read as the stream's buffer holds by default (``queue_size``).
CLIENT_OPTIONS: dict[str, Any] = {
    "subprotocols": [SUBPROTOCOL],
    "compression": None,
    "max_size": 16 * 1024 * 1024,
    "max_queue": inspect.signature(EventStream).parameters["queue_size"].default,
    "ping_interval": None,
    "ping_timeout": None,
}


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmulatorProcess:
    """``python -m ohip_stream.testing`` in a child process, with a preloaded backlog.

    ``env`` holds the ``OHIP_*`` variables it wrote; ``first_offset`` is the backlog's first
    offset (the emulator numbers from 1 unless told otherwise).
    """

    def __init__(
        self,
        backlog: int,
        *,
        fast_replay: bool = True,
        rate: float = 0.0,
        extra: tuple[str, ...] = (),
        startup_timeout: float = 300.0,
    ) -> None:
        self.backlog = backlog
        self.fast_replay = fast_replay
        self.rate = rate
        self.extra = extra
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="ohip-bench-emu-")
        self.env_file = Path(self._dir.name) / "ohip.env"
        self.env: dict[str, str] = {}
        self.first_offset = 1
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> EmulatorProcess:
        args = [
            sys.executable,
            "-m",
            "ohip_stream.testing",
            "--port",
            str(self.port),
            "--rate",
            str(self.rate),
            "--backlog",
            str(self.backlog),
            "--env-file",
            str(self.env_file),
            # no server pings or idle closes during a measurement
            "--server-ping-interval",
            "3600",
            "--idle-timeout",
            "3600",
            *self.extra,
        ]
        if self.fast_replay:
            args.append("--fast-replay")
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout

        def pump() -> None:  # the runner's stdout, line by line, until it closes
            for line in stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        ready = False
        while not ready and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if not line:
                break
            ready = line.startswith(("publishing", "Ctrl-C"))
        if not ready:
            self.stop()
            raise RuntimeError("the emulator process did not start")
        for line in self.env_file.read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition("=")
            self.env[name] = value
        return self

    @property
    def gateway_url(self) -> str:
        return self.env["OHIP_GATEWAY_URL"]

    @property
    def app_key(self) -> str:
        return self.env["OHIP_APP_KEY"]

    @property
    def chain_code(self) -> str:
        return self.env["OHIP_CHAIN_CODE"]

    @property
    def ws_url(self) -> str:
        return subscription_url(self.gateway_url, self.app_key)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._dir.cleanup()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def issue_token(emulator: EmulatorProcess) -> str:
    """A bearer token from the emulator's OAuth endpoint (client-credentials grant)."""
    from ohip_stream import OAuthClientCredentials

    env = emulator.env
    async with OAuthClientCredentials(
        gateway_url=env["OHIP_GATEWAY_URL"],
        client_id=env["OHIP_CLIENT_ID"],
        client_secret=env["OHIP_CLIENT_SECRET"],
        app_key=env["OHIP_APP_KEY"],
        enterprise_id=env["OHIP_ENTERPRISE_ID"],
    ) as auth:
        token = await auth.get_token()
    return token.value


def subscribe_payload(emulator: EmulatorProcess, offset: int) -> dict[str, Any]:
    """The library's own ``newEvent`` document, replaying from ``offset`` (inclusive)."""
    return build_subscription(emulator.chain_code, offset=str(offset)).payload()


def init_payload(emulator: EmulatorProcess, token: str) -> dict[str, Any]:
    """The ``connection_init`` payload OHIP wants (protocol §1)."""
    return {
        "Authorization": f"Bearer {token}",
        "x-app-key": emulator.app_key,
        "enterpriseId": emulator.env["OHIP_ENTERPRISE_ID"],
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def print_json(data: dict[str, Any]) -> None:
    """One JSON object on the last line of the output."""
    print(json.dumps(data, sort_keys=False), flush=True)
