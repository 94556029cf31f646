"""A stream's connections, one after another, by Oracle's rules.

::

    wait the gap after the last complete (across restarts: the checkpoint and this host's record)
    wait for the application key's upgrade budget (150 upgrades in 2 minutes, §1)
    wait for the caller's upgrade gate, if any (a budget shared beyond this process)
    connect, subscribe from the last processed offset, serve     (_session.Session)
    the connection ended:
      planned (our complete, the server's close)  -> a rotation: commit, new token, again
      a stop was asked                            -> done: never subscribe again
      a failure                                   -> the policy's action (_policy.decide):
                                                     fatal, or wait (backoff, lockout) and again

Every wait is a state of the lifecycle (``WAITING`` with what it waits for), every wait and
every reading of time goes through the stream's clock, and a stop ends any wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ohip_stream._budget import UpgradeBudget, rate_limited_wait, shared_budget
from ohip_stream._exceptions import OhipError, TransportError
from ohip_stream._lifecycle import Lifecycle, StreamState, Wait
from ohip_stream._logging import get_logger, redact
from ohip_stream._policy import (
    Action,
    ActionKind,
    Failure,
    FailureKind,
    PolicyState,
    decide,
)
from ohip_stream._session import Ended, Session

if TYPE_CHECKING:
    from ohip_stream._buffer import Buffer
    from ohip_stream._checkpointing import Checkpointer
    from ohip_stream._clock import Clock
    from ohip_stream._config import StreamConfig, UpgradeGate
    from ohip_stream._guard import StreamGuard
    from ohip_stream._resume import Resume
    from ohip_stream._stats import StreamStats

__all__ = ["Connector", "key_budget"]

_log = get_logger("ohip_stream.stream")


class Connector:
    """Runs the connections of one stream until it is stopped or a fatal error ends it."""

    def __init__(
        self,
        config: StreamConfig,
        *,
        clock: Clock,
        rng: random.Random,
        life: Lifecycle,
        buffer: Buffer,
        resume: Resume,
        stats: StreamStats,
        checkpointer: Checkpointer,
        guard: StreamGuard | None,
        budget: UpgradeBudget,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.life = life
        self.buffer = buffer
        self.resume = resume
        self.stats = stats
        self.checkpointer = checkpointer
        self.guard = guard
        self.budget = budget
        self.label = config.stream_id
        #: The connection being made or served (None between connections).
        self.session: Session | None = None
        #: Whether a subscription was ever sent (first-contact mistakes end the stream before).
        self.connected_once = False
        self._attempt = 0
        self._auth_failures = 0
        self._lockouts = 0
        self._same_offset = 0
        self._failure_offset: int | None = None
        self._first_contact_failures = 0
        self._nap: asyncio.Future[None] | None = None
        # What the upgrade gate handed back, called when the next upgrade request leaves.
        self._upgraded: Callable[[], object] | None = None

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve and reconnect until a stop; a fatal error is raised."""
        while not self.life.stopping:
            await self._before_connect()
            if self.life.stopping:
                break
            self.life.to(StreamState.CONNECTING)
            session = self.session = Session(
                self.config,
                clock=self.clock,
                buffer=self.buffer,
                life=self.life,
                label=self.label,
                on_upgrade=self._record_upgrade,
                on_subscribed=self._subscribed,
            )
            try:
                ended = await session.run(self._subscription)
            finally:
                self.session = None
                self.stats.connected_since = None
            await self._after(ended)

    def stop(self) -> None:
        """A stop was asked (the lifecycle says so already): complete the live subscription,
        end any wait."""
        session = self.session
        if session is not None:
            session.complete("stop")
        nap = self._nap
        if nap is not None and not nap.done():
            nap.set_result(None)

    def _subscription(self) -> tuple[dict[str, Any], int | None]:
        offset, highest, asked = self.resume.subscription_start(
            self.config.offset, self.config.start_at_highest
        )
        document = self.config.document(offset, highest)
        where = offset or ("the newest event" if highest else "the server's position")
        _log.info("stream %s subscribing (from %s)", self.label, where)
        return document.payload(), asked

    def _subscribed(self) -> None:
        self.connected_once = True
        self.stats.connected_since = self.clock.time()

    # --- before a connection ------------------------------------------------------------------

    def completed_at(self) -> float | None:
        """When the stream's last connection was completed (wall clock), as far as anyone on
        this host knows: the checkpoint and the host's completion record."""
        times = [self.checkpointer.commits.checkpoint.completed_at]
        if self.guard is not None:
            times.append(self.guard.last_completed())
        known = [t for t in times if t is not None]
        return max(known) if known else None

    async def _before_connect(self) -> None:
        # The gap after a complete (§4), counted from the end of the drain, across restarts.
        completed_at = self.completed_at()
        if completed_at is not None:
            rest = self.config.timings.complete_gap - (self.clock.time() - completed_at)
            if rest > 0:
                _log.info("stream %s: waiting %.3g s, the gap after complete", self.label, rest)
                await self._wait(rest, "gap", "")
        await self._wait_for_budget()
        gate = self.config.upgrade_gate
        if gate is not None and not self.life.stopping:
            await self._through_gate(gate)

    async def _wait_for_budget(self) -> None:
        # The key's upgrade budget (§1: HTTP 429 past 150 upgrades in 2 minutes).
        wait = self.budget.wait_time(self.clock.monotonic())
        if wait > 0 and not self.life.stopping:
            rate_limited_wait(wait, self.config.timings)
            _log.warning(
                "stream %s: %d upgrades in the last %g s; waiting %.3g s to stay under the "
                "gateway's limit",
                self.label,
                len(self.budget),
                self.budget.window,
                wait,
            )
            await self._wait(
                wait, "budget", f"{len(self.budget)} upgrades in {self.budget.window:g} s"
            )

    async def _through_gate(self, gate: UpgradeGate) -> None:
        """Await the caller's upgrade gate (WAITING for the budget meanwhile); a stop ends the
        wait at once and cancels the gate's call."""
        # The token first: once the gate lets the stream through, the upgrade follows at once,
        # so that a budget counted by the gate and the gateway's count stay close together.
        # A failure here is the connection's to report: it fetches the token again.
        with contextlib.suppress(OhipError):
            await self.config.auth.get_token()
        if not self.life.to(StreamState.WAITING, Wait("budget", self.clock.time(), "upgrade gate")):
            return
        passing = asyncio.ensure_future(gate())
        nap = self._nap = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({passing, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._nap = None
            if not passing.done():
                passing.cancel()
                await asyncio.wait({passing})
        error = None if passing.cancelled() else passing.exception()
        if isinstance(error, OhipError):
            raise error
        if error is not None:
            raise TransportError(
                f"the upgrade gate failed: {type(error).__name__}: {redact(str(error))}"
            ) from error
        if not passing.cancelled():
            # The gate may hand back a function to call when the upgrade request leaves.
            result = passing.result()
            self._upgraded = result if callable(result) else None

    def _record_upgrade(self) -> None:
        self.budget.record(self.clock.monotonic())
        if self.guard is not None:
            self.guard.record_upgrade(self.clock.time(), self.budget.window)
        upgraded, self._upgraded = self._upgraded, None
        if upgraded is not None:
            try:
                upgraded()
            except Exception as exc:  # the caller's bookkeeping must not fail the connection
                _log.warning(
                    "stream %s: the upgrade gate's callback failed: %s: %s",
                    self.label,
                    type(exc).__name__,
                    redact(str(exc)),
                )

    async def _wait(self, seconds: float, reason: str, detail: str) -> None:
        """Wait ``seconds`` in the WAITING state; a stop ends the wait at once."""
        if not self.life.to(StreamState.WAITING, Wait(reason, self.clock.time() + seconds, detail)):
            return
        nap = self._nap = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not nap.done():
                nap.set_result(None)

        timer = self.clock.call_later(seconds, wake)
        try:
            await nap
        finally:
            timer.cancel()
            self._nap = None

    # --- after a connection -------------------------------------------------------------------

    async def _after(self, ended: Ended) -> None:
        if ended.completed:
            # The gap before the next subscribe counts from now, for every consumer of the
            # stream on this host and, through the checkpoint, across restarts (§4).
            now = self.clock.time()
            self.checkpointer.commits.completed(now)
            if self.guard is not None:
                self.guard.record_completed(now)
        if ended.progress:
            self._attempt = self._auth_failures = self._lockouts = 0
            self._first_contact_failures = 0
        if self.life.stopping:
            return  # a stop: leaving the block commits and releases (no rotation, no reconnect)
        if ended.planned:
            await self._rotated(ended)
            return
        failure = ended.failure
        assert failure is not None
        if ended.completed:
            await self.checkpointer.commit_quietly()
        action = self._decide(failure)
        if action.kind is ActionKind.REFRESH_TOKEN and ended.token is not None:
            self.config.auth.invalidate(ended.token)
        self._announce(action)
        await self._wait(action.delay, _wait_reason(action), redact(failure.reason))

    async def _rotated(self, ended: Ended) -> None:
        self.stats.rotations += 1
        self.stats.count_reconnect("rotation")
        await self.checkpointer.commit_quietly()
        if ended.token is not None and self.config.token_renewable:
            self.config.auth.invalidate(ended.token)
            # The new token is fetched now, while the gap after the complete runs (it counts
            # from the server's close), not after it.
            try:
                await self.config.auth.get_token()
            except OhipError as exc:  # the connection fetches it again, and says why
                _log.info("stream %s: fetching the next token failed: %s", self.label, exc)
        _log.info("stream %s rotated its connection before the token expired", self.label)

    def _decide(self, failure: Failure) -> Action:
        if failure.kind is FailureKind.FATAL and failure.error is not None:
            raise failure.error
        self._count(failure)
        completed_at = self.completed_at()
        state = PolicyState(
            attempt=self._attempt,
            auth_failures=self._auth_failures,
            lockouts=self._lockouts,
            same_offset_failures=self._same_offset,
            since_complete=None if completed_at is None else self.clock.time() - completed_at,
        )
        action = decide(failure, state, self.config.timings, self.rng)
        if action.kind is ActionKind.FATAL:
            assert action.error is not None
            raise action.error
        self._first_contact(failure)
        return action

    def _count(self, failure: Failure) -> None:
        self._attempt += 1
        is_auth = (
            failure.code == 4401
            if failure.kind is FailureKind.CLOSE
            else (failure.kind is FailureKind.HTTP and failure.code == 401)
        )
        self._auth_failures = self._auth_failures + 1 if is_auth else 0
        if failure.kind is FailureKind.MALFORMED or (
            failure.kind is FailureKind.CLOSE and failure.code == 1009
        ):
            # The same frame failing again and again is fatal (the policy counts it).
            if self._failure_offset == self.resume.last:
                self._same_offset += 1
            else:
                self._failure_offset = self.resume.last
                self._same_offset = 1

    def _first_contact(self, failure: Failure) -> None:
        # Before the first subscription, a network failure is most likely a wrong URL, host,
        # port or proxy: after a few tries, say so in one line instead of retrying forever.
        if self.connected_once or failure.kind is not FailureKind.NETWORK:
            return
        self._first_contact_failures += 1
        if self._first_contact_failures >= self.config.first_contact_tries:
            raise TransportError(
                f"cannot reach the gateway at {self.config.gateway.netloc} "
                f"({redact(failure.reason)}) after {self._first_contact_failures} tries; check "
                "gateway_url, the network and any proxy"
            )

    def _announce(self, action: Action) -> None:
        self.stats.count_reconnect(action.cause)
        if action.kind is ActionKind.LOCKOUT:
            self._lockouts += 1
            self.stats.lockouts += 1
            _log.warning(
                "stream %s: another consumer holds the stream (4409); waiting %.3g s",
                self.label,
                action.delay,
            )
        elif action.kind is ActionKind.WAIT_GAP:
            completed_at = self.completed_at()
            ago = 0.0 if completed_at is None else self.clock.time() - completed_at
            _log.warning(
                "stream %s: 4409 within the gap after complete (the previous connection "
                "completed %.3g s ago); waiting the gap, %.3g s",
                self.label,
                ago,
                action.delay,
            )
        else:
            level = logging.INFO if action.kind is ActionKind.RECONNECT else logging.WARNING
            _log.log(
                level,
                "stream %s: reconnecting in %.3g s (%s, %s)",
                self.label,
                action.delay,
                action.cause,
                action.kind.value,
            )


def key_budget(config: StreamConfig, guard: StreamGuard | None, clock: Clock) -> UpgradeBudget:
    """The upgrade budget of the stream's key in this process (shared by its streams)."""
    budget, new = shared_budget(config.app_key, *config.timings.upgrade_budget)
    if new and guard is not None:
        # Upgrades made with this key by an earlier process (a crash and a restart) count
        # too, or a crash loop would reach the 429. Once per process and key.
        wall, mono = clock.time(), clock.monotonic()
        for at in guard.recent_upgrades(budget.window, wall):
            budget.record(mono - (wall - at))
    return budget


def _wait_reason(action: Action) -> str:
    if action.kind in (ActionKind.LOCKOUT, ActionKind.WAIT_GAP):
        return "lockout" if action.kind is ActionKind.LOCKOUT else "gap"
    if action.cause == "http-429":
        return "rate_limited"
    return "backoff"
