"""The kill test: ``ohip-stream bridge`` SIGKILLed at random moments while the emulator publishes.

The emulator runs in this process (its own thread and loop) and publishes continuously; the
bridge runs as a subprocess and is killed with SIGKILL (no cleanup, no commit) again and again,
then run to the end and stopped with SIGTERM. Afterwards every published ``uniqueEventId`` must
be in the sink exactly once: a row of the table (PostgreSQL), a message of the JetStream stream
read back by a consumer here (NATS).

A short run (12 kills) is marked slow; ``OHIP_SOAK=long`` makes it 200 kills.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.services import nats_url_or_skip, postgres_dsn_or_skip
from ohip_stream.testing import Emulator

pytestmark = pytest.mark.slow

KILLS = 200 if os.environ.get("OHIP_SOAK") == "long" else 12


class Publisher:
    """Publishes a few events every few milliseconds from a thread, until stopped."""

    def __init__(self, emu: Emulator) -> None:
        self._emu = emu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.rng = random.Random(7)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._emu.publish_sync(self.rng.randint(1, 5))
            self._stop.wait(self.rng.uniform(0.005, 0.03))

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bridge_env(emu: Emulator, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    env.update(emu.env())
    env.update(
        {
            "OHIP_LOCK_DIR": str(tmp_path / "locks"),
            "OHIP_CHECKPOINT_DB": str(tmp_path / "offsets.db"),
            "OHIP_TIMINGS__COMPLETE_GAP": "0.2",
            "OHIP_TIMINGS__DROP_WAIT": "0.05",
            "OHIP_TIMINGS__BACKOFF_MIN": "0.05",
            "OHIP_TIMINGS__BACKOFF_MAX": "0.3",
            "OHIP_TIMINGS__LOCKOUT": "0.3",
        }
    )
    return env


def start_bridge(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "ohip_stream", "bridge", *args, "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def published_ids(emu: Emulator) -> list[str]:
    return [event["metadata"]["uniqueEventId"] for event in emu.events()]


def kill_run(
    emu: Emulator,
    args: list[str],
    env: dict[str, str],
    tmp_path: Path,
    delivered: Callable[[], int],
) -> list[str]:
    """Kill the bridge KILLS times while events are published; then run it until it has
    delivered every event and stop it with SIGTERM. Returns the published unique ids."""
    rng = random.Random(11)
    log = tmp_path / "bridge.log"
    with Publisher(emu):
        for _ in range(KILLS):
            bridge = start_bridge(args, env, log)
            # Between a bare start and well into the deliveries: the kills land anywhere.
            time.sleep(rng.uniform(0.4, 2.0))
            bridge.send_signal(signal.SIGKILL)
            bridge.wait(10)
    bridge = start_bridge(args, env, log)
    # Events only this last bridge can deliver: it is running (its SIGTERM handler installed)
    # when they are in the sink.
    emu.publish_sync(5)
    ids = published_ids(emu)
    try:
        deadline = time.monotonic() + 60
        while delivered() < len(ids) and time.monotonic() < deadline:
            assert bridge.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        bridge.send_signal(signal.SIGTERM)
        code = bridge.wait(30)
    assert code == 0, log.read_text()[-3000:]
    return ids


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(complete_gap=0.2) as emu:
        yield emu


def test_postgres_bridge_killed_repeatedly_has_every_event_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    import psycopg

    dsn = postgres_dsn_or_skip()
    table = f"kill_{uuid.uuid4().hex[:10]}"
    args = ["postgres", "--table", table, "--checkpoint-table", f"{table}_cp", "--batch-size", "50"]
    env = bridge_env(emulator, tmp_path) | {"OHIP_SINK_POSTGRES_DSN": dsn}

    def delivered() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
                return 0
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0

    try:
        ids = kill_run(emulator, args, env, tmp_path, delivered)
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(f"SELECT unique_event_id FROM {table}").fetchall()
            checkpoint = conn.execute(f"SELECT last_offset FROM {table}_cp").fetchall()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_cp")

    assert len(ids) > KILLS * 20  # events were published throughout
    counts = collections.Counter(row[0] for row in rows)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert checkpoint == [(emulator.events()[-1]["metadata"]["offset"],)]


async def read_back(url: str, stream: str) -> list[str]:
    """Every message's Nats-Msg-Id in the JetStream stream, read by an ordered consumer."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        ids: list[str] = []
        sub = await js.subscribe(f"{stream.lower()}.>", ordered_consumer=True)
        while len(ids) < total:
            msg = await sub.next_msg(timeout=10)
            ids.append((msg.headers or {})["Nats-Msg-Id"])
        await sub.unsubscribe()
        return ids
    finally:
        await nc.close()


async def delete_stream(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def stream_messages(url: str, stream: str) -> int:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except NotFoundError:
        return 0
    finally:
        await nc.close()


def test_nats_bridge_killed_repeatedly_has_every_event_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    url = nats_url_or_skip()
    stream = f"KILL{uuid.uuid4().hex[:10].upper()}"
    subject = stream.lower() + ".{chain}.{module}.{event}"
    args = ["nats", "--nats-url", url, "--jetstream", stream, "--create-stream"]
    args += ["--subject", subject, "--batch-size", "50"]
    env = bridge_env(emulator, tmp_path)
    try:
        ids = kill_run(
            emulator, args, env, tmp_path, lambda: asyncio.run(stream_messages(url, stream))
        )
        got = asyncio.run(read_back(url, stream))
    finally:
        asyncio.run(delete_stream(url, stream))

    assert len(ids) > KILLS * 20
    counts = collections.Counter(got)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
