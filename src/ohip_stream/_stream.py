"""``EventStream``: one OHIP stream (gateway, chain code, application key), consumed for as long
as the caller wants, across token expiry, maintenance, network drops and lockouts.

A thin shell over small parts::

    Connector (connections one after another: gap, budget, policy)
      Session (one connection; its transport's data_received is the only reader)
        -> Buffer (bounded in frames and bytes; pauses the socket when full)
    caller: async for event in stream
        <- Buffer: validate the frame, Resume (de-duplicate, gaps, resets), hand it out
        -> Commits / Checkpointer: processed when the next one is asked; committed in batches

Nothing is acknowledged to the server (OHIP has no acknowledgement); the checkpoint of the last
processed offset IS the acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import AsyncGeneratorType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

from ohip_stream._buffer import Buffer
from ohip_stream._checkpointing import Checkpointer
from ohip_stream._checkpoints import CheckpointStore, MemoryCheckpointStore
from ohip_stream._clock import Clock, SystemClock, wait_done
from ohip_stream._commits import Commits
from ohip_stream._config import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    InvalidHandler,
    StreamConfig,
    UpgradeGate,
    build_config,
    take_guard,
)
from ohip_stream._connector import Connector, key_budget
from ohip_stream._exceptions import ConfigurationError, OhipError, TransportError
from ohip_stream._guard import StreamGuard
from ohip_stream._iteration import Iteration
from ohip_stream._lifecycle import Lifecycle, StreamState, Wait
from ohip_stream._logging import get_logger, install_redaction
from ohip_stream._net import legacy_stream_id, stream_id_for
from ohip_stream._resume import Resume
from ohip_stream._snapshot import StreamSnapshot, take_snapshot
from ohip_stream._stats import StreamStats
from ohip_stream._timings import Timings

if TYPE_CHECKING:
    import ssl as ssl_module

    from typing_extensions import Unpack

    from ohip_stream._models import Event
    from ohip_stream._settings import StreamOverrides

__all__ = ["EventStream", "InvalidHandler", "StreamStats", "stream_id_for"]

_log = get_logger("ohip_stream.stream")


class EventStream:
    """Consume one OHIP stream: ``async with EventStream(...) as stream: async for event in
    stream``.

    The constructor checks every argument (a bad one raises :class:`ConfigurationError` naming
    it); ``__aenter__`` takes the one-consumer guard (no network I/O); the first ``__anext__``
    connects. Fatal errors come out of ``__anext__``. An event counts as processed when the
    next one is asked for, when :meth:`commit` is called, or when the block is left without an
    exception (a ``break`` and then the end of the block commit the last event handed out; an
    exception leaving the block does not, so that event comes again next time). Iterating again
    after a ``break`` goes on where it stopped. :meth:`aclose` is the same as leaving the block.

    Args:
        gateway_url: The environment's gateway URL, ``https://<gateway host>``.
        app_key: The application key from the developer portal (sent raw in
            ``connection_init``; only its SHA-256 goes in the URL).
        chain_code: The OPERA chain code of the stream.
        auth: A token provider: :class:`OAuthClientCredentials`, :class:`OAuthPassword` or
            :class:`StaticToken`. The caller closes it (``async with auth``).
        checkpoints: Where processed offsets are kept (:class:`SQLiteCheckpointStore`,
            :class:`MemoryCheckpointStore`...). ``None``: in memory, with a WARNING that a
            restart will not resume. The caller closes it.
        offset: Replay from this offset (inclusive) on the first subscription, overriding the
            checkpoint. Digits as a string, e.g. ``"193"``.
        start_at_highest: Start at the newest event, skipping the backlog (loses events: never
            the default). Exclusive with ``offset``.
        delta: Ask for changed elements only in ``detail``.
        hotel_codes: Only events of these hotels (a list, or a comma-separated string);
            meant for replays and debugging. Gap detection is off with a filter.
        timings: Pings, rotation, gaps, lockouts, backoff, timeouts: see :class:`Timings`.
        ssl: How to verify the gateway's certificate: ``None`` (the system's trust store), the
            path of a PEM CA file, or an ``ssl.SSLContext``.
        proxy: An HTTP CONNECT proxy, ``http://[user:password@]host:port``.
        max_message_size: The largest frame accepted, in bytes (``None``: no limit); a larger
            one closes the connection with 1009, and the same offset failing again ends the
            stream with :class:`MessageTooLargeError`.
        max_buffer_bytes: The most bytes of received frames held for the caller; above it (or
            above ``queue_size`` frames) the socket is not read until the caller catches up.
        queue_size: The most frames held for the caller.
        on_invalid: An event that does not fit the model: ``"raise"``
            :class:`EventValidationError` (the next ``__anext__`` goes on after it), ``"skip"``
            it with a WARNING, or call ``on_invalid(raw_frame, error)`` (sync or async) and go
            on; a callback that raises is called again for the same frame by the next
            ``__anext__``, and the checkpoint never passes that frame before it returned.
        on_offset_reset: When the gateway's offsets go back with events never seen (an offset
            reset): ``"deliver"`` them (logged at WARNING and counted in ``stats.resets``) or
            ``"raise"`` a :class:`ProtocolError`.
        dedup_window: How many ``uniqueEventId`` values are remembered at least (default: twice
            ``queue_size``, at least 10,000).
        commit_every: Commit after this many processed events.
        commit_interval: Commit at most this many seconds after an event was processed.
        guard_scope: ``"stream"``: one consumer per stream on this host; ``"app_key"``: one
            consumer per application key (a stream-scoped consumer of any of its chains is then
            refused too).
        lock_dir: The directory of the host-wide guard and records; by default one private to
            this OS user. Consumers run by different OS users share one that an administrator
            created (see the how-to on running as a service).
        standby: Wait while ``query { connection { status } }`` says another consumer is
            Active, then subscribe (Oracle's active/standby pattern).
        allow_insecure: Allow a plain ``http://`` gateway that is not on this machine.
        first_contact_tries: Before the stream's first subscription, a network failure (name
            not found, connection refused, TLS handshake) ends it after this many tries with
            one line naming the gateway; after a first subscription, network failures are
            retried forever.
        upgrade_gate: An async function awaited before every WebSocket upgrade (the first,
            each reconnect, each rotation), after the gap and this process's upgrade budget;
            the upgrade waits until it returns: a budget shared beyond this process (a fleet
            passes one kept in its database). If it returns a function, that is called when the
            upgrade request leaves. A stop cancels a wait in it; an error it raises ends the
            stream, so it retries transient failures itself.
    """

    def __init__(
        self,
        *,
        gateway_url: str,
        app_key: str,
        chain_code: str,
        auth: Any,
        checkpoints: CheckpointStore | None = None,
        offset: str | None = None,
        start_at_highest: bool = False,
        delta: bool = False,
        hotel_codes: Sequence[str] | str | None = None,
        timings: Timings | None = None,
        ssl: ssl_module.SSLContext | str | Path | None = None,
        proxy: str | None = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        queue_size: int = 1000,
        on_invalid: Literal["raise", "skip"] | InvalidHandler = "raise",
        on_offset_reset: Literal["deliver", "raise"] = "deliver",
        dedup_window: int | None = None,
        commit_every: int = 1000,
        commit_interval: float = 1.0,
        guard_scope: Literal["stream", "app_key"] = "stream",
        lock_dir: str | Path | None = None,
        standby: bool = False,
        allow_insecure: bool = False,
        first_contact_tries: int = 3,
        upgrade_gate: UpgradeGate | None = None,
    ) -> None:
        install_redaction()
        self._config: StreamConfig = build_config(
            gateway_url=gateway_url,
            app_key=app_key,
            chain_code=chain_code,
            auth=auth,
            checkpoints=checkpoints,
            offset=offset,
            start_at_highest=start_at_highest,
            delta=delta,
            hotel_codes=hotel_codes,
            timings=Timings() if timings is None else timings,
            ssl=ssl,
            proxy=proxy,
            max_message_size=max_message_size,
            max_buffer_bytes=max_buffer_bytes,
            queue_size=queue_size,
            on_invalid=on_invalid,
            on_offset_reset=on_offset_reset,
            dedup_window=dedup_window,
            commit_every=commit_every,
            commit_interval=commit_interval,
            guard_scope=guard_scope,
            lock_dir=lock_dir,
            standby=standby,
            allow_insecure=allow_insecure,
            first_contact_tries=first_contact_tries,
            upgrade_gate=upgrade_gate,
        )
        #: The stream's id: a short digest of gateway host, chain code and key, safe to print.
        self.stream_id = self._config.stream_id
        #: The stream's counters.
        self.stats = StreamStats()
        self._life = Lifecycle()
        self._clock: Clock = SystemClock()
        self._rng = random.Random()
        self._owned: list[Any] = []
        self._guard: StreamGuard | None = None
        self._iteration: Iteration | None = None
        self._connector: Connector | None = None
        self._task: asyncio.Task[None] | None = None
        self._generator: AsyncGeneratorType[Event, None] | None = None
        self._entered = False
        self._closed = False
        self._signals: list[int] = []
        self._commit_listeners: list[Callable[[int, float], None]] = []

    # --- construction from the environment ----------------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Unpack[StreamOverrides]) -> EventStream:
        """An ``EventStream`` configured from ``OHIP_*`` variables (and a ``.env`` file).

        The token provider and the checkpoint store it creates are owned by the stream and
        closed with it. Keyword arguments override what the environment says.
        """
        from ohip_stream._settings import OhipSettings

        return OhipSettings.load().event_stream(**overrides)

    def _adopt(self, *resources: Any) -> None:
        """Resources made for the stream (by ``from_env``) that it closes when it closes."""
        self._owned.extend(resources)

    def _use_clock(self, clock: Clock, rng: random.Random | None = None) -> None:
        """Test hook (``ohip_stream.testing.use_clock``): time and randomness, before entering."""
        if self._entered:
            raise ConfigurationError("the clock must be set before the stream is entered")
        self._clock = clock
        if rng is not None:
            self._rng = rng

    # --- what it is doing -----------------------------------------------------------------------

    @property
    def timings(self) -> Timings:
        """The stream's :class:`Timings`."""
        return self._config.timings

    @property
    def state(self) -> StreamState:
        """Where the stream stands: connecting, live, completing, draining, waiting, stopping
        or closed."""
        return self._life.state

    @property
    def waiting(self) -> Wait | None:
        """While ``state`` is waiting: what for (``reason``), until when (``until``, epoch
        seconds) and why (``detail``); None otherwise."""
        return self._life.wait if self._life.state is StreamState.WAITING else None

    def add_commit_listener(self, listener: Callable[[int, float], None]) -> Callable[[], None]:
        """Call ``listener(count, seconds)`` after each successful checkpoint write: how many
        processed events it covers, and the seconds since the previous write (what metrics
        record as the processing time of a batch). Returns a function that removes it."""
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    def snapshot(self) -> StreamSnapshot:
        """What the stream is doing and how far it got, now (for metrics and health checks)."""
        return take_snapshot(
            self._config,
            state=self._life.state,
            waiting=self.waiting,
            stats=self.stats,
            iteration=self._iteration,
            connector=self._connector,
            clock=self._clock,
        )

    # --- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> EventStream:
        if self._entered:
            raise ConfigurationError("this EventStream was already entered; make a new one")
        config = self._config
        self._guard = take_guard(config)
        self._entered = True
        try:
            self._assemble(config)
        except BaseException:
            self._guard.release()
            raise
        if config.checkpoints is None:
            _log.warning(
                "stream %s has no checkpoint store: processed offsets are kept in memory and a "
                "restart will not resume (pass checkpoints=SQLiteCheckpointStore(path))",
                self.stream_id,
            )
        _log.info("stream %s ready (chain %s)", self.stream_id, config.chain_code)
        return self

    def _assemble(self, config: StreamConfig) -> None:
        clock = self._clock
        commits = Commits(config.commit_every)
        checkpointer = Checkpointer(
            config.checkpoints if config.checkpoints is not None else MemoryCheckpointStore(),
            config.stream_id,
            commits,
            clock=clock,
            interval=config.commit_interval,
            timings=config.timings,
            rng=self._rng,
            gateway_host=config.gateway.netloc,
            chain_code=config.chain_code,
            listeners=self._commit_listeners,
        )
        buffer = Buffer(config.queue_size, config.max_buffer_bytes, clock.monotonic)
        resume = Resume(window=config.dedup_window, filtered=config.filtered)
        self._connector = Connector(
            config,
            clock=clock,
            rng=self._rng,
            life=self._life,
            buffer=buffer,
            resume=resume,
            stats=self.stats,
            checkpointer=checkpointer,
            guard=self._guard,
            budget=key_budget(config, self._guard, clock),
        )
        self._iteration = Iteration(
            config,
            life=self._life,
            buffer=buffer,
            resume=resume,
            stats=self.stats,
            checkpointer=checkpointer,
            start=self._start,
        )
        checkpointer.on_fatal = self._iteration.fail_now

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A clean exit (break included) commits the last event handed out; an exception leaving
        # the block does not, so that event comes again next time.
        await self._close(commit_handed=exc_type is None)

    async def aclose(self) -> None:
        """Complete, drain, commit and release the stream, as leaving the block does."""
        await self._close(commit_handed=True)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    def __anext__(self) -> Awaitable[Event]:
        """The next event: what ``async for`` gets, for direct use (``anext(stream)``)."""
        return self._events().__anext__()

    def _events(self) -> AsyncGenerator[Event, None]:
        # One iteration at a time: a loop left with break goes on where it stopped; one ended by
        # an exception starts over from the stream's state.
        generator = self._generator
        if generator is None or generator.ag_frame is None:
            if self._iteration is None:
                raise ConfigurationError("use the stream inside 'async with EventStream(...)'")
            generator = cast("AsyncGeneratorType[Event, None]", self._iteration.events())
            self._generator = generator
        return generator

    def _start(self) -> None:
        assert self._connector is not None
        assert self._iteration is not None
        self._task = asyncio.create_task(self._run(), name=f"ohip-stream-{self.stream_id}")
        self._iteration.checkpointer.start()

    async def _run(self) -> None:
        assert self._connector is not None
        assert self._iteration is not None
        try:
            checkpoint = await self._iteration.restore(self._legacy_ids())
            if checkpoint is not None and checkpoint.offset is not None:
                _log.info("stream %s resumes after offset %s", self.stream_id, checkpoint.offset)
            await self._connector.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # delivered to the caller from __anext__
            error = (
                exc
                if isinstance(exc, OhipError)
                else TransportError(f"the stream failed unexpectedly: {type(exc).__name__}")
            )
            if error is not exc:
                error.__cause__ = exc
            _log.error("stream %s stopped: %s", self.stream_id, error)
            self._iteration.fail(error)

    def _legacy_ids(self) -> tuple[str, ...]:
        config = self._config
        old = legacy_stream_id(config.gateway.url, config.chain_code, config.app_key)
        return () if old is None else (old,)

    def request_stop(self) -> None:
        """Ask the iteration to end (call from the event loop's thread): ``async for`` ends at
        the next event, the subscription is completed at once and the stream never subscribes
        again; leaving the block drains, commits and releases."""
        if self._life.stopping:
            return
        self._life.to(StreamState.STOPPING)
        if self._connector is not None:
            self._connector.stop()
        if self._iteration is not None:
            # Frames not handed out will not be: they come again next time. Clearing them
            # also lets a paused socket read on to the server's close.
            self._iteration.buffer.clear_frames()
            self._iteration.buffer.wake()

    def install_signal_handlers(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Stop gracefully on SIGTERM/SIGINT (complete, drain, commit). Unix only."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
                self._signals.append(sig)

    async def commit(self) -> None:
        """Count the event handed out last as processed and write the checkpoint now."""
        if self._iteration is not None:
            self._iteration.commits.processed()
            await self._iteration.checkpointer.commit(force=True)

    async def _close(self, *, commit_handed: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._wind_down(commit_handed)
        finally:
            self._life.to(StreamState.CLOSED)
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)
            if self._guard is not None:
                self._guard.release()
            for resource in reversed(self._owned):
                closer = getattr(resource, "aclose", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()
            _log.info("stream %s closed", self.stream_id)

    async def _wind_down(self, commit_handed: bool) -> None:
        iteration = self._iteration
        if iteration is None:
            return
        if commit_handed:
            iteration.commits.processed()
        iteration.commits.handed = None
        generator, self._generator = self._generator, None
        if generator is not None and generator.ag_frame is not None and not generator.ag_running:
            await generator.aclose()  # a loop left with break leaves its iteration suspended
        self.request_stop()
        # Frames not handed out were not processed: they come again next time.
        iteration.buffer.clear_frames()
        await self._stop_task()
        await iteration.checkpointer.stop()
        commits = iteration.commits
        if commits.pending or commits.checkpoint.completed_at is not None:
            await iteration.checkpointer.commit(force=True)

    async def _stop_task(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        try:
            await wait_done(task, self._clock, self._config.timings.drain_timeout + 5)
        finally:
            if not task.done():
                if self._connector is not None and self._connector.session is not None:
                    self._connector.session.abort()
                task.cancel()
                # Never raises the task's outcome; a cancellation of our own still propagates.
                await asyncio.wait({task})

    def __repr__(self) -> str:
        config = self._config
        return (
            f"EventStream(stream_id={self.stream_id!r}, chain_code={config.chain_code!r}, "
            f"gateway={config.gateway.netloc!r}, state={self._life.state.value!r})"
        )
