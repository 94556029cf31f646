"""The fleet end to end: workers in one process against the emulator over real sockets, leases
in a real database (SQLite here; PostgreSQL in the same tests with ``backend`` = postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.fleet_db import database_url
from helpers.streams import FAST_TIMINGS
from ohip_stream import Event
from ohip_stream.fleet import Fleet, LeaseStore, StreamSpec, open_lease_store
from ohip_stream.testing import Emulator

GAP = FAST_TIMINGS.complete_gap
CHAINS = ["CHA", "CHB", "CHC", "CHD"]


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(complete_gap=GAP, server_ping_interval=0.2) as emulator:
        yield emulator


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as found:
        yield found


def specs_for(emu: Emulator, chains: list[str] = CHAINS) -> list[StreamSpec]:
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


class Handled:
    """What the handlers saw: (worker, stream, offset) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def handler(self, worker: str) -> Callable[[StreamSpec, Event], Any]:
        async def handle(stream: StreamSpec, event: Event) -> None:
            self.seen.append((worker, stream.name, event.metadata.offset))

        return handle

    def offsets(self, stream: str) -> list[str]:
        return [offset for _, name, offset in self.seen if name == stream]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)


def fleet_for(
    emu: Emulator, url: str, tmp_path: Path, handled: Handled, worker: str, **options: Any
) -> Fleet:
    values: dict[str, Any] = {
        "handler": handled.handler(worker),
        "worker_id": worker,
        "lease_time": 1.5,
        "renew_interval": 0.3,
        "safety_margin": 0.4,
        "min_stay": 0.0,
        "timings": FAST_TIMINGS,
        "lock_dir": tmp_path / "locks",
        "commit_every": 5,
        "commit_interval": 0.1,
        "env": {"OHIP_APP_KEY": emu.app_key, "OHIP_CLIENT_SECRET": emu.client_secret},
    }
    values.update(options)
    return Fleet(url, **values)


@contextlib.asynccontextmanager
async def running(fleet: Fleet) -> AsyncIterator[Fleet]:
    async with fleet:
        task = asyncio.create_task(fleet.run())
        try:
            yield fleet
        finally:
            fleet.request_stop()
            await asyncio.wait_for(task, 20)


async def publish_all(emu: Emulator, count: int, chains: list[str] = CHAINS) -> None:
    for chain in chains:
        await emu.publish(count, chain_code=chain)


async def leases_of(url: str) -> dict[str, Any]:
    store: LeaseStore = open_lease_store(url)
    try:
        return {lease.stream: lease for lease in await store.leases()}
    finally:
        await store.aclose()


async def test_one_worker_runs_every_stream_in_order_and_releases_on_stop(
    emu: Emulator, url: str, tmp_path: Path
) -> None:
    handled = Handled()
    await publish_all(emu, 5)
    fleet = fleet_for(emu, url, tmp_path, handled, "w1", streams=specs_for(emu))
    async with running(fleet):
        await handled.wait_for(lambda: len(handled.seen) == 20)
        await publish_all(emu, 3)
        await handled.wait_for(lambda: len(handled.seen) == 32)
        assert set(fleet.owned) == {f"emu:{c}" for c in CHAINS}
    for chain in CHAINS:
        assert handled.offsets(f"emu:{chain}") == [str(i) for i in range(1, 9)]
    leases = await leases_of(url)
    assert all(lease.owner is None for lease in leases.values())
    assert fleet.stats.releases == 4
    # The checkpoints (committed in batches) reached the last event of each stream.
    store = open_lease_store(url)
    try:
        offsets = sorted(cp.offset for cp in (await store.checkpoints()).values())
    finally:
        await store.aclose()
    assert offsets == ["8"] * 4
    assert emu.overlapping_subscriptions() == []
    assert emu.subscribe_rejections == []


async def test_a_second_worker_takes_its_share_by_handover_without_overlap(
    emu: Emulator, url: str, tmp_path: Path
) -> None:
    handled = Handled()
    await publish_all(emu, 2)
    first = fleet_for(emu, url, tmp_path, handled, "w1", streams=specs_for(emu))
    async with running(first):
        await handled.wait_for(lambda: len(handled.seen) == 8)
        second = fleet_for(emu, url, tmp_path / "b", handled, "w2")
        async with running(second):
            await handled.wait_for(lambda: len(second.owned) == 2 and len(first.owned) == 2)
            await publish_all(emu, 3)
            await handled.wait_for(lambda: len(handled.seen) >= 20)
            assert first.stats.handovers == 2
    for chain in CHAINS:
        offsets = handled.offsets(f"emu:{chain}")
        assert sorted(set(offsets), key=int) == [str(i) for i in range(1, 6)]
    workers = {worker for worker, _, offset in handled.seen if int(offset) > 2}
    assert workers == {"w1", "w2"}
    assert emu.overlapping_subscriptions() == []
    assert emu.subscribe_rejections == []  # the gap held across owners (completed_at)


async def test_an_operator_release_fences_the_owner_and_the_stream_comes_back(
    emu: Emulator, url: str, tmp_path: Path
) -> None:
    handled = Handled()
    await publish_all(emu, 1, CHAINS[:1])
    fleet = fleet_for(emu, url, tmp_path, handled, "w1", streams=specs_for(emu, CHAINS[:1]))
    async with running(fleet):
        await handled.wait_for(lambda: len(handled.seen) == 1)
        store = open_lease_store(url)
        try:
            forced = await store.force_release("emu:CHA")
            assert forced is not None
            await handled.wait_for(lambda: fleet.stats.self_fenced == 1)
            # Free again, the stream is claimed anew with a higher epoch.
            await handled.wait_for(lambda: fleet.stats.claims == 2)
            lease = {x.stream: x for x in await store.leases()}["emu:CHA"]
            assert lease.epoch == forced.epoch + 1
        finally:
            await store.aclose()
        await emu.publish(2, chain_code="CHA")
        await handled.wait_for(lambda: handled.offsets("emu:CHA")[-1:] == ["3"])
    assert emu.overlapping_subscriptions() == []


def stand_still(seconds: float) -> None:
    """Block the event loop: for the loop, a SIGSTOP or a paused VM of this long."""
    time.sleep(seconds)


async def test_a_worker_thawed_past_its_lease_hands_out_nothing_it_had_buffered(
    emu: Emulator, url: str, tmp_path: Path
) -> None:
    # While its loop stood still past the lease, another worker may have taken the stream: the
    # events this worker had buffered must not reach its handler when it runs again.
    seen: list[tuple[asyncio.Task[Any] | None, str]] = []  # (consuming task, offset)

    async def handler(stream: StreamSpec, event: Event) -> None:
        seen.append((asyncio.current_task(), event.metadata.offset))
        if len(seen) == 1:
            await asyncio.sleep(0.3)  # the rest of the backlog arrives in the stream's buffer
            stand_still(0.9)  # past the lease (0.6 s): no renewal, no watchdog meanwhile

    await emu.publish(40, chain_code="CHA")
    waits = Handled()  # its handler is not used: only its wait_for
    fleet = fleet_for(
        emu,
        url,
        tmp_path,
        waits,
        "w1",
        handler=handler,
        streams=specs_for(emu, ["CHA"]),
        lease_time=0.6,
        renew_interval=0.15,
        safety_margin=0.2,
        commit_every=1000,
        commit_interval=60.0,
    )
    async with running(fleet):
        await waits.wait_for(lambda: {offset for _, offset in seen} >= set(map(str, range(1, 41))))
    frozen = seen[0][0]
    assert [offset for task, offset in seen[1:] if task is frozen] == []
    assert fleet.stats.self_fenced >= 1
    # The second event, in hand at the fence, was not committed: the next owner began with it
    # (or with the first, if committing that on the way out took longer than half the margin).
    assert [offset for task, offset in seen if task is not frozen][:1] in (["2"], ["1"])


class FrozenRenewals:
    """A lease store whose renewals hang (a database that stopped answering), else the real
    one."""

    def __init__(self, store: LeaseStore) -> None:
        self._store = store
        self.frozen = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew_many(self, *args: Any) -> dict[str, float | None]:
        if self.frozen:
            await asyncio.sleep(3600)
        return await self._store.renew_many(*args)


async def test_a_worker_that_cannot_renew_stops_its_streams_before_the_lease_expires(
    emu: Emulator, url: str, tmp_path: Path
) -> None:
    handled = Handled()
    await publish_all(emu, 1, CHAINS[:2])
    store = FrozenRenewals(open_lease_store(url))
    await store.setup()
    await store.sync_streams(specs_for(emu, CHAINS[:2]), prune=False)
    fleet = fleet_for(emu, store, tmp_path, handled, "w1")  # type: ignore[arg-type]
    try:
        async with running(fleet):
            await handled.wait_for(lambda: len(handled.seen) == 2)
            loop = asyncio.get_running_loop()
            store.frozen = True
            frozen_at = loop.time()
            opened = len(emu.connections)
            await handled.wait_for(lambda: fleet.stats.self_fenced >= 2)
            store.frozen = False
            # The streams were stopped before the leases (1.5 s, renewed last before the
            # freeze) could expire, and their connections are closed.
            assert loop.time() - frozen_at < 1.5
            await handled.wait_for(
                lambda: all(r.closed_monotonic is not None for r in emu.connections[:opened])
            )
    finally:
        await store.aclose()
    assert emu.overlapping_subscriptions() == []


async def test_leaving_the_block_while_run_is_under_way_stops_everything_once(
    emu: Emulator, url: str, tmp_path: Path
) -> None:
    handled = Handled()
    await publish_all(emu, 1, CHAINS[:2])
    fleet = fleet_for(emu, url, tmp_path, handled, "w1", streams=specs_for(emu, CHAINS[:2]))
    async with fleet:
        task = asyncio.create_task(fleet.run())
        await handled.wait_for(lambda: len(handled.seen) == 2)
    # Leaving the block waited for run() to stop every stream and release the leases.
    assert task.done()
    assert task.exception() is None
    assert all(lease.owner is None for lease in (await leases_of(url)).values())
    assert fleet.stats.releases == 2
