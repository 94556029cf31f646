"""Writing a stream's checkpoint: in batches, by time, at a rotation, a stop and the block's end.

The bookkeeping (what is processed, what a write covers) is :class:`~ohip_stream._commits.Commits`;
this is the I/O around it: the store, the commit-interval timer, and what a failing store means.
A store error is a :class:`~ohip_stream.CheckpointError`: a transient one
(:class:`~ohip_stream.CheckpointUnavailableError`: a locked database, a lost connection, or
any error a store that is not the project's raises) is retried with backoff while the stream
stops handing out events one batch past the last successful commit; a permanent one (the
file deleted under a running consumer) ends the stream with the store's message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from ohip_stream._exceptions import CheckpointError, CheckpointUnavailableError
from ohip_stream._logging import get_logger, redact
from ohip_stream._policy import backoff_delay

if TYPE_CHECKING:
    from ohip_stream._checkpoints import Checkpoint, CheckpointStore
    from ohip_stream._clock import Clock, TimerHandle
    from ohip_stream._commits import Commits
    from ohip_stream._timings import Timings

__all__ = ["Checkpointer"]

_log = get_logger("ohip_stream.checkpoints")
_T = TypeVar("_T")


class Checkpointer:
    """The checkpoint writes of one stream."""

    def __init__(
        self,
        store: CheckpointStore,
        stream_id: str,
        commits: Commits,
        *,
        clock: Clock,
        interval: float,
        timings: Timings,
        rng: random.Random,
        gateway_host: str,
        chain_code: str,
        listeners: list[Callable[[int, float], None]] | None = None,
    ) -> None:
        self.store = store
        self.stream_id = stream_id
        self.commits = commits
        self.clock = clock
        self.interval = interval
        self.timings = timings
        self.rng = rng
        self.gateway_host = gateway_host
        self.chain_code = chain_code
        self._lock = asyncio.Lock()
        self._timer: TimerHandle | None = None
        self._quiet_commit: asyncio.Task[None] | None = None
        self._closed = False
        #: Called after each successful write with the number of processed items it covers and
        #: the seconds since the previous one (metrics: the processing time of a batch).
        self.listeners = listeners if listeners is not None else []
        self._since = clock.monotonic()
        #: Where a permanent store error of a timed commit goes (nobody awaits that commit):
        #: the stream ends with it (set by the stream to its iteration's ``fail``).
        self.on_fatal: Callable[[CheckpointError], None] | None = None

    async def load(self, *other_ids: str) -> Checkpoint | None:
        """The stored checkpoint (under the stream's id, else under an earlier id of the same
        stream, which is then written under the current one)."""
        checkpoint = await self._call(self.store.load(self.stream_id))
        if checkpoint is not None:
            return checkpoint
        for old_id in other_ids:
            checkpoint = await self._call(self.store.load(old_id))
            if checkpoint is not None:
                _log.info("stream %s: moved its checkpoint from id %s", self.stream_id, old_id)
                await self._call(self.store.save(self.stream_id, checkpoint))
                return checkpoint
        return None

    # --- writes ---------------------------------------------------------------------------------

    async def commit(self, *, force: bool = False) -> None:
        """Write what was processed (``force``: write even if nothing was, e.g. a completion)."""
        async with self._lock:
            commits = self.commits
            if not commits.pending and not force:
                return
            checkpoint, count = commits.take(self.clock.time())
            checkpoint = self._described(checkpoint)
            self._arm()
            try:
                await self._call(self.store.save(self.stream_id, checkpoint))
            except BaseException:
                commits.write_failed(count)
                raise
            commits.write_succeeded(checkpoint)
        if count and self.listeners:
            now = self.clock.monotonic()
            seconds, self._since = now - self._since, now
            for listener in self.listeners:
                listener(count, seconds)

    async def commit_due(self) -> None:
        """A commit is due (the batch is full, or the interval passed). A transient failure is
        logged and retried at the next due point; once a whole batch is waiting on it, retried
        here with backoff until it succeeds (handing out stops meanwhile)."""
        attempt = 0
        while True:
            try:
                await self.commit()
                return
            except CheckpointUnavailableError as exc:
                attempt += 1
                if not self.commits.blocked:
                    _log.warning("stream %s: a checkpoint commit failed: %s", self.stream_id, exc)
                    return
                delay = backoff_delay(attempt, self.timings, self.rng)
                _log.warning(
                    "stream %s: a checkpoint commit failed (%s); %d processed events wait for "
                    "it: retrying in %.3g s",
                    self.stream_id,
                    exc,
                    self.commits.dirty,
                    delay,
                )
                await self.clock.sleep(delay)

    async def commit_quietly(self) -> None:
        """Commit, keeping a transient failure for the next commit (a rotation, a timer)."""
        try:
            await self.commit(force=True)
        except CheckpointUnavailableError as exc:
            _log.warning("stream %s: a checkpoint commit failed: %s", self.stream_id, exc)

    def _described(self, checkpoint: Checkpoint) -> Checkpoint:
        # The gateway host and chain code beside the stream id (never a key): what
        # `ohip-stream checkpoint show` lists.
        return dataclasses.replace(
            checkpoint, gateway_host=self.gateway_host, chain_code=self.chain_code
        )

    async def _call(self, operation: Awaitable[_T]) -> _T:
        """Await a store operation. A :class:`CheckpointError` is the store's own verdict
        (transient or not); anything else a store raises (an ``OSError`` of a store written by
        the user, say) is taken as transient: retried with backoff, the stream handing out no
        more than one batch past the last successful commit meanwhile."""
        try:
            return await operation
        except CheckpointError:
            raise
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise CheckpointUnavailableError(
                f"the checkpoint store {type(self.store).__name__} failed: "
                f"{redact(str(exc)) or type(exc).__name__}"
            ) from exc

    # --- the interval timer -------------------------------------------------------------------

    def start(self) -> None:
        """Commit by time from now on (every ``interval`` seconds at most)."""
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.commits.due_at = self.commits.every
        if not self._closed:
            self._timer = self.clock.call_later(self.interval, self._interval_passed)

    def _interval_passed(self) -> None:
        # The interval passed since the last commit: the next processed event commits, and
        # what was processed while the stream is quiet is committed now.
        self._timer = None
        self.commits.interval_passed()
        busy = self._quiet_commit is not None and not self._quiet_commit.done()
        if self.commits.pending and not self._lock.locked() and not busy and not self._closed:
            self._quiet_commit = asyncio.ensure_future(self._timed_commit())

    async def _timed_commit(self) -> None:
        try:
            await self.commit_quietly()
        except CheckpointError as exc:  # permanent (a vanished file, a stale fencing epoch)
            _log.error("stream %s: a checkpoint commit failed for good: %s", self.stream_id, exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    async def stop(self) -> None:
        """No more timed commits; wait for one under way."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        quiet = self._quiet_commit
        if quiet is not None and not quiet.done():
            await asyncio.wait({quiet})
