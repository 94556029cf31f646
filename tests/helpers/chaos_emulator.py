"""The emulator of the fleet's chaos run, in its own process (apart from the workers and from
the test that orchestrates them), so that neither shares an interpreter with the gateway.

``python chaos_emulator.py SEED GAP IDLE_TIMEOUT CHAINS`` (chains comma-separated) prints one
JSON line with the connection settings, then answers commands on stdin, one JSON line each:

* ``publish``: publish one event per chain every second from now on;
* ``stop``: stop publishing; answers the offsets published, by chain;
* ``records``: the emulator's records (overlapping subscriptions, 4409 rejections, upgrades,
  accepted subscriptions);
* ``quit`` or the end of stdin: stop serving.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from typing import Any

from ohip_stream.testing import Emulator

# The chaos run disrupts 40 streams every few seconds, far more often than Oracle's 150
# upgrades per 2 minutes allow for: the gateway (and the fleet, told the same) allows more, so
# that failover times are the fleet's, not the budget's (the budget has its own test).
BUDGET = (2000, 120.0)


async def publish(emu: Emulator, chains: list[str], published: dict[str, list[str]]) -> None:
    while True:
        for chain in chains:
            (offset,) = await emu.publish(1, chain_code=chain)
            published[chain].append(offset)
        await asyncio.sleep(1.0)


def records(emu: Emulator) -> dict[str, Any]:
    overlaps = emu.overlapping_subscriptions()
    return {
        "overlaps": [
            [a.chain_code, a.id, b.id, a.subscribed_at, b.subscribed_at] for a, b in overlaps
        ],
        "rejections": [
            {"at": r.at, "code": r.code, "connection": r.connection_id, "reason": r.reason}
            for r in emu.subscribe_rejections
        ],
        "upgrades": [[u.at, u.status] for u in emu.upgrades],
        "subscriptions": [
            [c.chain_code, c.subscribed_at, c.closed_at, c.closed_by]
            for c in emu.connections
            if c.subscribed_at is not None
        ],
        "connections": len(emu.connections),
    }


async def main(seed: int, gap: float, idle_timeout: float, chains: list[str]) -> None:
    async with Emulator(
        complete_gap=gap,
        idle_timeout=idle_timeout,
        server_ping_interval=5.0,
        seed=seed,
        upgrade_budget=BUDGET,
    ) as emu:
        settings = {
            "gateway_url": emu.gateway_url,
            "app_key": emu.app_key,
            "client_id": emu.client_id,
            "client_secret": emu.client_secret,
            "enterprise_id": emu.enterprise_id,
        }
        sys.stdout.write(json.dumps(settings) + "\n")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        published: dict[str, list[str]] = defaultdict(list)
        publisher: asyncio.Task[None] | None = None
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            answer: Any
            if line == "publish":
                publisher = publisher or asyncio.create_task(publish(emu, chains, published))
                answer = {"ok": True}
            elif line == "stop":
                if publisher is not None:
                    publisher.cancel()
                    await asyncio.wait({publisher})
                answer = dict(published)
            elif line == "records":
                answer = records(emu)
            else:  # "quit" or the end of stdin
                return
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(","))
    )
