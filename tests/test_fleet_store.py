"""The lease-store contract, run on both backends (SQLite file, real PostgreSQL).

Every rule of ``ohip_stream.fleet._store``: claims are atomic conditional updates, the epoch
(fencing token) grows at every change of owner, expiry is on the database's clock, renewals and
releases only by the owner at its epoch, checkpoint writes conditional on the epoch, worker
heartbeats, the streams table, and the shared upgrade budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.fleet_db import database_url
from ohip_stream import Checkpoint, CheckpointError
from ohip_stream.fleet import (
    SCHEMA_VERSION,
    FencedCheckpointStore,
    LeaseStore,
    StaleEpochError,
    StreamSpec,
    open_lease_store,
)

Opener = Callable[[], Awaitable[LeaseStore]]


def spec(name: str, chain: str = "CHAIN1", **changes: object) -> StreamSpec:
    values: dict[str, object] = {
        "name": name,
        "environment": "prod",
        "gateway_url": "https://api.example.com",
        "chain_code": chain,
        "client_id": "client",
        "app_key_env": "OHIP_APP_KEY",
        "client_secret_env": "OHIP_CLIENT_SECRET",
        "enterprise_id": "ENT1",
    }
    values.update(changes)
    return StreamSpec(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores on one fresh database (each store is its own set of connections, as two
    workers would be)."""
    stores: list[LeaseStore] = []
    async with database_url(request.param, tmp_path) as url:

        async def open_one() -> LeaseStore:
            store = open_lease_store(url)
            await store.setup()
            stores.append(store)
            return store

        yield open_one
        for store in stores:
            await store.aclose()


@pytest.fixture
async def store(opener: Opener) -> LeaseStore:
    store = await opener()
    await store.sync_streams([spec("s1"), spec("s2", "CHAIN2")], prune=False)
    return store


async def test_setup_is_idempotent_and_records_the_schema_version(opener: Opener) -> None:
    first = await opener()
    second = await opener()
    await asyncio.gather(first.setup(), second.setup())
    assert SCHEMA_VERSION == 1
    assert await first.leases() == []


async def test_sync_adds_updates_keeps_and_prunes_streams(store: LeaseStore) -> None:
    result = await store.sync_streams(
        [spec("s1"), spec("s2", "CHAIN2", delta=True), spec("s3", "CHAIN3")], prune=False
    )
    assert (result.added, result.updated, result.unchanged) == (("s3",), ("s2",), ("s1",))
    assert [s.name for s in await store.streams()] == ["s1", "s2", "s3"]
    assert (await store.streams())[1].delta is True
    assert [lease.stream for lease in await store.leases()] == ["s1", "s2", "s3"]
    pruned = await store.sync_streams([spec("s1")], prune=True)
    assert pruned.removed == ("s2", "s3")
    assert [s.name for s in await store.streams()] == ["s1"]
    assert [lease.stream for lease in await store.leases()] == ["s1"]


async def test_a_claim_takes_a_free_stream_once_and_raises_the_epoch(store: LeaseStore) -> None:
    lease = await store.claim("s1", "w1", 30)
    assert lease is not None
    assert (lease.owner, lease.epoch) == ("w1", 1)
    assert lease.remaining is not None
    assert 29 < lease.remaining <= 30
    assert await store.claim("s1", "w2", 30) is None
    assert await store.claim("s1", "w1", 30) is None  # even its owner cannot claim it twice
    assert await store.claim("unknown", "w1", 30) is None
    held = {lease.stream: lease for lease in await store.leases()}
    assert held["s1"].owner == "w1"
    assert held["s1"].held
    assert held["s2"].owner is None
    assert not held["s2"].held


async def test_concurrent_claims_from_many_workers_have_one_winner(opener: Opener) -> None:
    stores = [await opener() for _ in range(4)]
    await stores[0].sync_streams([spec(f"s{i}") for i in range(5)], prune=False)
    for name in (f"s{i}" for i in range(5)):
        results = await asyncio.gather(
            *(s.claim(name, f"w{k}", 30) for k, s in enumerate(stores) for _ in range(2))
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, name
        assert winners[0].epoch == 1


async def test_expiry_is_on_the_database_clock_and_a_new_owner_gets_a_new_epoch(
    store: LeaseStore,
) -> None:
    first = await store.claim("s1", "w1", 0.3)
    assert first is not None
    assert await store.claim("s1", "w2", 30) is None
    await asyncio.sleep(0.45)
    (expired,) = [lease for lease in await store.leases() if lease.stream == "s1"]
    assert expired.owner == "w1"
    assert not expired.held
    assert expired.remaining is not None
    assert expired.remaining < 0
    second = await store.claim("s1", "w2", 30)
    assert second is not None
    assert second.epoch == first.epoch + 1
    # The old owner can neither renew nor release any more.
    assert await store.renew("s1", "w1", first.epoch, 30) is None
    assert not await store.release("s1", "w1", first.epoch)


async def test_renew_only_by_the_owner_at_its_epoch_before_the_expiry(store: LeaseStore) -> None:
    lease = await store.claim("s1", "w1", 0.5)
    assert lease is not None
    left = await store.renew("s1", "w1", lease.epoch, 30)
    assert left is not None
    assert 29 < left <= 30
    assert await store.renew("s1", "w2", lease.epoch, 30) is None
    assert await store.renew("s1", "w1", lease.epoch + 1, 30) is None
    short = await store.claim("s2", "w1", 0.2)
    assert short is not None
    await asyncio.sleep(0.3)
    assert await store.renew("s2", "w1", short.epoch, 30) is None


async def test_renew_many_renews_what_is_still_ours_in_one_call(store: LeaseStore) -> None:
    await store.sync_streams([spec("s1"), spec("s2", "CHAIN2"), spec("s3", "CHAIN3")], prune=False)
    one = await store.claim("s1", "w1", 0.5)
    two = await store.claim("s2", "w1", 0.5)
    other = await store.claim("s3", "w2", 30)
    assert one is not None
    assert two is not None
    assert other is not None
    await store.force_release("s2")
    left = await store.renew_many("w1", {"s1": one.epoch, "s2": two.epoch, "s3": other.epoch}, 30)
    assert set(left) == {"s1", "s2", "s3"}
    assert left["s1"] is not None
    assert 29 < left["s1"] <= 30
    assert left["s2"] is None  # fenced by the operator
    assert left["s3"] is None  # another worker's
    assert await store.renew_many("w1", {}, 30) == {}


async def test_release_by_the_owner_keeps_the_epoch_for_the_next_claim(store: LeaseStore) -> None:
    lease = await store.claim("s1", "w1", 30)
    assert lease is not None
    assert not await store.release("s1", "w2", lease.epoch)
    assert not await store.release("s1", "w1", lease.epoch + 1)
    assert await store.release("s1", "w1", lease.epoch)
    (free,) = [x for x in await store.leases() if x.stream == "s1"]
    assert (free.owner, free.epoch, free.remaining) == (None, lease.epoch, None)
    again = await store.claim("s1", "w2", 30)
    assert again is not None
    assert again.epoch == lease.epoch + 1


async def test_force_release_fences_the_old_owner(store: LeaseStore) -> None:
    lease = await store.claim("s1", "w1", 30)
    assert lease is not None
    forced = await store.force_release("s1")
    assert forced is not None
    assert forced.owner is None
    assert forced.epoch == lease.epoch + 1
    assert await store.renew("s1", "w1", lease.epoch, 30) is None
    with pytest.raises(StaleEpochError, match="epoch 1 rejected"):
        await store.save_checkpoint("id1", Checkpoint(offset="5"), stream="s1", epoch=lease.epoch)
    assert await store.force_release("nope") is None
    nxt = await store.claim("s1", "w2", 30)
    assert nxt is not None
    assert nxt.epoch == lease.epoch + 2


async def test_checkpoint_writes_are_conditional_on_the_epoch(store: LeaseStore) -> None:
    lease = await store.claim("s1", "w1", 30)
    assert lease is not None
    written = Checkpoint(
        offset="41", unique_event_id="u41", completed_at=1234.5, gateway_host="h", chain_code="C"
    )
    await store.save_checkpoint("id1", written, stream="s1", epoch=lease.epoch)
    loaded = await store.load_checkpoint("id1")
    assert loaded is not None
    assert (loaded.offset, loaded.unique_event_id, loaded.completed_at) == ("41", "u41", 1234.5)
    assert loaded.updated_at > 0  # an unset updated_at gets the database's time
    assert (loaded.gateway_host, loaded.chain_code) == ("h", "C")
    # A newer owner takes over: the old epoch's writes are rejected and change nothing.
    await store.force_release("s1")
    newer = await store.claim("s1", "w2", 30)
    assert newer is not None
    with pytest.raises(StaleEpochError) as caught:
        await store.save_checkpoint("id1", Checkpoint(offset="99"), stream="s1", epoch=lease.epoch)
    assert caught.value.current == newer.epoch
    assert isinstance(caught.value, CheckpointError)
    assert not caught.value.retriable
    assert (await store.load_checkpoint("id1")).offset == "41"  # type: ignore[union-attr]
    await store.save_checkpoint("id1", Checkpoint(offset="42"), stream="s1", epoch=newer.epoch)
    assert (await store.checkpoints())["id1"].offset == "42"
    with pytest.raises(StaleEpochError, match="no lease"):
        await store.save_checkpoint("id9", Checkpoint(offset="1"), stream="gone", epoch=1)
    assert await store.load_checkpoint("id9") is None


async def test_the_fenced_store_stops_writing_after_the_first_rejection(store: LeaseStore) -> None:
    lease = await store.claim("s1", "w1", 30)
    assert lease is not None
    seen: list[StaleEpochError] = []
    fenced = FencedCheckpointStore(store, "s1", lease.epoch, on_stale=seen.append)
    await fenced.save("id1", Checkpoint(offset="1"))
    assert (await fenced.load("id1")).offset == "1"  # type: ignore[union-attr]
    await store.force_release("s1")
    await store.claim("s1", "w2", 30)
    with pytest.raises(StaleEpochError):
        await fenced.save("id1", Checkpoint(offset="2"))
    assert len(seen) == 1
    assert fenced.stale
    with pytest.raises(StaleEpochError):
        await fenced.save("id1", Checkpoint(offset="3"))
    assert fenced.rejected == 2
    assert len(seen) == 1
    assert (await store.load_checkpoint("id1")).offset == "1"  # type: ignore[union-attr]


async def test_heartbeats_list_live_workers_and_forget_the_expired(store: LeaseStore) -> None:
    await store.heartbeat("w1", "host-a", 11, 30)
    await store.heartbeat("w2", "host-b", 22, 0.2)
    assert [w.worker_id for w in await store.workers()] == ["w1", "w2"]
    await asyncio.sleep(0.3)
    (alive,) = await store.workers()
    assert (alive.worker_id, alive.host, alive.pid) == ("w1", "host-a", 11)
    assert 29 < alive.remaining <= 30
    await store.heartbeat("w2", "host-b", 22, 30)  # it came back
    assert [w.worker_id for w in await store.workers()] == ["w1", "w2"]
    await store.leave("w1")
    assert [w.worker_id for w in await store.workers()] == ["w2"]


async def test_the_upgrade_budget_is_shared_by_every_store(opener: Opener) -> None:
    first, second = await opener(), await opener()
    waits = [await s.take_upgrade("key-a", 3, 0.5) for s in (first, second, first)]
    assert waits == [0.0, 0.0, 0.0]
    wait = await second.take_upgrade("key-a", 3, 0.5)
    assert 0 < wait <= 0.5
    assert await first.take_upgrade("key-b", 3, 0.5) == 0.0  # another key, another budget
    await asyncio.sleep(wait + 0.05)
    assert await second.take_upgrade("key-a", 3, 0.5) == 0.0


async def test_a_confirmed_upgrade_moves_its_record_later_never_earlier(store: LeaseStore) -> None:
    assert await store.take_upgrade("key-c", 1, 0.5, "first") == 0.0
    await asyncio.sleep(0.2)
    await store.confirm_upgrade("key-c", "first", ago=0.05)  # it left 0.05 s ago
    # Counted from the upgrade (0.15 s after the slot), not from the slot: about 0.45 s left.
    assert 0.4 < await store.take_upgrade("key-c", 1, 0.5, "second") <= 0.46
    await store.confirm_upgrade("key-c", "first", ago=10.0)  # never before its slot
    assert 0.4 < await store.take_upgrade("key-c", 1, 0.5, "second") <= 0.46


async def test_concurrent_budget_takers_never_exceed_the_count(opener: Opener) -> None:
    stores = [await opener() for _ in range(3)]
    results = await asyncio.gather(*(s.take_upgrade("k", 5, 60) for s in stores for _ in range(4)))
    assert sorted(results)[:5] == [0.0] * 5
    assert all(r > 0 for r in sorted(results)[5:])


async def test_the_database_clock_moves(store: LeaseStore) -> None:
    first = await store.now()
    await asyncio.sleep(0.05)
    assert await store.now() > first


async def test_a_worker_paused_inside_a_transaction_holds_its_rows_for_timeout_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker frozen (SIGSTOP, a paused VM) while it holds the budget row's lock would stall
    every other worker's upgrades for as long as it stays frozen: the server ends its session
    once it has been idle in its transaction for the store's ``timeout``."""
    psycopg = pytest.importorskip("psycopg")
    from ohip_stream.fleet import LeaseStoreUnavailableError, PostgresLeaseStore

    frozen = asyncio.Event()
    original = psycopg.AsyncConnection.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = await original(self, query, *args, **kwargs)
        if "FOR UPDATE" in str(query) and not frozen.is_set():
            frozen.set()
            await asyncio.Event().wait()  # frozen with the lock held, until cancelled
        return cursor

    async def take_within(store: PostgresLeaseStore, seconds: float) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            try:
                return await asyncio.wait_for(store.take_upgrade("key", 10, 60.0), seconds)
            except LeaseStoreUnavailableError:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)

    async with database_url("postgres", tmp_path) as url:
        paused, other = PostgresLeaseStore(url, timeout=0.5), PostgresLeaseStore(url, timeout=0.5)
        try:
            await paused.setup()
            monkeypatch.setattr(psycopg.AsyncConnection, "execute", execute)
            holder = asyncio.create_task(paused.take_upgrade("key", 10, 60.0))
            await frozen.wait()
            # The paused worker never moves again, yet the row is free within about 0.5 s.
            assert await take_within(other, 2.0) == 0.0
            assert not holder.done()
            holder.cancel()
            with pytest.raises((asyncio.CancelledError, LeaseStoreUnavailableError)):
                await holder
        finally:
            holder.cancel()
            monkeypatch.undo()
            await paused.aclose()
            await other.aclose()


async def test_a_statement_waits_for_a_locked_row_for_timeout_at_most(tmp_path: Path) -> None:
    """A row held by a session the fleet does not configure (an operator's open transaction)
    fails the fleet's statement after ``timeout`` with a retriable error, instead of blocking
    the worker's round."""
    psycopg = pytest.importorskip("psycopg")
    from ohip_stream.fleet import LeaseStoreUnavailableError, PostgresLeaseStore

    async with database_url("postgres", tmp_path) as url:
        store = PostgresLeaseStore(url, timeout=0.3)
        try:
            await store.setup()
            assert await store.take_upgrade("key", 10, 60.0) == 0.0
            async with await psycopg.AsyncConnection.connect(url) as operator:
                await operator.execute(
                    "SELECT key_id FROM ohip_fleet_budgets WHERE key_id = 'key' FOR UPDATE"
                )
                loop = asyncio.get_running_loop()
                began = loop.time()
                with pytest.raises(LeaseStoreUnavailableError, match="lock"):
                    await asyncio.wait_for(store.take_upgrade("key", 10, 60.0), 5.0)
                assert loop.time() - began < 2.0
                await operator.rollback()
            assert await store.take_upgrade("key", 10, 60.0) == 0.0
        finally:
            await store.aclose()
