"""One upgrade budget for the whole fleet: a cold start of many streams on one application key
across several workers meets zero HTTP 429s, and every stream is live within the budget's
minimum time plus 20 %.

Scaled down by default (25 streams, 10 upgrades per 6 s window, 3 workers); ``OHIP_SOAK=long``
runs the issue's figures with Oracle's budget (300 streams, 150 upgrades per 120 s, 4 workers;
about two and a half minutes per backend). A shorter window is not the same test: opening 150
connections in this one process (workers and emulator share it) takes 4 to 7 s on two cores,
which a 30 s window's 20 % allowance (6 s) does not always cover, while Oracle's (24 s) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from pathlib import Path

import pytest

from helpers.fleet_db import database_url
from helpers.streams import FAST_TIMINGS
from ohip_stream.testing import Emulator
from test_fleet import GAP, Handled, fleet_for, running, specs_for

pytestmark = pytest.mark.slow

LONG = os.environ.get("OHIP_SOAK") == "long"
STREAMS, WORKERS, COUNT, WINDOW = (300, 4, 150, 120.0) if LONG else (25, 3, 10, 6.0)
PAD = 0.5
# The workers share this one process, and so the process's own budget of the key, which counts
# the whole window (120 s by default): it gets the shortened window too, or it, not the fleet's
# budget, would hold back the long run's second 150 upgrades.
TIMINGS = FAST_TIMINGS.model_copy(update={"upgrade_budget": (COUNT, WINDOW)})


@pytest.mark.timeout(WINDOW * 4 + 120)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_cold_start_meets_no_429_and_ends_within_the_budget_plus_20_percent(
    backend: str, tmp_path: Path
) -> None:
    chains = [f"C{i:03}" for i in range(STREAMS)]
    async with (
        Emulator(complete_gap=GAP, server_ping_interval=1.0, upgrade_budget=(COUNT, WINDOW)) as emu,
        database_url(backend, tmp_path) as url,
    ):
        for chain in chains:
            await emu.publish(1, chain_code=chain)
        handled = Handled()
        specs = specs_for(emu, chains)
        fleets = [
            fleet_for(
                emu,
                url,
                tmp_path / f"w{i}",
                handled,
                f"w{i}",
                streams=specs if i == 0 else None,
                upgrade_budget=(COUNT, WINDOW),
                budget_pad=PAD,
                lease_time=WINDOW * 4,
                renew_interval=1.0,
                min_stay=300.0,
                safety_margin=WINDOW,
                lock_dir=tmp_path / "locks",
                timings=TIMINGS,
            )
            for i in range(WORKERS)
        ]
        began = time.monotonic()
        emu_started_wall = time.time()
        async with AllRunning(fleets):
            with contextlib.suppress(AssertionError):  # the checks below say what went wrong
                await handled.wait_for(
                    lambda: len({name for _, name, _ in handled.seen}) == STREAMS,
                    timeout=WINDOW * math.ceil(STREAMS / COUNT) * 2 + 10,
                )
            live_at = time.monotonic()
        upgrades = emu.upgrades
    statuses = [u.status for u in upgrades]
    # From the first upgrade: the time the budget governs (the workers' start is not its).
    live_after = live_at - began - (upgrades[0].at - emu_started_wall)
    minimum = (math.ceil(STREAMS / COUNT) - 1) * WINDOW
    first = upgrades[0].at
    print(  # the figures, for the record (-s shows them)
        f"{backend}: {STREAMS} streams, {WORKERS} workers, {statuses.count(101)} upgrades, "
        f"{statuses.count(429)} x 429, live after {live_after:.1f} s (minimum {minimum:g} s)"
    )
    assert statuses.count(429) == 0, str([(round(u.at - first, 3), u.status) for u in upgrades])
    assert len({name for _, name, _ in handled.seen}) == STREAMS
    assert statuses.count(101) >= STREAMS
    assert live_after <= minimum * 1.2, (live_after, minimum)
    owners = {worker for worker, _, _ in handled.seen}
    assert len(owners) > 1  # the cold start was spread across workers


class AllRunning:
    """Run every fleet (entered and running) for the block."""

    def __init__(self, fleets: list) -> None:  # type: ignore[type-arg]
        self.fleets = fleets
        self.stack: list = []  # type: ignore[type-arg]

    async def __aenter__(self) -> None:
        for fleet in self.fleets:
            ctx = running(fleet)
            await ctx.__aenter__()
            self.stack.append(ctx)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(ctx.__aexit__(None, None, None) for ctx in self.stack))
