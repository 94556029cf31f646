"""Chaos soak: faults, crashes and bad input at seeded random points; nothing lost (issue 8).

The emulator runs in this process (its own thread) and injects faults while events are
published: abrupt drops, 1001 maintenance closes, 4409 with a lockout, token expiry then 4401, a
restart that keeps the log, malformed frames, stored and one-off events that break the schema,
oversized frames, and bursts that hold back pongs. The consumer is another process
(``tests/helpers/chaos_consumer.py``: SQLite checkpoints, a dead-letter callback writing to a
file, one flushed line per event) and is killed with SIGKILL twice and started again; it ends
with SIGTERM (a graceful stop).

Afterwards: every published offset reached the user's code (valid ones) or the dead-letter
callback (invalid ones, with their raw frame), in order within each run and without a hole over
all runs; a run killed with SIGKILL re-delivers only what came after its last commit (at most
``commit_every`` events); the client never went past its upgrade budget, never subscribed inside
the gap after a complete, and never held the stream twice.

The short soak runs in the default test run; ``OHIP_SOAK=long`` adds the 50,000-event one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ohip_stream import (
    SQLiteCheckpointStore,
)
from ohip_stream._stream import stream_id_for
from ohip_stream.testing import Emulator

pytestmark = pytest.mark.chaos

CONSUMER = Path(__file__).parent / "helpers" / "chaos_consumer.py"

EMULATOR_GAP = 0.2
CLIENT_GAP = 0.3  # the client waits longer than the gateway asks: the records prove its own gap
BUDGET = (15, 8.0)  # the client's upgrade budget; the emulator answers 429 only past 17
COMMIT_EVERY = 25
MAX_MESSAGE_SIZE = 64 * 1024
LOCKOUT_REASON = "Conflict: injected by the chaos soak"
TIMINGS: dict[str, Any] = {
    "ping_interval": 0.1,
    "rotate_after": 2.0,
    "complete_gap": CLIENT_GAP,
    "lockout": 0.4,
    "drop_wait": 0.05,
    "backoff_min": 0.02,
    "backoff_max": 0.3,
    "liveness_timeout": 1.5,
    "drain_timeout": 2.0,
    "init_timeout": 2.0,
    "upgrade_budget": BUDGET,
}
MALFORMED = (
    "{not json",
    '{"type":"bogus"}',
    "[1, 2, 3]",
    '{"id":"1","type":"next"}',
    '{"type":"connection_ack"}',
    '{"id":"1","type":"next","payload":{"data":{"newEvent":{"metadata":',
)
FAULTS = (
    "drop",
    "maintenance",
    "lockout",
    "expire",
    "restart",
    "malformed",
    "invalid_stored",
    "invalid_oneoff",
    "oversized",
    "burst",
)
PROGRESS_TIMEOUT = 60.0


@dataclasses.dataclass
class Run:
    """One consumer process: what it printed, and how it ended."""

    index: int
    out: Path
    err: Path
    proc: subprocess.Popen[bytes]
    position: int = 0
    items: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    failure: str | None = None
    killed: bool = False
    committed: int = 0  # the checkpoint after the process ended (0: none)
    highest: int = 0  # highest offset handled (event or dead letter)
    oneoffs: int = 0  # one-off invalid events dead-lettered

    def poll(self) -> None:
        with self.out.open("rb") as handle:
            handle.seek(self.position)
            data = handle.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.position += end + 1
        for line in data[: end + 1].decode().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "E":
                offset = rest.split()[0]
                self.items.append(("E", offset))
                self.highest = max(self.highest, int(offset))
            elif kind == "D":
                offset = rest.split()[0]
                if offset == "-":
                    self.oneoffs += 1
                    self.items.append(("D", None))
                else:
                    self.items.append(("D", offset))
                    self.highest = max(self.highest, int(offset))
            elif kind == "S":
                self.stats = json.loads(rest)
            elif kind == "X":
                self.failure = rest

    def tail(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]


class Soak:
    def __init__(self, emu: Emulator, tmp_path: Path, seed: int) -> None:
        self.emu = emu
        self.tmp = tmp_path
        self.rng = random.Random(seed)
        self.db = tmp_path / "offsets.db"
        self.dead = tmp_path / "dead-letters.jsonl"
        self.dead.write_text("")
        self.runs: list[Run] = []
        self.valid: list[int] = []
        self.invalid: list[int] = []
        self.oneoff_frames: list[str] = []
        self.faults: collections.Counter[str] = collections.Counter()
        self.started_at: list[float] = []  # when each consumer process was started
        self.stream_id = stream_id_for(emu.gateway_url, emu.chain_code, emu.app_key)

    # --- the consumer process ------------------------------------------------------------------

    def start(self) -> Run:
        index = len(self.runs)
        config = {
            "gateway_url": self.emu.gateway_url,
            "app_key": self.emu.app_key,
            "chain_code": self.emu.chain_code,
            "client_id": self.emu.client_id,
            "client_secret": self.emu.client_secret,
            "enterprise_id": self.emu.enterprise_id,
            "db": str(self.db),
            "dead_letters": str(self.dead),
            "lock_dir": str(self.tmp / "locks"),
            "timings": TIMINGS,
            "max_message_size": MAX_MESSAGE_SIZE,
            "queue_size": 100,
            "commit_every": COMMIT_EVERY,
            "commit_interval": 30.0,
        }
        self.started_at.append(time.time())
        out = self.tmp / f"run{index}.out"
        err = self.tmp / f"run{index}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(CONSUMER), json.dumps(config)],
                stdout=stdout,
                stderr=stderr,
            )
        run = Run(index, out, err, proc)
        self.runs.append(run)
        return run

    @property
    def current(self) -> Run:
        return self.runs[-1]

    def committed(self) -> int:
        store = SQLiteCheckpointStore(self.db)
        try:
            checkpoint = store.load_sync(self.stream_id)
        finally:
            store.close()
        if checkpoint is None or checkpoint.offset is None:
            return 0
        return int(checkpoint.offset)

    async def end(self, run: Run, sig: int) -> None:
        run.proc.send_signal(sig)
        await asyncio.to_thread(run.proc.wait, 60)
        run.killed = sig == signal.SIGKILL
        run.poll()
        run.committed = self.committed()

    async def wait_for(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while True:
            run = self.current
            run.poll()
            if run.failure is not None:
                pytest.fail(f"the consumer failed: {run.failure}\n{run.tail()}")
            if ready(run):
                return
            if run.proc.poll() is not None:
                pytest.fail(f"the consumer exited ({run.proc.returncode})\n{run.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no progress ({what}) in {PROGRESS_TIMEOUT:g} s\n{run.tail()}")
            await asyncio.sleep(0.01)

    async def reach(self, offset: int) -> None:
        await self.wait_for(f"offset {offset}", lambda run: run.highest >= offset)

    # --- publishing and faults -----------------------------------------------------------------

    async def publish(self, count: int, invalid: int = 0) -> list[int]:
        first = await self.emu.publish(count - count // 2)
        self.valid += [int(o) for o in first]
        bad = [int(o) for o in await self.emu.publish_invalid(invalid)] if invalid else []
        self.invalid += bad
        rest = await self.emu.publish(count // 2) if count // 2 else []
        self.valid += [int(o) for o in rest]
        return [int(o) for o in first] + bad + [int(o) for o in rest]

    async def inject(self, kind: str) -> None:
        emu = self.emu
        self.faults[kind] += 1
        if kind == "drop":
            await emu.drop()
        elif kind == "maintenance":
            await emu.close_with(1001, "Going Away: maintenance")
        elif kind == "lockout":
            await emu.close_with(4409, LOCKOUT_REASON)
        elif kind == "expire":
            await emu.expire_tokens()
        elif kind == "restart":
            await emu.restart()
        elif kind == "malformed":
            await emu.send_raw(self.rng.choice(MALFORMED))
        elif kind == "oversized":
            await emu.send_oversized(MAX_MESSAGE_SIZE * 2)
        elif kind == "invalid_oneoff":
            seen = self.current.oneoffs
            raw = await emu.send_invalid_event()
            if raw:
                self.oneoff_frames.append(raw)
                await self.wait_for("a one-off invalid event", lambda run: run.oneoffs > seen)
            else:
                self.faults["invalid_oneoff (no live subscription)"] += 1
                self.faults[kind] -= 1
        elif kind == "kill":
            await self.end(self.current, signal.SIGKILL)
            self.start()
        else:  # pragma: no cover - the schedule holds only the kinds above
            raise AssertionError(kind)

    async def play(self, events: int, rounds: int) -> None:
        schedule = [kind for kind in FAULTS for _ in range(rounds)]
        self.rng.shuffle(schedule)
        for _ in range(2):  # two SIGKILLs, never first or last
            schedule.insert(self.rng.randrange(1, len(schedule)), "kill")
        # Chunk sizes: random, at least 10 each (progress between faults), summing to events.
        cuts = sorted(self.rng.sample(range(1, events // 10), len(schedule)))
        sizes = [10 * (b - a) for a, b in itertools.pairwise([0, *cuts, events // 10])]
        self.start()
        for kind, size in zip(schedule, sizes[:-1], strict=True):
            if kind == "burst":
                # Oracle's backpressure mode: pongs held until the burst is out (protocol §4).
                self.faults[kind] += 1
                offsets = [int(o) for o in await self.emu.burst(size, defer_pong=True)]
                self.valid += offsets
                continue
            invalid = self.rng.randint(1, 3) if kind == "invalid_stored" else 0
            if invalid:
                self.faults[kind] += 1
            if self.rng.random() < 0.15:
                # A quiet spell: rotations before the token expires happen on an idle stream too.
                await asyncio.sleep(self.rng.uniform(0.5, 2.5))
            chunk = await self.publish(size, invalid)
            # A seeded random point inside the chunk: the consumer is mid-stream there.
            await self.reach(chunk[self.rng.randrange(len(chunk))])
            if kind != "invalid_stored":
                await self.inject(kind)
        last = await self.publish(sizes[-1])
        await self.reach(last[-1])
        await self.end(self.current, signal.SIGTERM)

    # --- the verdict -----------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        runs = self.runs
        assert [run.killed for run in runs] == [True, True, False]
        final = runs[-1]
        assert final.proc.returncode == 0, final.tail()
        assert final.failure is None
        valid, invalid = set(self.valid), set(self.invalid)
        everything = sorted(valid | invalid)
        assert everything == list(range(1, len(everything) + 1))

        duplicates = 0
        start = 1
        for run in runs:
            handled = [(kind, int(o)) for kind, o in run.items if o is not None]
            numbers = [o for _, o in handled]
            # In order, each once, no hole: the run covers start..highest exactly.
            assert numbers == list(range(start, start + len(numbers))), run.index
            for kind, offset in handled:
                assert (offset in valid) if kind == "E" else (offset in invalid), (kind, offset)
            end = numbers[-1] if numbers else start - 1
            if run.killed:
                # Only what came after the last commit comes again: one commit batch at most.
                assert start - 1 <= run.committed <= end
                redelivered = end - run.committed
                assert redelivered <= COMMIT_EVERY, (run.index, run.committed, end)
                duplicates += redelivered
                start = run.committed + 1
            else:
                assert run.committed == end == everything[-1]  # the graceful stop committed
        seen = {int(o) for run in runs for _, o in run.items if o is not None}
        assert seen == valid | invalid  # nothing lost over all runs

        # Every invalid event reached the dead-letter callback with its raw frame.
        letters = [json.loads(line) for line in self.dead.read_text().splitlines()]
        stored = [letter for letter in letters if letter["offset"] is not None]
        oneoff = [letter for letter in letters if letter["offset"] is None]
        assert {int(letter["offset"]) for letter in stored} == invalid
        for letter in stored:
            frame = json.loads(letter["raw"])
            assert frame["payload"]["data"]["newEvent"]["metadata"]["offset"] == letter["offset"]
            assert letter["error"] == "EventValidationError"
        assert sorted(letter["raw"] for letter in oneoff) == sorted(self.oneoff_frames)

        self.check_gateway_rules()
        final_stats = final.stats
        assert final_stats["gaps"] == 0
        reconnects: collections.Counter[str] = collections.Counter()
        for run in runs:
            reconnects.update(run.stats.get("reconnects", {}))
        # Pongs held back during bursts never killed a connection that was receiving events.
        assert reconnects["liveness"] == 0, reconnects
        budget_waits = sum(
            run.err.read_text(errors="replace").count("to stay under the gateway's limit")
            for run in runs
        )
        return {
            "events": len(valid),
            "invalid stored": len(invalid),
            "invalid one-off": len(self.oneoff_frames),
            "dead-lettered": len(letters),
            "duplicates (after SIGKILL)": duplicates,
            "faults": dict(sorted(self.faults.items())),
            "consumer runs": len(runs),
            "upgrades": len(self.emu.upgrades),
            "reconnects by cause (consumer stats)": dict(sorted(reconnects.items())),
            "waits for the upgrade budget": budget_waits,
        }

    def check_gateway_rules(self) -> None:
        emu = self.emu
        # The upgrade budget, counted on the gateway's clock (a little slack for the delay
        # between the client's count and the request's arrival).
        count, window = BUDGET
        times = sorted(u.at for u in emu.upgrades)
        for index, at in enumerate(times):
            inside = [t for t in times[index:] if t - at < window - 1.0]
            assert len(inside) <= count, (
                f"{len(inside)} upgrades within {window:g} s: "
                f"{[round(t - at, 3) for t in inside]}; consumers started at "
                f"{[round(t - at, 3) for t in self.started_at]}"
            )
        assert all(u.status == 101 for u in emu.upgrades), collections.Counter(
            u.status for u in emu.upgrades
        )
        records = emu.connections
        completes = sorted(r.completed_at for r in records if r.completed_at is not None)
        subscribed = sorted(
            (r for r in records if r.subscribed_at is not None), key=lambda r: r.subscribed_at or 0
        )
        for record in subscribed:
            assert record.subscribed_at is not None
            before = [c for c in completes if c <= record.subscribed_at]
            if before:
                # The client's own gap (longer than the gateway's) after every complete.
                assert record.subscribed_at - before[-1] >= CLIENT_GAP, record
        # One consumer at a time: no subscription overlaps another, no 4409 but the injected.
        for first, second in itertools.pairwise(subscribed):
            assert first.closed_at is not None
            assert second.subscribed_at is not None
            assert second.subscribed_at >= first.closed_at, (first, second)
        assert emu.subscribe_rejections == []
        conflicts = [r for r in records if r.close_code == 4409]
        assert all(r.close_reason == LOCKOUT_REASON for r in conflicts), conflicts
        assert len(conflicts) <= self.faults["lockout"]


async def soak(tmp_path: Path, *, events: int, rounds: int, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    async with Emulator(
        complete_gap=EMULATOR_GAP,
        server_ping_interval=0.3,
        upgrade_budget=(BUDGET[0] + 2, BUDGET[1]),
        seed=seed,
    ) as emu:
        chaos = Soak(emu, tmp_path, seed)
        try:
            await chaos.play(events, rounds)
        finally:
            for run in chaos.runs:
                if run.proc.poll() is None:
                    run.proc.kill()
                    run.proc.wait()
        totals = chaos.check()
    totals["seconds"] = round(time.monotonic() - started, 1)
    print(f"\nchaos soak totals (seed {seed}): {json.dumps(totals, indent=2)}")
    return totals


@pytest.mark.timeout(400)
async def test_chaos_soak_short(tmp_path: Path) -> None:
    seed = int(os.environ.get("OHIP_SOAK_SEED", "8"))
    totals = await soak(tmp_path, events=6000, rounds=5, seed=seed)
    assert totals["events"] == 6000


@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("OHIP_SOAK") != "long", reason="set OHIP_SOAK=long")
async def test_chaos_soak_long(tmp_path: Path) -> None:
    seed = int(os.environ.get("OHIP_SOAK_SEED", "2024"))
    totals = await soak(tmp_path, events=50_000, rounds=12, seed=seed)
    assert totals["events"] == 50_000


# --- regressions the soak found ------------------------------------------------------------------
