"""The cost of planned rotations: the consumer's pause beyond the mandated gap, and exactness.

The emulator (its own process, with OHIP's rules: one consumer, the gap after ``complete``)
publishes events live at a steady rate and issues short-lived tokens. ``EventStream`` rotates
its connection before each token expires (complete, drain, the server closes, the gap, a new
token, resubscribe from the last offset seen). Timings are compressed (seconds instead of
minutes); the mechanics are those of a real rotation.

Reported, over R rotations (default 20): the consumer's pauses across rotations (the R longest
intervals between two consecutive events handed to the loop, less the mandated gap), and the
events lost (an offset missing below the highest one received) and duplicated (an offset handed
out twice).

    python benchmarks/rotation.py [--rotations R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness
from _harness import EmulatorProcess

from ohip_stream import EventStream, OAuthClientCredentials, SQLiteCheckpointStore, Timings

RATE = 500.0  # events per second, published live
TOKEN_TTL = 3.0  # seconds; the stream rotates half-way (OAuth margin capped at half the life)
COMPLETE_GAP = 0.3  # seconds between the end of a completed connection and the next subscribe


async def run(rotations: int, time_limit: float) -> dict[str, Any]:
    with (
        EmulatorProcess(
            0,
            fast_replay=False,
            rate=RATE,
            extra=("--token-ttl", str(TOKEN_TTL), "--complete-gap", str(COMPLETE_GAP)),
        ) as emu,
        tempfile.TemporaryDirectory(prefix="ohip-bench-rot-") as tmp,
    ):
        env = emu.env
        auth = OAuthClientCredentials(
            gateway_url=env["OHIP_GATEWAY_URL"],
            client_id=env["OHIP_CLIENT_ID"],
            client_secret=env["OHIP_CLIENT_SECRET"],
            app_key=env["OHIP_APP_KEY"],
            enterprise_id=env["OHIP_ENTERPRISE_ID"],
        )
        store = SQLiteCheckpointStore(Path(tmp) / "offsets.db")
        timings = Timings(
            ping_interval=1.0,
            rotate_after=TOKEN_TTL,
            complete_gap=COMPLETE_GAP,
            drain_timeout=5.0,
            init_timeout=5.0,
        )
        arrivals: list[float] = []
        offsets: list[int] = []
        clock = time.perf_counter
        deadline = time.monotonic() + time_limit
        try:
            async with EventStream(
                gateway_url=emu.gateway_url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=auth,
                checkpoints=store,
                timings=timings,
                lock_dir=tmp,
            ) as stream:
                async for event in stream:
                    arrivals.append(clock())
                    offsets.append(int(event.metadata.offset))
                    if stream.stats.rotations >= rotations or time.monotonic() > deadline:
                        break
                # the events of the connection after the last rotation, for a last interval
                settle = clock() + 0.5
                async for event in stream:
                    arrivals.append(clock())
                    offsets.append(int(event.metadata.offset))
                    if clock() > settle:
                        break
                stats = stream.stats
        finally:
            store.close()
            await auth.aclose()
    intervals = sorted(b - a for a, b in itertools.pairwise(arrivals))
    # each rotation stops the flow for at least the gap; the longest intervals are theirs
    count = stats.rotations
    pauses = intervals[len(intervals) - count :] if count else []
    others = intervals[: len(intervals) - count]
    beyond = [max(0.0, p - COMPLETE_GAP) for p in pauses]
    seen = set(offsets)
    highest = max(offsets) if offsets else 0
    lost = sum(1 for o in range(min(offsets, default=1), highest + 1) if o not in seen)
    return {
        "rotations": stats.rotations,
        "events": len(offsets),
        "lost": lost,
        "duplicated": len(offsets) - len(seen),
        "duplicates_dropped": stats.duplicates,
        "lockouts": stats.lockouts,
        "reconnects": dict(stats.reconnects),
        "complete_gap_s": COMPLETE_GAP,
        "pauses": len(pauses),
        "pause_median_s": round(statistics.median(pauses), 3) if pauses else None,
        "pause_max_s": round(max(pauses), 3) if pauses else None,
        "beyond_gap_median_s": round(statistics.median(beyond), 3) if beyond else None,
        "beyond_gap_max_s": round(max(beyond), 3) if beyond else None,
        "longest_other_interval_s": round(others[-1], 3) if others else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="a JSON object on the last line")
    parser.add_argument("--time-limit", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rotations < 1:
        parser.error("--rotations must be at least 1")
    info = _harness.machine()
    print(f"machine: {info['cpus']} CPU(s), {info['cpu']}, Python {info['python']}", flush=True)
    print(
        f"{args.rotations} rotations: tokens of {TOKEN_TTL:g} s, gap {COMPLETE_GAP:g} s, "
        f"{RATE:g} events/s published live",
        flush=True,
    )
    result = asyncio.run(run(args.rotations, args.time_limit))
    print(
        f"rotations {result['rotations']}, events {result['events']:,}, lost {result['lost']}, "
        f"duplicated {result['duplicated']} (replays dropped: {result['duplicates_dropped']}), "
        f"lockouts {result['lockouts']}\n"
        f"pause beyond the {COMPLETE_GAP:g} s gap: median {result['beyond_gap_median_s']} s, "
        f"max {result['beyond_gap_max_s']} s over {result['pauses']} pauses; "
        f"longest interval outside rotations {result['longest_other_interval_s']} s",
        flush=True,
    )
    if args.json:
        _harness.print_json(result)


if __name__ == "__main__":
    main()
