"""Instructions per event of a consumer, with and without an OpenTelemetry SDK meter provider.

The emulator runs in its own process (``ohip-stream emulator --fast-replay``) with a backlog;
each consumer run is a separate process under ``valgrind --tool=cachegrind``, which counts the
instructions that process executes (the emulator's are not counted). Each mode runs twice, with
a small and a large number of events: the difference divided by the difference in events is
the cost per event, without the start-up (imports, connecting) that both share.

Modes:

* ``off``: no telemetry at all (what an application that never asks for it pays);
* ``imports``: ``off``, with the OpenTelemetry SDK and ``prometheus-client`` imported and
  unused (what a bigger heap alone costs: the garbage collector's full passes walk it);
* ``api``: ``Telemetry.instrument()`` on the OpenTelemetry API's default (no SDK) provider;
* ``sdk``: an SDK ``MeterProvider`` with a reader collecting every ``--collect-every`` events
  (default 1,000: far more often than a 60-second export interval at tens of events per second)
  and one ``messaging.process.duration`` observation per commit batch of 1,000 events.

    python benchmarks/telemetry_overhead.py [--small 1000] [--large 5000] [--collect-every 1000]
        [--modes off,imports,api,sdk] [--json]

Needs valgrind (``apt-get install valgrind``). Takes a few minutes (Python under cachegrind is
about 50 times slower).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("off", "imports", "api", "sdk")
BATCH = 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def consume(mode: str, events: int, env: dict[str, str], collect_every: int) -> None:
    """The measured process: take ``events`` events from offset 1, with telemetry ``mode``."""
    from ohip_stream import EventStream, MemoryCheckpointStore, OAuthClientCredentials

    auth = OAuthClientCredentials(
        gateway_url=env["OHIP_GATEWAY_URL"],
        client_id=env["OHIP_CLIENT_ID"],
        client_secret=env["OHIP_CLIENT_SECRET"],
        app_key=env["OHIP_APP_KEY"],
        enterprise_id=env["OHIP_ENTERPRISE_ID"],
    )
    stream = EventStream(
        gateway_url=env["OHIP_GATEWAY_URL"],
        app_key=env["OHIP_APP_KEY"],
        chain_code=env["OHIP_CHAIN_CODE"],
        auth=auth,
        checkpoints=MemoryCheckpointStore(),
        offset="1",
        commit_every=BATCH,
        lock_dir=tempfile.mkdtemp(),
    )
    collect: Any = None
    telemetry: Any = None
    if mode == "imports":
        import opentelemetry.sdk.metrics
        import prometheus_client

        del opentelemetry, prometheus_client
    elif mode != "off":
        from ohip_stream._telemetry import Telemetry

        telemetry = Telemetry(application="bench")
        telemetry.watch(stream)
        if mode == "sdk":
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            reader = InMemoryMetricReader()
            telemetry.instrument(MeterProvider(metric_readers=[reader]))
            collect = reader.get_metrics_data
        else:
            telemetry.instrument()
    taken = 0
    started = time.perf_counter()
    async with auth, stream:
        async for _event in stream:
            taken += 1
            if taken % BATCH == 0 and telemetry is not None:
                # What the proposed commit hook would do: one observation per batch.
                telemetry.record_process(stream.stream_id, BATCH, time.perf_counter() - started)
                started = time.perf_counter()
            if collect is not None and taken % collect_every == 0:
                collect()
            if taken >= events:
                break


def _instructions(output: Path) -> int:
    text = output.read_text()
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary line in {output}")
    return int(match.group(1))


def measure(mode: str, events: int, env_file: Path, work: Path, collect_every: int) -> int:
    out = work / f"cachegrind.{mode}.{events}"
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            f"--cachegrind-out-file={out}",
            sys.executable,
            __file__,
            "--consume",
            mode,
            "--events",
            str(events),
            "--env-file",
            str(env_file),
            "--collect-every",
            str(collect_every),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {events}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return _instructions(out)


def _read_env(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip().strip("'\"")
    return found


def _wait_for_env(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and "OHIP_GATEWAY_URL" in path.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError("the emulator did not write its env file")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--collect-every", type=int, default=1000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--consume", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--env-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        asyncio.run(
            consume(args.consume, args.events, _read_env(args.env_file), args.collect_every)
        )
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        env_file = work / "emulator.env"
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ohip_stream.cli",
                "emulator",
                "--port",
                str(_free_port()),
                "--rate",
                "0",
                "--fast-replay",
                "--backlog",
                str(args.large + BATCH),
                "--env-file",
                str(env_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_env(env_file)
            results: dict[str, float] = {}
            # "off" is measured first and again last: the difference is the noise of the
            # measurement (scheduling changes how many frames each socket read brings).
            modes = [m for m in args.modes.split(",") if m in MODES and m != "off"]
            for mode in ("off", *modes, "off again"):
                small = measure(mode.split()[0], args.small, env_file, work, args.collect_every)
                large = measure(mode.split()[0], args.large, env_file, work, args.collect_every)
                results[mode] = (large - small) / (args.large - args.small)
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)
    off = (results["off"] + results["off again"]) / 2
    report = {
        "instructions_per_event": {mode: round(value) for mode, value in results.items()},
        "overhead_percent": {
            mode: round(100 * (value - off) / off, 2)
            for mode, value in results.items()
            if not mode.startswith("off")
        },
        "noise_percent": round(100 * abs(results["off"] - results["off again"]) / off, 2),
        "events": [args.small, args.large],
        "collect_every": args.collect_every,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for mode, value in results.items():
            extra = (
                "" if mode.startswith("off") else f"  ({report['overhead_percent'][mode]:+.2f} %)"
            )
            print(f"{mode:>9}: {value:,.0f} instructions per event{extra}")
        print(f"    noise: {report['noise_percent']:.2f} % (off against off again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
