"""The connection loop's decisions after a connection ended, in virtual time (no socket)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from ohip_stream import (
    AuthenticationError,
    ConfigurationError,
    EventStream,
    MemoryCheckpointStore,
    StaticToken,
    Timings,
    TransportError,
)
from ohip_stream._budget import UpgradeBudget
from ohip_stream._buffer import Buffer
from ohip_stream._checkpointing import Checkpointer
from ohip_stream._commits import Commits
from ohip_stream._config import build_config
from ohip_stream._connector import Connector
from ohip_stream._lifecycle import Lifecycle, StreamState
from ohip_stream._policy import Failure, FailureKind
from ohip_stream._resume import Resume
from ohip_stream._session import Ended
from ohip_stream._stats import StreamStats
from ohip_stream.testing import FakeClock, use_clock

KEY = "0f5e4a2c-1111-4222-8333-444455556666"
TIMINGS = Timings(complete_gap=10.0, backoff_min=1.0, backoff_max=4.0, lockout=120.0)


def _connector(clock: FakeClock, **options: Any) -> Connector:
    values: dict[str, Any] = {
        "gateway_url": "https://gateway.example.com",
        "app_key": KEY,
        "chain_code": "OHIPCN",
        "auth": StaticToken("t" * 40),
        "checkpoints": None,
        "offset": None,
        "start_at_highest": False,
        "delta": False,
        "hotel_codes": None,
        "timings": TIMINGS,
        "ssl": None,
        "proxy": None,
        "max_message_size": None,
        "max_buffer_bytes": 1 << 20,
        "queue_size": 10,
        "on_invalid": "raise",
        "on_offset_reset": "deliver",
        "dedup_window": None,
        "commit_every": 10,
        "commit_interval": 1.0,
        "guard_scope": "stream",
        "lock_dir": None,
        "standby": False,
        "allow_insecure": False,
        "first_contact_tries": 3,
    }
    values.update(options)
    config = build_config(**values)
    checkpointer = Checkpointer(
        MemoryCheckpointStore(),
        config.stream_id,
        Commits(10),
        clock=clock,
        interval=1.0,
        timings=config.timings,
        rng=random.Random(1),
        gateway_host=config.gateway.netloc,
        chain_code=config.chain_code,
    )
    return Connector(
        config,
        clock=clock,
        rng=random.Random(1),
        life=Lifecycle(),
        buffer=Buffer(10, 1 << 20, clock.monotonic),
        resume=Resume(window=100),
        stats=StreamStats(),
        checkpointer=checkpointer,
        guard=None,
        budget=UpgradeBudget(150, 120.0),
    )


async def _after(connector: Connector, ended: Ended) -> asyncio.Task[None]:
    task = asyncio.ensure_future(connector._after(ended))
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def test_a_failure_while_draining_still_keeps_the_gap() -> None:
    # After our complete, a malformed frame ended the drain: the gateway counts the gap from the
    # complete, so the client waits it out too (and says that it waits the gap or a backoff).
    clock = FakeClock()
    connector = _connector(clock)
    failure = Failure(FailureKind.MALFORMED, reason="malformed frame: not JSON")
    task = await _after(connector, Ended(failure, completed=True, subscribed=True))
    assert connector.checkpointer.commits.checkpoint.completed_at == clock.time()
    wait = connector.life.wait
    assert connector.life.state is StreamState.WAITING
    assert wait is not None
    assert wait.until - clock.time() >= TIMINGS.complete_gap * 0.99
    await clock.advance(TIMINGS.complete_gap)
    await task
    assert connector.stats.reconnects == {"malformed": 1}


async def test_a_planned_close_is_one_rotation_and_a_stop_is_none() -> None:
    clock = FakeClock()
    connector = _connector(clock)
    closed = Failure(FailureKind.CLOSE, code=1000)
    await (await _after(connector, Ended(closed, completed=True, subscribed=True)))
    assert (connector.stats.rotations, connector.stats.reconnects) == (1, {"rotation": 1})
    connector.life.to(StreamState.STOPPING)
    await (await _after(connector, Ended(closed, completed=True, subscribed=True)))
    assert (connector.stats.rotations, connector.stats.reconnects) == (1, {"rotation": 1})


async def test_a_lockout_waits_with_its_reason_and_a_stop_ends_the_wait() -> None:
    clock = FakeClock()
    connector = _connector(clock)
    task = await _after(connector, Ended(Failure(FailureKind.CLOSE, code=4409), subscribed=True))
    wait = connector.life.wait
    assert wait is not None
    assert wait.reason == "lockout"
    assert wait.until - clock.time() >= TIMINGS.lockout
    assert connector.stats.lockouts == 1
    connector.life.to(StreamState.STOPPING)
    connector.stop()
    await asyncio.wait_for(task, 1)  # no virtual time passed: the stop ended the wait


async def test_a_fatal_failure_is_raised() -> None:
    connector = _connector(FakeClock())
    error = AuthenticationError("refused", status=401)
    with pytest.raises(AuthenticationError):
        await connector._after(Ended(Failure(FailureKind.FATAL, reason="x", error=error)))


async def test_network_failures_before_the_first_subscription_end_the_stream() -> None:
    clock = FakeClock()
    connector = _connector(clock, first_contact_tries=2)
    refused = Failure(FailureKind.NETWORK, reason="connection refused: [Errno 111]")
    task = await _after(connector, Ended(refused))
    await clock.advance(10)
    await task
    with pytest.raises(TransportError, match=r"cannot reach the gateway at gateway\.example\.com"):
        await connector._after(Ended(refused))
    # After a first subscription, network failures are retried forever.
    connector.connected_once = True
    task = await _after(connector, Ended(refused))
    await clock.advance(10)
    await task


async def test_a_restarted_process_keeps_the_upgrade_budget(tmp_path: Path) -> None:
    # Upgrades made before a crash count after the restart (429 past 150 in 2 minutes), so a
    # crash loop cannot reach the gateway's limit.
    timings = Timings(complete_gap=5.0, upgrade_budget=(3, 60.0))

    def stream() -> EventStream:
        return EventStream(
            gateway_url="https://gateway.example.com",
            app_key="budget-" + KEY,
            chain_code="OHIPCN",
            auth=StaticToken("t" * 40),
            timings=timings,
            lock_dir=tmp_path / "locks",
        )

    clock = FakeClock()
    async with use_clock(stream(), clock) as first:
        assert first._connector is not None
        for _ in range(3):
            first._connector._record_upgrade()
            await clock.advance(0.5)
    del first  # the process's budget goes with its last stream
    import gc

    gc.collect()
    async with use_clock(stream(), clock) as second:
        assert second._connector is not None
        budget = second._connector.budget
        assert len(budget) == 3
        assert budget.wait_time(clock.monotonic()) > 50


# --- the upgrade gate ---------------------------------------------------------------------------


class ScriptedSession:
    """Stands for a connection: counts its upgrade (as the real one does, right before the
    request) and ends as the script says."""

    def __init__(self, script: list[Any], log: list[tuple[str, float]], clock: FakeClock) -> None:
        self.script = script
        self.log = log
        self.clock = clock

    def __call__(self, config: Any, **parts: Any) -> ScriptedSession:
        self.on_upgrade = parts["on_upgrade"]
        self.life = parts["life"]
        return self

    async def run(self, subscription: Any) -> Ended:
        self.on_upgrade()
        self.log.append(("upgrade", self.clock.monotonic()))
        ended = self.script.pop(0)
        return ended(self) if callable(ended) else ended

    def complete(self, reason: str) -> None:
        pass


def _gated(clock: FakeClock, gate: Any, monkeypatch: pytest.MonkeyPatch, script: list[Any]) -> Any:
    log: list[tuple[str, float]] = []
    monkeypatch.setattr("ohip_stream._connector.Session", ScriptedSession(script, log, clock))
    return _connector(clock, upgrade_gate=gate), log


async def _run_until_done(clock: FakeClock, task: asyncio.Task[None], seconds: float) -> None:
    for _ in range(int(seconds)):
        if task.done():
            break
        await clock.advance(1.0)
    await asyncio.wait_for(task, 1)


async def test_the_upgrade_gate_is_awaited_before_every_upgrade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first connection, a reconnect after a drop and a rotation: each upgrade is preceded by
    # one pass through the gate, and the gate comes after the gap (it is the last wait).
    clock = FakeClock()
    passes: list[float] = []
    told: list[int] = []

    async def gate() -> Any:
        await clock.sleep(0.5)  # a shared budget that makes the stream wait a little
        passes.append(clock.monotonic())
        # Called when the upgrade request leaves (what the gate returns, if callable).
        return lambda: told.append(len(passes))

    def stop(session: ScriptedSession) -> Ended:
        session.life.to(StreamState.STOPPING)
        return Ended(Failure(FailureKind.CLOSE, code=1000), completed=True, subscribed=True)

    dropped = Ended(Failure(FailureKind.NETWORK, reason="connection reset"), subscribed=True)
    rotated = Ended(Failure(FailureKind.CLOSE, code=1000), completed=True, subscribed=True)
    connector, log = _gated(clock, gate, monkeypatch, [dropped, rotated, stop])
    connector.connected_once = True
    await _run_until_done(clock, asyncio.ensure_future(connector.run()), 60)
    upgrades = [at for what, at in log if what == "upgrade"]
    assert len(passes) == len(upgrades) == 3
    assert told == [1, 2, 3]  # each upgrade told its own gate's pass, once
    assert all(p <= u for p, u in zip(passes, upgrades, strict=True))
    assert all(u < p for u, p in zip(upgrades, passes[1:], strict=False))
    # The rotation's gap (10 s) was waited before the gate, not after it.
    assert passes[2] - upgrades[1] >= TIMINGS.complete_gap
    assert connector.stats.reconnects == {"network": 1, "rotation": 1}


async def test_a_stop_ends_a_wait_in_the_gate_and_no_upgrade_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def gate() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a budget that never frees a slot
        except asyncio.CancelledError:
            cancelled.set()
            raise

    connector, log = _gated(clock, gate, monkeypatch, [])
    task = asyncio.ensure_future(connector.run())
    await asyncio.wait_for(entered.wait(), 1)
    wait = connector.life.wait
    assert connector.life.state is StreamState.WAITING
    assert wait is not None
    assert wait.reason == "budget"
    connector.life.to(StreamState.STOPPING)
    connector.stop()
    await asyncio.wait_for(task, 1)  # no virtual time passed: the stop ended the wait
    assert cancelled.is_set()
    assert log == []


async def test_cancelling_the_stream_cancels_a_wait_in_the_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def gate() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    connector, log = _gated(clock, gate, monkeypatch, [])
    task = asyncio.ensure_future(connector.run())
    await asyncio.wait_for(entered.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert cancelled.is_set()
    assert log == []


async def test_an_error_in_the_gate_ends_the_stream_naming_the_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def gate() -> None:
        raise RuntimeError("no budget table")

    connector, log = _gated(FakeClock(), gate, monkeypatch, [])
    with pytest.raises(TransportError, match="the upgrade gate failed: RuntimeError"):
        await asyncio.wait_for(connector.run(), 1)
    assert log == []


def test_an_upgrade_gate_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="upgrade_gate must be an async function"):
        _connector(FakeClock(), upgrade_gate="budget")
