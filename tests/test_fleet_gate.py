"""Every upgrade of a fleet's stream takes a slot in the fleet's budget, not only its start:
reconnects after a drop and token rotations go through the stream's upgrade gate, so a key's
budget holds however the connections end (emulator over real sockets, leases in SQLite and in
PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.fleet_db import database_url
from helpers.streams import FAST_TIMINGS
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
