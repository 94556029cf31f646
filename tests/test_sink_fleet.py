"""A fleet running into a sink: ``Fleet(url, sink=...)`` against the emulator over real sockets.

With PostgresSink the fleet's database is the sink's (real PostgreSQL, a schema per test): per
stream the events and the checkpoint the fleet resumes from are written in one transaction that
checks the lease's epoch. A handover writes each event once; a worker whose lease was taken has
its next transaction rejected, nothing of it written.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.fleet_db import postgres_schema
from helpers.services import import_or_skip
from helpers.streams import FAST_TIMINGS
from ohip_stream import ConfigurationError, MemoryCheckpointStore
from ohip_stream.fleet import Fleet, StaleEpochError, StreamSpec, open_lease_store
from ohip_stream.sinks import Batch, PostgresSink, SinkCheckpoints
from ohip_stream.testing import Emulator
from test_fleet import running

CHAINS = ["CHA", "CHB", "CHC", "CHD"]


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(complete_gap=FAST_TIMINGS.complete_gap, server_ping_interval=0.2) as e:
        yield e


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    import_or_skip("psycopg")
    async with postgres_schema() as found:
        yield found


def specs_for(emu: Emulator, chains: list[str]) -> list[StreamSpec]:
    return [
        StreamSpec(
            name=f"emu:{chain}",
            environment="emu",
            gateway_url=emu.gateway_url,
            chain_code=chain,
            client_id=emu.client_id,
            app_key_env="OHIP_APP_KEY",
            client_secret_env="OHIP_CLIENT_SECRET",
            enterprise_id=emu.enterprise_id,
        )
        for chain in chains
    ]


class Recording:
    """A sink around another that records every batch it confirmed, and every refusal."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.checkpoint_table = getattr(inner, "checkpoint_table", "ohip_stream_checkpoints")
        self.delivered: list[str] = []
        self.refused: list[tuple[list[str], BaseException]] = []

    @property
    def checkpoints(self) -> SinkCheckpoints:
        return self.inner.checkpoints  # type: ignore[no-any-return]

    async def deliver(self, batch: Batch) -> None:
        ids = [e.metadata.unique_event_id for e in batch.events]
        try:
            await self.inner.deliver(batch)
        except Exception as exc:
            self.refused.append((ids, exc))
            raise
        self.delivered.extend(ids)

    def __repr__(self) -> str:
        return f"Recording({self.inner!r})"


class ListSink:
    """A sink of one's own that does not write the checkpoint (the fleet writes it after)."""

    def __init__(self) -> None:
        self.checkpoints = SinkCheckpoints(MemoryCheckpointStore())
        self.batches: list[list[str]] = []

    async def deliver(self, batch: Batch) -> None:
        self.batches.append([e.metadata.offset for e in batch.events])


def fleet_for(emu: Emulator, url: str, tmp_path: Path, sink: Any, worker: str, **kw: Any) -> Fleet:
    options: dict[str, Any] = {
        "sink": sink,
        "worker_id": worker,
        "lease_time": 1.5,
        "renew_interval": 0.3,
        "safety_margin": 0.4,
        "min_stay": 0.0,
        "timings": FAST_TIMINGS,
        "lock_dir": tmp_path / f"locks-{worker}",
        "commit_every": 5,
        "commit_interval": 0.1,
        "env": {"OHIP_APP_KEY": emu.app_key, "OHIP_CLIENT_SECRET": emu.client_secret},
    }
    options.update(kw)
    return Fleet(url, **options)


async def until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check() if asyncio.iscoroutinefunction(check) else not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


async def test_a_handover_between_two_workers_writes_each_event_exactly_once(
    emu: Emulator, dsn: str, tmp_path: Path
) -> None:
    async def business(conn: Any, events: Any) -> None:
        async with conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO business (uid) VALUES (%s)",
                [(e.metadata.unique_event_id,) for e in events],
            )

    await query(dsn, "CREATE TABLE business (uid TEXT NOT NULL)")
    published: list[str] = []
    for chain in CHAINS:
        published += await emu.publish(3, chain_code=chain)
    async with PostgresSink(dsn, on_batch=business) as pg:
        sink = Recording(pg)
        first = fleet_for(emu, dsn, tmp_path, sink, "w1", streams=specs_for(emu, CHAINS))
        async with running(first):
            await until(lambda: len(sink.delivered) == 12)
            second = fleet_for(emu, dsn, tmp_path, sink, "w2")
            async with running(second):
                await until(lambda: len(first.owned) == 2 and len(second.owned) == 2)
                for chain in CHAINS:
                    published += await emu.publish(4, chain_code=chain)
                await until(lambda: len(sink.delivered) >= 28)
                assert first.stats.handovers == 2
    assert sink.refused == []
    # Each event was in exactly one committed transaction: the handover resumed after the
    # checkpoint written with the last batch, so nothing came twice, nothing was lost.
    assert sorted(sink.delivered) == sorted(set(sink.delivered))
    assert len(sink.delivered) == len(published) == 28
    rows = await query(
        dsn,
        "SELECT chain_code, count(*), count(DISTINCT unique_event_id) "
        "FROM ohip_events GROUP BY chain_code ORDER BY chain_code",
    )
    assert rows == [(chain, 7, 7) for chain in CHAINS]
    assert await query(dsn, "SELECT count(*), count(DISTINCT uid) FROM business") == [(28, 28)]
    # The checkpoints the fleet resumes from sit on each stream's last event.
    checkpoints = await query(
        dsn, "SELECT chain_code, last_offset FROM ohip_stream_checkpoints ORDER BY chain_code"
    )
    assert checkpoints == [(chain, "7") for chain in CHAINS]
    assert emu.overlapping_subscriptions() == []
    assert emu.subscribe_rejections == []


async def test_a_worker_whose_lease_was_taken_writes_nothing_more(
    emu: Emulator, dsn: str, tmp_path: Path
) -> None:
    await emu.publish(2, chain_code="CHA")
    async with PostgresSink(dsn) as pg:
        sink = Recording(pg)
        # Renewals far apart: the sink's transaction, not a renewal, meets the new epoch first.
        fleet = fleet_for(
            emu,
            dsn,
            tmp_path,
            sink,
            "w1",
            streams=specs_for(emu, ["CHA"]),
            lease_time=60.0,
            renew_interval=20.0,
            safety_margin=10.0,
            settle=0.0,
        )
        async with running(fleet):
            await until(lambda: len(sink.delivered) == 2)
            store = open_lease_store(dsn)
            try:
                forced = await store.force_release("emu:CHA")  # what `fleet release` does
            finally:
                await store.aclose()
            assert forced is not None
            late = await emu.publish(3, chain_code="CHA")
            await until(lambda: fleet.stats.self_fenced == 1)
            owned = fleet.owned.get("emu:CHA")
            assert owned is None or owned.checkpoints.stale
    assert len(sink.refused) == 1
    refused_ids, error = sink.refused[0]
    assert isinstance(error, StaleEpochError)
    assert (error.epoch, error.current) == (forced.epoch - 1, forced.epoch)
    assert refused_ids  # the batch of the late events, rolled back whole
    assert len(sink.delivered) == 2
    rows = await query(dsn, "SELECT event_offset FROM ohip_events ORDER BY event_offset")
    assert [int(r[0]) for r in rows] == [1, 2]
    assert not set(late) & {str(r[0]) for r in rows}
    assert await query(dsn, "SELECT last_offset FROM ohip_stream_checkpoints") == [("2",)]


async def test_a_sink_that_does_not_write_the_checkpoint_gets_it_written_after(
    emu: Emulator, tmp_path: Path
) -> None:
    sink = ListSink()
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    await emu.publish(7, chain_code="CHA")
    fleet = fleet_for(emu, url, tmp_path, sink, "w1", streams=specs_for(emu, ["CHA"]))
    async with running(fleet):
        await until(lambda: sum(map(len, sink.batches)) == 7)
    assert [o for batch in sink.batches for o in batch] == [str(i) for i in range(1, 8)]
    assert all(len(batch) <= 5 for batch in sink.batches)  # commit_every
    store = open_lease_store(url)
    try:
        saved = await store.checkpoints()
    finally:
        await store.aclose()
    assert [cp.offset for cp in saved.values()] == ["7"]


async def test_the_fleet_refuses_a_sink_it_cannot_fence(dsn: str, tmp_path: Path) -> None:
    async with PostgresSink(dsn) as pg:
        with pytest.raises(ConfigurationError, match="same PostgreSQL database"):
            Fleet(f"sqlite:///{tmp_path / 'fleet.db'}", sink=pg)
        with pytest.raises(ConfigurationError, match="a handler or a sink"):
            Fleet(dsn, sink=pg, handler=lambda stream, event: None)
    async with PostgresSink(dsn, checkpoint_table="elsewhere") as pg:
        with pytest.raises(ConfigurationError, match="ohip_stream_checkpoints"):
            Fleet(dsn, sink=pg)
    with pytest.raises(ConfigurationError, match="must be a sink"):
        Fleet(dsn, sink=object())  # type: ignore[arg-type]


@pytest.mark.slow  # a real process (seconds): with the slow tests, as the other CLI runs
async def test_bridge_fleet_runs_its_streams_into_postgres_and_stops_on_sigterm(
    emu: Emulator, dsn: str, tmp_path: Path
) -> None:
    for chain in ("CHA", "CHB"):
        await emu.publish(3, chain_code=chain)
    streams = tmp_path / "streams.toml"
    lines = [
        "[environments.emu]",
        f'gateway_url = "{emu.gateway_url}"',
        f'client_id = "{emu.client_id}"',
        f'enterprise_id = "{emu.enterprise_id}"',
        'app_key_env = "FLEET_APP_KEY"',
        'client_secret_env = "FLEET_CLIENT_SECRET"',
    ]
    for chain in ("CHA", "CHB"):
        lines += ["", "[[streams]]", 'environment = "emu"', f'chain_code = "{chain}"']
    streams.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    env.update(FLEET_APP_KEY=emu.app_key, FLEET_CLIENT_SECRET=emu.client_secret)
    bridge = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "ohip_stream", "bridge", "postgres", "--fleet", dsn],
        *["--streams", str(streams), "--lock-dir", str(tmp_path / "locks")],
        *["--lease-time", "6", "--worker-id", "bridge-1", "--batch-size", "2"],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def delivered() -> bool:
            found = await query(dsn, "SELECT to_regclass('ohip_events') IS NOT NULL")
            if not found[0][0]:
                return False
            return (await query(dsn, "SELECT count(*) FROM ohip_events"))[0][0] == 6

        await until(delivered, timeout=30)
        bridge.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(bridge.communicate(), 30)
    finally:
        if bridge.returncode is None:
            bridge.kill()
            await bridge.wait()
    text = err.decode()
    assert bridge.returncode == 0, text
    assert "bridge fleet" in text
    assert emu.client_secret not in text
    assert emu.app_key not in text
    rows = await query(
        dsn, "SELECT chain_code, last_offset FROM ohip_stream_checkpoints ORDER BY chain_code"
    )
    assert rows == [("CHA", "3"), ("CHB", "3")]
    owners = await query(dsn, "SELECT owner FROM ohip_fleet_leases")
    assert owners == [(None,), (None,)]  # released on SIGTERM
