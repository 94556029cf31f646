"""Faults between workers and the real PostgreSQL, through a real TCP proxy: a database cut
longer than a lease (the cut worker fences itself, the other takes over without overlap or
4409), and a worker whose database answers slowly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers.fleet_db import postgres_schema, with_params
from helpers.tcp_proxy import TcpProxy
from ohip_stream.fleet import Fleet, open_lease_store
from ohip_stream.testing import Emulator
from test_fleet import GAP, Handled, fleet_for, running, specs_for

pytest.importorskip("psycopg")

# Each runs past a lease time or two (seconds): CI runs them with the slow tests.
pytestmark = pytest.mark.slow

LEASE = 2.0


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(complete_gap=GAP, server_ping_interval=0.2) as emulator:
        yield emulator


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with postgres_schema() as found:
        yield found


@pytest.fixture
def proxy(dsn: str) -> AsyncIterator[TcpProxy]:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    with TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))) as found:
        yield found


def options(**more: Any) -> dict[str, Any]:
    return {
        "lease_time": LEASE,
        "renew_interval": 0.4,
        "safety_margin": 0.6,
        "min_stay": 3600.0,  # no balance moves: only failover moves streams here
        **more,
    }


async def test_a_database_cut_longer_than_a_lease_fails_over_without_overlap(
    emu: Emulator, dsn: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    handled = Handled()
    chains = ["CHA", "CHB"]
    for chain in chains:
        await emu.publish(2, chain_code=chain)
    through_proxy = with_params(dsn, host="127.0.0.1", port=str(proxy.port))
    cut_worker = fleet_for(
        emu,
        through_proxy,
        tmp_path / "a",
        handled,
        "cut",
        streams=specs_for(emu, chains),
        **options(),
    )
    async with running(cut_worker):
        await handled.wait_for(lambda: len(handled.seen) == 4)
        other = fleet_for(emu, dsn, tmp_path / "b", handled, "other", **options())
        async with running(other):
            await asyncio.sleep(0.5)
            assert other.owned == {}  # every stream is held, and nothing flaps
            loop = asyncio.get_running_loop()
            proxy.cut()
            cut_at = loop.time()
            await handled.wait_for(lambda: cut_worker.stats.self_fenced == 2, timeout=LEASE)
            fenced_after = loop.time() - cut_at
            for chain in chains:
                await emu.publish(1, chain_code=chain)
            await handled.wait_for(
                lambda: (
                    {w for w, _, o in handled.seen if o == "3"} == {"other"}
                    and len([1 for _, _, o in handled.seen if o == "3"]) == 2
                ),
                timeout=LEASE + GAP + 5,
            )
            failover = loop.time() - cut_at
            proxy.restore()
            await asyncio.sleep(1.0)  # the cut worker comes back: it must not take anything
            assert cut_worker.owned == {}
            assert set(other.owned) == {f"emu:{c}" for c in chains}
    assert fenced_after < LEASE
    assert failover < LEASE + GAP + 5
    assert emu.overlapping_subscriptions() == []
    assert emu.subscribe_rejections == []
    store = open_lease_store(dsn)
    try:
        epochs = sorted(lease.epoch for lease in await store.leases())
    finally:
        await store.aclose()
    assert epochs == [2, 2]  # one change of owner each


async def test_a_slow_database_keeps_the_leases(
    emu: Emulator, dsn: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    handled = Handled()
    await emu.publish(2, chain_code="CHA")
    proxy.delay = 0.01  # every round trip 20 ms slower (a distant database)
    fleet = fleet_for(
        emu,
        with_params(dsn, host="127.0.0.1", port=str(proxy.port)),
        tmp_path,
        handled,
        "slow",
        streams=specs_for(emu, ["CHA"]),
        **options(),
    )
    async with running(fleet):
        await handled.wait_for(lambda: len(handled.seen) == 2)
        await asyncio.sleep(LEASE * 1.5)
        await emu.publish(1, chain_code="CHA")
        await handled.wait_for(lambda: len(handled.seen) == 3)
    assert fleet.stats.self_fenced == 0
    assert fleet.stats.claims == 1
    assert isinstance(fleet, Fleet)
