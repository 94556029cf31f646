"""Every upgrade of a fleet's stream takes a slot in the fleet's budget, not only its start:
reconnects after a drop and token rotations go through the stream's upgrade gate, so a key's
budget holds however the connections end (emulator over real sockets, leases in SQLite and in
PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from pathlib import Path

import pytest

from helpers.fleet_db import database_url
from helpers.streams import FAST_TIMINGS
from ohip_stream.fleet import FleetStats, LeaseStoreUnavailableError
from ohip_stream.fleet._runner import BudgetGate
from ohip_stream.testing import Emulator
from test_fleet import CHAINS, GAP, Handled, fleet_for, publish_all, running
from test_fleet import specs_for as specs

# The gateway allows 4 upgrades per second; this process alone would allow 150 per 2 minutes
# (Timings' default), so only the fleet's budget keeps the streams under the gateway's limit.
COUNT, WINDOW = 4, 1.0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_reconnects_and_rotations_take_the_fleets_budget_and_meet_no_429(
    backend: str, tmp_path: Path
) -> None:
    async with (
        Emulator(complete_gap=GAP, server_ping_interval=0.2, upgrade_budget=(COUNT, WINDOW)) as emu,
        database_url(backend, tmp_path) as url,
    ):
        await publish_all(emu, 1)
        handled = Handled()
        fleet = fleet_for(
            emu,
            url,
            tmp_path,
            handled,
            "w1",
            streams=specs(emu),
            upgrade_budget=(COUNT, WINDOW),
            budget_pad=0.2,
            # Each connection rotates about half a second after its token was issued.
            timings=FAST_TIMINGS.model_copy(update={"rotate_after": 0.5}),
        )
        async with running(fleet):
            await handled.wait_for(lambda: len(handled.seen) == len(CHAINS))
            await emu.drop()  # every stream reconnects at once
            await handled.wait_for(
                lambda: sum(u.status == 101 for u in emu.upgrades) >= 4 * len(CHAINS), 20
            )
        upgrades = list(emu.upgrades)
        # Rotations happened (the client's complete; the stop completes each stream once more).
        completed = sum(c.completed_at is not None for c in emu.connections)
        assert completed >= 2 * len(CHAINS)
    statuses = [u.status for u in upgrades]
    assert statuses.count(429) == 0, [(round(u.at - upgrades[0].at, 3), u.status) for u in upgrades]
    # Every upgrade the gateway saw was taken from the fleet's budget first (start, the drop's
    # reconnects and the rotations alike).
    assert fleet.stats.upgrades == statuses.count(101) >= 4 * len(CHAINS)
    assert fleet.stats.budget_errors == 0
    assert emu.overlapping_subscriptions() == []


class FailingBudget:
    """A store whose budget table cannot be read ``failures`` times, then has room."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.confirmed: list[str] = []

    async def take_upgrade(self, key_id: str, count: int, window: float, holder: str = "") -> float:
        self.calls.append(asyncio.get_running_loop().time())
        if len(self.calls) <= self.failures:
            raise LeaseStoreUnavailableError("the fleet database cannot be reached: cut")
        return 0.0

    async def confirm_upgrade(self, key_id: str, holder: str, ago: float = 0.0) -> None:
        self.confirmed.append(holder)


async def test_a_database_error_in_the_gate_backs_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingBudget(failures=3)
    stats = FleetStats()
    gate = BudgetGate(
        store,  # type: ignore[arg-type]
        "key",
        (150, 120.0),
        rng=random.Random(1),
        holder="emu:CHA#1",
        stats=stats,
    )
    with caplog.at_level(logging.WARNING, logger="ohip_stream.fleet"):
        upgraded = await asyncio.wait_for(gate(), 5)
    # When the upgrade request leaves, the slot's record moves to that moment.
    upgraded()
    await asyncio.sleep(0.01)
    assert store.confirmed == ["emu:CHA#1#1"]
    # Asked again after 0.2, 0.4 and 0.8 s (plus jitter): a pause that grows, never a spin.
    pauses = [b - a for a, b in itertools.pairwise(store.calls)]
    assert len(store.calls) == 4
    assert all(p >= 0.2 * 2**i - 0.01 for i, p in enumerate(pauses)), pauses
    assert (stats.budget_errors, stats.upgrades, gate.taken) == (3, 1, 1)
    warnings = [r.getMessage() for r in caplog.records if "upgrade budget" in r.getMessage()]
    assert len(warnings) == 3
    assert "emu:CHA#1" in warnings[0]


async def test_a_wait_in_the_gate_ends_when_it_is_cancelled() -> None:
    store = FailingBudget(failures=1_000)
    gate = BudgetGate(store, "key", (150, 120.0), rng=random.Random(1), holder="h")  # type: ignore[arg-type]
    task = asyncio.ensure_future(gate())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(store.calls) == 1
