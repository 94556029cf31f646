"""``Fleet``: many streams on many workers, exactly one consumer each.

One worker (one process) runs a control loop and one task per stream it owns::

    every renew_interval: heartbeat; renew every lease (each renewal moves the stream's fence
        time to the lease's expiry minus the safety margin); release the leases of streams that
        ended; plan (balanced or greedy, see _assign); hand over the surplus (the stream
        completes, drains, commits, then the lease is released); claim free streams and start
        them (each upgrade, start or not, takes a slot in the fleet's upgrade budget)
    watchdog, every margin / 4, and each stream's task before each event: a stream past its
        fence time stops itself (self-fencing), completing its subscription, aborted after
        margin / 2, so that the next owner never meets a live connection

A stale epoch (another worker took the stream while this one was paused or cut off) is caught
by the fenced checkpoint store: the stream stops at once and hands out nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import socket
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ohip_stream._exceptions import ConfigurationError, OhipError
from ohip_stream._logging import get_logger, install_redaction
from ohip_stream._timings import Timings
from ohip_stream.fleet._assign import plan
from ohip_stream.fleet._errors import LeaseStoreError, StaleEpochError
from ohip_stream.fleet._fenced import FencedCheckpointStore
from ohip_stream.fleet._file import load_streams_file
from ohip_stream.fleet._model import Lease, StreamSpec
from ohip_stream.fleet._runner import (
    Handler,
    Owned,
    StreamFactory,
    claim_then,
    consume,
    positive_seconds,
)
from ohip_stream.fleet._sink import sink_or_handler
from ohip_stream.fleet._stats import FleetStats
from ohip_stream.fleet._store import LeaseStore, open_lease_store
from ohip_stream.sinks._protocol import Sink

__all__ = ["Fleet"]

_log = get_logger("ohip_stream.fleet")


class Fleet:
    """Run the fleet's streams in this process: ``async with Fleet(url, handler=h) as fleet:
    await fleet.run()``.

    Args:
        database_url: ``sqlite:///fleet.db`` (one host) or ``postgresql://user@host/db``.
        streams: A TOML streams file (written to the database at start, as ``fleet sync``
            does), a list of :class:`StreamSpec`, or ``None`` to run what the database holds.
        handler: ``handler(stream: StreamSpec, event: Event)``, sync or async: per stream,
            events in order, one at a time, committed (in batches) after it returns.
        sink: Instead of a handler, an ``ohip_stream.sinks`` sink: each commit delivers events.
        worker_id: This worker's name in the database (default: host, pid and a random part).
        lease_time: Seconds a lease lasts without renewal (failover takes about this long).
        renew_interval: Seconds between renewals (default a third of ``lease_time``).
        safety_margin: A stream stops itself this long before its lease's expiry if it could
            not renew (default a quarter of ``lease_time``).
        assignment: ``"balanced"`` (a fair share each, with hysteresis) or ``"greedy"``.
        max_streams: The most streams this worker runs.
        max_concurrency: The most handler calls running at once across streams.
        min_stay: A stream taken less than this many seconds ago is not handed over to balance.
        commit_every / commit_interval: The checkpoint batch (see ``EventStream``).
        timings / lock_dir / stream_options: Passed to each ``EventStream``.
        upgrade_budget: Upgrades per window per application key for the whole fleet (protocol
            §10: 150 per 120 s); ``budget_pad`` seconds are added to the window, since an
            upgrade happens a moment after its slot is taken.
        env: Where the secrets' variables are read (default ``os.environ``).
        retry_failed_after: A stream that failed in this worker is not claimed here again for
            this long (another worker may take it).
        prune: With ``streams``, delete from the database the streams no longer listed.
        settle: Seconds between joining and the first claim, so that workers started together
            see each other (default ``renew_interval``).
    """

    def __init__(
        self,
        database_url: str | LeaseStore,
        *,
        handler: Handler | None = None,
        sink: Sink | None = None,
        streams: str | Path | Sequence[StreamSpec] | None = None,
        worker_id: str | None = None,
        lease_time: float = 30.0,
        renew_interval: float | None = None,
        safety_margin: float | None = None,
        assignment: Literal["balanced", "greedy"] = "balanced",
        max_streams: int | None = None,
        max_concurrency: int = 64,
        min_stay: float = 300.0,
        commit_every: int = 100,
        commit_interval: float = 1.0,
        timings: Timings | None = None,
        lock_dir: str | Path | None = None,
        stream_options: Mapping[str, Any] | None = None,
        upgrade_budget: tuple[int, float] = (150, 120.0),
        budget_pad: float = 2.0,
        env: Mapping[str, str] | None = None,
        retry_failed_after: float = 30.0,
        prune: bool = False,
        settle: float | None = None,
        telemetry: Any = None,
    ) -> None:
        install_redaction()
        if assignment not in ("balanced", "greedy"):
            raise ConfigurationError(f"assignment is 'balanced' or 'greedy', not {assignment!r}")
        self.lease_time = positive_seconds("lease_time", lease_time)
        self.renew_interval = positive_seconds("renew_interval", renew_interval or lease_time / 3)
        self.safety_margin = positive_seconds("safety_margin", safety_margin or lease_time / 4)
        if self.renew_interval + self.safety_margin >= self.lease_time:
            raise ConfigurationError(
                "renew_interval + safety_margin must stay below lease_time (a renewal must be "
                f"able to happen before the fence): got {self.renew_interval:g} + "
                f"{self.safety_margin:g} >= {self.lease_time:g}"
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be 1 or more, got {max_concurrency}")
        self.store: LeaseStore = (
            open_lease_store(database_url) if isinstance(database_url, str) else database_url
        )
        self._owns_store = isinstance(database_url, str)
        self._sinks, self.handler = sink_or_handler(sink, self.store, handler)
        self._streams_source = streams
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.balanced = assignment == "balanced"
        self.max_streams = max_streams
        self.min_stay = float(min_stay)
        self.retry_failed_after = float(retry_failed_after)
        self.prune = prune
        self.settle = self.renew_interval if settle is None else max(0.0, float(settle))
        options: dict[str, Any] = {
            "commit_every": commit_every,
            "commit_interval": commit_interval,
            "timings": timings,
            "lock_dir": lock_dir,
            **(stream_options or {}),
        }
        count, window = upgrade_budget
        self._factory = StreamFactory(
            env=os.environ if env is None else env,
            options=options,
            upgrade_budget=(int(count), float(window) + float(budget_pad)),
            telemetry=telemetry,
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._rng = random.Random()
        #: The streams this worker holds, by name.
        self.owned: dict[str, Owned] = {}
        #: The fleet's counters in this worker.
        self.stats = FleetStats()
        self._failed_until: dict[str, float] = {}
        # Streams that ended here, by name: the epoch whose lease is to be released.
        self._releases: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._stopping_since: float | None = None
        # Made when run() starts, set once it returned (aclose waits for it).
        self._run_done: asyncio.Event | None = None
        self._entered = False
        self._closed = False
        self._signals: list[int] = []

    # --- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        if self._entered:
            raise ConfigurationError("this Fleet was already entered; make a new one")
        self._entered = True
        await self.store.setup()
        specs = self._specs_given()
        if specs is not None:
            result = await self.store.sync_streams(specs, prune=self.prune)
            _log.info(
                "fleet streams synced: %d added, %d updated, %d removed, %d unchanged",
                len(result.added),
                len(result.updated),
                len(result.removed),
                len(result.unchanged),
            )
        await self.store.heartbeat(
            self.worker_id, socket.gethostname(), os.getpid(), self.lease_time
        )
        _log.info("fleet worker %s joined (%s)", self.worker_id, self.store.where)
        return self

    def _specs_given(self) -> list[StreamSpec] | None:
        source = self._streams_source
        if source is None:
            return None
        if isinstance(source, (str, Path)):
            return load_streams_file(source)
        return list(source)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every stream (complete, drain, commit), release the leases, leave; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._run_done is not None:
                # run() is under way (in another task): it stops everything on its way out.
                self._stop.set()
                await self._run_done.wait()
            else:
                await self._shutdown()
        finally:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)
            await self._factory.aclose()
            if self._owns_store:
                await self.store.aclose()

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after every stream completed, drained, committed and
        released its lease (call from the event loop's thread)."""
        self._stop.set()

    def install_signal_handlers(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Stop gracefully on SIGTERM/SIGINT. Unix only."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
                self._signals.append(sig)

    # --- the control loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`request_stop` (or SIGTERM with :meth:`install_signal_handlers`)."""
        if not self._entered or self._closed:
            raise ConfigurationError("use the fleet inside 'async with Fleet(...)'")
        watchdog = asyncio.create_task(self._watch(), name=f"ohip-fleet-watch-{self.worker_id}")
        self._run_done = asyncio.Event()
        try:
            # Workers started together see each other before the first plan (fair shares from
            # the start, instead of a first worker taking everything and handing it over).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settle)
            while not self._stop.is_set():
                await self._round_safely(plan_moves=True)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.renew_interval)
            await self._shutdown()
        finally:
            watchdog.cancel()
            await asyncio.wait({watchdog})
            self._run_done.set()

    async def _round_safely(self, *, plan_moves: bool) -> None:
        self._reap()
        # Each step is bounded by the renew interval: a hung database must not keep the loop
        # from the next renewal (the watchdog fences meanwhile), and a slow plan must not keep
        # the renewals waiting.
        await self._step(self._keep_alive())
        await self._step(self._release_ended())
        if plan_moves and not self._stop.is_set():
            await self._step(self._rebalance())

    async def _step(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            await asyncio.wait_for(step, self.renew_interval)
        except (LeaseStoreError, asyncio.TimeoutError) as exc:
            self.stats.database_errors += 1
            _log.warning(
                "fleet worker %s: the database failed a round (%s): streams whose lease cannot "
                "be renewed in time stop themselves",
                self.worker_id,
                str(exc) or "no answer within the renew interval",
            )

    async def _keep_alive(self) -> None:
        """The heartbeat, and every lease renewed in one round trip."""
        await self.store.heartbeat(
            self.worker_id, socket.gethostname(), os.getpid(), self.lease_time
        )
        owned = [o for o in self.owned.values() if not o.lost]
        if not owned:
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        left = await self.store.renew_many(
            self.worker_id, {o.spec.name: o.epoch for o in owned}, self.lease_time
        )
        for o in owned:
            remaining = left.get(o.spec.name)
            if remaining is None:
                _log.warning(
                    "fleet worker %s: the lease of %s (epoch %d) is not ours any more: stopping "
                    "it at once",
                    self.worker_id,
                    o.spec.name,
                    o.epoch,
                )
                self._fence(o)
            else:
                o.fence_at = began + remaining - self.safety_margin

    def _reap(self) -> None:
        """Forget the streams whose task ended (no database needed); their leases, unless lost,
        wait in ``_releases`` until the database takes the release."""
        for name, o in list(self.owned.items()):
            if o.task is None or not o.task.done():
                continue
            del self.owned[name]
            self.stats.stale_rejections += o.checkpoints.rejected
            error = None if o.task.cancelled() else o.task.exception()
            if error is not None and not isinstance(error, StaleEpochError):
                self.stats.failures += 1
                loop = asyncio.get_running_loop()
                self._failed_until[name] = loop.time() + self.retry_failed_after
                _log.error(
                    "fleet worker %s: stream %s stopped: %s",
                    self.worker_id,
                    name,
                    error,
                    exc_info=error if not isinstance(error, OhipError) else None,
                )
            if not (o.lost or o.checkpoints.stale):
                self._releases[name] = o.epoch

    async def _release_ended(self) -> None:
        for name, epoch in list(self._releases.items()):
            released = await self.store.release(name, self.worker_id, epoch)
            self._releases.pop(name, None)  # released, or not ours any more: nothing to do
            if released:
                self.stats.releases += 1
                _log.info("fleet worker %s released %s", self.worker_id, name)

    async def _rebalance(self) -> None:
        store = self.store
        specs = {spec.name: spec for spec in await store.streams()}
        leases = {lease.stream: lease for lease in await store.leases()}
        workers = [w.worker_id for w in await store.workers()]
        now = await store.now()
        loop = asyncio.get_running_loop()
        excluded = {n for n, until in self._failed_until.items() if until > loop.time()}
        moves = plan(
            me=self.worker_id,
            streams=sorted(specs),
            leases=leases,
            workers=workers,
            mine=set(self.owned),
            balanced=self.balanced,
            max_streams=self.max_streams,
            min_stay=self.min_stay,
            now=now,
            excluded=excluded,
            grace=self.renew_interval,
        )
        for name in moves.release:
            o = self.owned.get(name)
            if o is not None and not o.stopping:
                _log.info("fleet worker %s hands %s over (balance)", self.worker_id, name)
                self.stats.handovers += 1
                self._stop_gracefully(o)
        if self._stop.is_set():
            return
        began, me, ttl = loop.time(), self.worker_id, self.lease_time
        # The round's claims at once; each stream starts as soon as its claim succeeded.
        starts = {
            name: functools.partial(self._claimed, began, specs[name]) for name in moves.claim
        }
        await asyncio.gather(*(claim_then(store, n, me, ttl, go) for n, go in starts.items()))

    def _claimed(self, began: float, spec: StreamSpec, lease: Lease) -> None:
        # Within the round or after it gave up: run the stream, or release it when stopping.
        if spec.name not in self.owned and self._stop.is_set():
            self._releases[spec.name] = lease.epoch
        elif spec.name not in self.owned:
            self._start(spec, lease, began)

    def _start(self, spec: StreamSpec, lease: Lease, began: float) -> None:
        self.stats.claims += 1
        remaining = lease.remaining if lease.remaining is not None else self.lease_time

        def on_stale(exc: StaleEpochError) -> None:
            _log.warning("fleet worker %s: %s", self.worker_id, exc)
            o = self.owned.get(spec.name)
            if o is not None and o.epoch == lease.epoch:
                self._fence(o)

        owned = Owned(
            spec=spec,
            epoch=lease.epoch,
            checkpoints=(self._sinks.store_for if self._sinks else FencedCheckpointStore)(
                self.store, spec.name, lease.epoch, on_stale=on_stale
            ),
            fence_at=began + remaining - self.safety_margin,
        )
        owned.task = asyncio.create_task(
            consume(
                owned,
                store=self.store,
                factory=self._factory,
                handler=self.handler,
                slots=self._slots,
                rng=self._rng,
                fence=self._fence,
                stats=self.stats,
            ),
            name=f"ohip-fleet-{spec.name}",
        )
        self.owned[spec.name] = owned
        _log.info("fleet worker %s took %s (epoch %d)", self.worker_id, spec.name, lease.epoch)

    # --- stopping streams ----------------------------------------------------------------------

    def _stop_gracefully(self, o: Owned) -> None:
        """Complete, drain, commit; the lease is released once the task ended (_reap)."""
        o.stopping = True
        if o.stream is not None:
            o.stream.request_stop()

    def _fence(self, o: Owned) -> None:
        """The lease is lost or about to be: stop the stream now, never release the lease."""
        if o.lost:
            return
        o.lost = True
        o.stopping = True
        self.stats.self_fenced += 1
        if o.task is None or o.task.done():
            return
        # Cancelling lets the stream complete its subscription on the way out; if that takes
        # longer than half the margin, the second cancel aborts the connection.
        o.task.cancel()
        asyncio.get_running_loop().call_later(self.safety_margin / 2, o.cancel_task)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.safety_margin / 4)
            for o in list(self.owned.values()):
                if not o.lost and o.past_fence(loop.time()):
                    _log.warning(
                        "fleet worker %s: the lease of %s could not be renewed in time: the "
                        "stream stops itself (self-fencing)",
                        self.worker_id,
                        o.spec.name,
                    )
                    self._fence(o)

    async def _shutdown(self) -> None:
        """Every stream completes, drains and commits; then the leases go and the worker
        leaves. Leases are renewed meanwhile, so a long drain is not mistaken for a death."""
        self._stop.set()
        for o in self.owned.values():
            self._stop_gracefully(o)
        while self.owned or self._releases:
            tasks = {o.task for o in self.owned.values() if o.task is not None}
            if tasks:
                await asyncio.wait(tasks, timeout=self.renew_interval)
            await self._round_safely(plan_moves=False)
            if any(o.task is None for o in self.owned.values()) or (
                not self.owned and self._releases and self._stop_deadline_passed()
            ):
                break
        with contextlib.suppress(LeaseStoreError):
            await self.store.leave(self.worker_id)
        _log.info("fleet worker %s left", self.worker_id)

    def _stop_deadline_passed(self) -> bool:
        """While stopping, leases the database cannot take back are left to expire after one
        lease time (the streams are stopped: nothing is lost but the failover's wait)."""
        loop = asyncio.get_running_loop()
        if self._stopping_since is None:
            self._stopping_since = loop.time()
        return loop.time() - self._stopping_since > self.lease_time

    def __repr__(self) -> str:
        return (
            f"Fleet(worker_id={self.worker_id!r}, store={self.store.where!r}, "
            f"streams={len(self.owned)})"
        )
