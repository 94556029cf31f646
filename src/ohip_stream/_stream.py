"""``EventStream``: one OHIP stream (gateway, chain code, application key), consumed for as long
as the caller wants, across token expiry, maintenance, network drops and lockouts.

The pieces (protocol §4-§7)::

    pump task: token -> Connection -> subscribe -> frames -> de-duplicate -> bounded queue
               keeper task (per connection): pings, liveness, rotation before the token expires
    caller:    async for event in stream  -> marks the previous event processed -> commits

Nothing is acknowledged to the server (OHIP has no acknowledgement); the checkpoint of the last
processed offset IS the acknowledgement, written in batches and always at rotation, reconnect
and close. A restart resumes from it with an inclusive replay and drops what it already saw.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import inspect
import ipaddress
import logging
import random
import signal
import ssl as ssl_module
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import AsyncGeneratorType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never
from websockets.exceptions import ConnectionClosed

from ohip_stream._checkpoints import Checkpoint, CheckpointStore, MemoryCheckpointStore
from ohip_stream._connection import Connection
from ohip_stream._exceptions import (
    ConfigurationError,
    OhipError,
    SubscriptionError,
    TransportError,
)
from ohip_stream._guard import StreamGuard
from ohip_stream._logging import get_logger, install_redaction, register_secret
from ohip_stream._models import Event
from ohip_stream._policy import (
    Action,
    ActionKind,
    Failure,
    FailureKind,
    PolicyState,
    UpgradeBudget,
    classify_exception,
    decide,
)
from ohip_stream._protocol import (
    Complete,
    ErrorMessage,
    InvalidNext,
    Next,
    Ping,
    State,
    hash_app_key,
    subscription_url,
)
from ohip_stream._query import SubscriptionDocument, build_subscription
from ohip_stream._timings import Timings

if TYPE_CHECKING:
    from ohip_stream._auth import AccessToken, TokenProvider

__all__ = ["EventStream", "InvalidHandler", "StreamStats"]

_log = get_logger("ohip_stream._stream")

InvalidHandler = Callable[[str, Exception], Awaitable[None] | None]
"""A dead-letter callback: receives the raw frame and the validation error (sync or async)."""

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

# The stream's own task, reading while the caller is away, yields to the caller after this many
# events queued in a row. A socket read holds hundreds of frames, and websockets hands them over
# without suspending: read at once, their events would all be alive together, survive the
# garbage collector's young generation and make its full collections frequent (they cost more
# than the validation itself).
_HANDOFF_EVERY = 16

# The caller counts as away (busy with an event, or not iterating) when it asked for no event
# for this long; the stream's own task then reads ahead into the queue and answers pings.
_CALLER_AWAY = 0.05

# Who reads the subscribed connection: the caller (its iteration, _events) or the stream's own
# task (_pump_read).
_CALLER = 1
_PUMP = 2


@dataclass
class StreamStats:
    """Counters of a stream (read them while it runs, e.g. for metrics)."""

    #: Events handed to the caller.
    events: int = 0
    #: Replayed events dropped (already delivered).
    duplicates: int = 0
    #: Events that did not fit the model (dead-lettered, skipped or raised).
    invalid: int = 0
    #: Events lost upstream, detected on resume (retention or the 24-hour resume limit).
    gaps: int = 0
    #: Reconnections by cause ("1006", "4409", "network", "rotation"...).
    reconnects: dict[str, int] = field(default_factory=dict)
    #: Planned rotations before the token expired.
    rotations: int = 0
    #: 4409 lockouts waited out.
    lockouts: int = 0
    #: Offset of the last event handed to the caller.
    last_offset: str | None = None
    #: Epoch time the current connection subscribed (None while disconnected).
    connected_since: float | None = None

    def count_reconnect(self, cause: str) -> None:
        """Count one reconnection for ``cause``."""
        self.reconnects[cause] = self.reconnects.get(cause, 0) + 1


class _Buffer:
    """The bounded FIFO from the stream's own task to the caller: ``asyncio.Queue``'s
    ``put``/``get`` without its task accounting (``task_done``/``join``, unused here)."""

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._maxsize = maxsize
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()

    def qsize(self) -> int:
        return len(self._items)

    def offer(self, item: Any) -> bool:
        """Append ``item`` if there is room (waking a waiting ``get``); whether it was."""
        items = self._items
        if len(items) >= self._maxsize:
            return False
        items.append(item)
        if self._getters:
            _wake_one(self._getters)
        return True

    def put_nowait(self, item: Any) -> None:
        if not self.offer(item):
            raise asyncio.QueueFull

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if self._putters:
            _wake_one(self._putters)
        return item

    async def put(self, item: Any) -> None:
        while len(self._items) >= self._maxsize:
            await _wait_turn(self._putters, self._items.__len__, self._maxsize)
        self.put_nowait(item)

    async def get(self) -> Any:
        while not self._items:
            await _wait_turn(self._getters, self._items.__len__, None)
        return self.get_nowait()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake_one(waiters: collections.deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


async def _wait_turn(
    waiters: collections.deque[asyncio.Future[None]],
    size: Callable[[], int],
    maxsize: int | None,
) -> None:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except BaseException:
        waiter.cancel()
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
        # A wake-up this waiter took with it goes to the next one (as asyncio.Queue does).
        ready = size() < maxsize if maxsize is not None else size() > 0
        if ready and waiter.done() and not waiter.cancelled():
            _wake_one(waiters)
        raise


class _Live:
    """The subscribed connection being read: by the caller itself while it asks for events
    (no hand-over between tasks per event), or by the stream's own task while it is away."""

    __slots__ = (
        "conn",
        "ended",
        "first",
        "next_buffered",
        "outcome",
        "owner",
        "receive",
        "receive_event",
        "recv",
    )

    def __init__(self, conn: Connection) -> None:
        assert conn.ws is not None
        self.conn = conn
        self.recv = conn.ws.recv
        self.next_buffered = conn.next_buffered
        self.receive_event = conn.protocol.receive_event
        self.receive = conn.protocol.receive
        self.owner: int | None = None
        self.ended = False
        self.outcome: BaseException | None = None
        self.first = True


class _Fatal:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stop:
    __slots__ = ()


_STOP = _Stop()


class _Retry(Exception):
    """Internal: the connection ended; the policy says to connect again after ``action.delay``."""

    def __init__(self, action: Action) -> None:
        super().__init__(action.cause)
        self.action = action


class _Planned(Exception):
    """Internal: the connection ended after our ``complete`` (rotation or stop)."""


def stream_id_for(gateway_url: str, chain_code: str, app_key: str) -> str:
    """A short non-reversible digest of (normalized gateway host, chain code, application key)."""
    return _digest(_gateway_host(gateway_url), chain_code.strip().upper(), app_key.strip())


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def _gateway_host(gateway_url: str) -> str:
    try:
        parts = urlsplit(gateway_url.strip())
        port = parts.port
    except ValueError:
        # Not a URL (bad brackets, port): the text itself; __aenter__ refuses it clearly.
        return gateway_url.strip().lower()
    host = (parts.hostname or "").lower()
    default_port = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    return host if port in (None, default_port) else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EventStream:
    """Consume one OHIP stream: ``async with EventStream(...) as stream: async for event in
    stream``.

    ``__aenter__`` validates the configuration and takes the one-consumer guard (no network
    I/O); the first ``__anext__`` connects. Fatal errors come out of ``__anext__``. An event
    counts as processed when the next one is asked for, when :meth:`commit` is called, or when
    the block is left without an exception; only processed offsets are committed.

    ``async for`` (and ``anext(stream)``) resumes one iteration per event, which reads the
    socket itself while the caller asks for events; while the caller is busy with an event, the
    stream's own task reads ahead into a bounded queue of ``queue_size`` events (answering pings
    on the way), which the iteration empties first. A loop left with ``break`` goes on where it
    stopped if iterated again.
    """

    def __init__(
        self,
        *,
        gateway_url: str,
        app_key: str,
        chain_code: str,
        auth: TokenProvider,
        checkpoints: CheckpointStore | None = None,
        offset: str | None = None,
        start_at_highest: bool = False,
        delta: bool = False,
        hotel_codes: Sequence[str] | str | None = None,
        timings: Timings | None = None,
        ssl: ssl_module.SSLContext | str | Path | None = None,
        proxy: str | None = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        queue_size: int = 1000,
        on_invalid: Literal["raise", "skip"] | InvalidHandler = "raise",
        dedup_window: int | None = None,
        commit_every: int = 1000,
        commit_interval: float = 1.0,
        guard_scope: Literal["stream", "app_key"] = "stream",
        lock_dir: str | Path | None = None,
        standby: bool = False,
        allow_insecure: bool = False,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._gateway_url = gateway_url
        self._app_key = app_key
        self._chain_code = chain_code
        self._auth = auth
        self._owned: list[Any] = []
        self._checkpoints_given = checkpoints is not None
        self._checkpoints: CheckpointStore = (
            checkpoints if checkpoints is not None else MemoryCheckpointStore()
        )
        self._start_offset = offset
        self._start_at_highest = start_at_highest
        self._delta = delta
        self._hotel_codes = hotel_codes
        self.timings = timings if timings is not None else Timings()
        self._ssl_option = ssl
        self._proxy = proxy
        self._max_message_size = max_message_size
        self._queue_size = queue_size
        self._on_invalid = on_invalid
        self._dedup_window = dedup_window
        self._commit_every = commit_every
        self._commit_interval = commit_interval
        self._guard_scope = guard_scope
        self._lock_dir = lock_dir
        self._standby = standby
        self._allow_insecure = allow_insecure
        self._clock = clock or time.time
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        register_secret(app_key, hash_app_key(app_key) if app_key else None)
        install_redaction()

        self.stats = StreamStats()
        self.stream_id = stream_id_for(gateway_url, chain_code, app_key) if app_key else ""
        self._guard: StreamGuard | None = None
        self._entered = False
        self._closed = False
        self._stop_requested = False
        self._stopping = False
        self._fatal: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue = _Buffer(max(1, queue_size))
        self._conn: Connection | None = None
        self._live: _Live | None = None
        self._pump_wake: asyncio.Future[None] | None = None
        self._stop_complete: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._ssl_context: ssl_module.SSLContext | None = None
        self._url = ""
        self._completing = False
        self._liveness_lost = False
        self._reading_since: float | None = None
        # Resume and de-duplication (protocol §6).
        self._last_seen = -1  # highest offset received into the pipeline (int)
        self._last_seen_offset: str | None = None
        # At least the last ``dedup_window`` unique ids, in two generations: ids go into the
        # young one; when it holds dedup_window ids it becomes the old one (the previous old one
        # is dropped). Two lookups and one insertion per event. Dicts, not sets: a dict of
        # strings is not tracked by the garbage collector, which would otherwise walk every id
        # at each collection, and holds them in less memory.
        self._seen_young: dict[str, None] = {}
        self._seen_old: dict[str, None] = {}
        self._window = 0
        self._asked_offset: int | None = None
        self._first_start = True
        # Processing and commits.
        # The event (or dead-lettered frame) handed out last: processed when the next is asked.
        self._handed: Event | InvalidNext | None = None
        self._events_gen: AsyncGeneratorType[Event, None] | None = None
        # The one processed last, not yet folded into _checkpoint (see that property).
        self._done: Event | InvalidNext | None = None
        self._checkpoint_base = Checkpoint()
        self._dirty = 0
        # A commit is due when _dirty reaches this: commit_every, or 1 once commit_interval has
        # passed since the last commit (a timer sets it: no clock read per event).
        self._commit_at = commit_every
        self._commit_timer: asyncio.TimerHandle | None = None
        self._idle_commit: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        # Policy counters.
        self._attempt = 0
        self._auth_failures = 0
        self._lockouts = 0
        self._same_offset_failures = 0
        self._failure_offset: int | None = None
        self._budget: UpgradeBudget | None = None
        self._budget_is_new = False
        self._signals: list[int] = []

    # --- construction from the environment ----------------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> EventStream:
        """An ``EventStream`` configured from ``OHIP_*`` variables (and a ``.env`` file).

        The token provider and the checkpoint store it creates are owned by the stream and
        closed with it. Keyword arguments override what the environment says.
        """
        from ohip_stream._settings import OhipSettings

        settings = OhipSettings.load()
        return settings.event_stream(**overrides)

    def _adopt(self, *resources: Any) -> None:
        """Resources created for the stream (by ``from_env``) that it closes when it closes."""
        self._owned.extend(resources)

    # --- configuration ------------------------------------------------------------------------

    def _validate(self) -> None:
        if not isinstance(self._app_key, str) or not self._app_key.strip():
            raise ConfigurationError("app_key is required: the application key from the portal")
        if not isinstance(self._chain_code, str) or not self._chain_code.strip():
            raise ConfigurationError("chain_code is required: the OPERA chain code")
        if self._auth is None or not hasattr(self._auth, "get_token"):
            raise ConfigurationError(
                "auth must be a token provider such as OAuthClientCredentials or StaticToken"
            )
        if self._start_offset is not None and self._start_at_highest:
            raise ConfigurationError(
                "offset and start_at_highest are mutually exclusive: replay from an offset, or "
                "start at the newest event"
            )
        if self._queue_size < 1:
            raise ConfigurationError(f"queue_size must be at least 1, got {self._queue_size}")
        if self._commit_every < 1:
            raise ConfigurationError(f"commit_every must be at least 1, got {self._commit_every}")
        if not self._commit_interval > 0:
            raise ConfigurationError(
                f"commit_interval must be a positive number of seconds, got {self._commit_interval}"
            )
        if self._max_message_size is not None and self._max_message_size < 1024:
            raise ConfigurationError(
                "max_message_size must be at least 1024 bytes or None, got "
                f"{self._max_message_size}"
            )
        if self._guard_scope not in ("stream", "app_key"):
            raise ConfigurationError(
                f"guard_scope must be 'stream' or 'app_key', got {self._guard_scope!r}"
            )
        if not (self._on_invalid in ("raise", "skip") or callable(self._on_invalid)):
            raise ConfigurationError("on_invalid must be 'raise', 'skip' or a callback(raw, error)")
        if self._dedup_window is not None and self._dedup_window < self._queue_size:
            raise ConfigurationError(
                f"dedup_window ({self._dedup_window}) must be at least queue_size "
                f"({self._queue_size})"
            )
        if not isinstance(self.timings, Timings):
            raise ConfigurationError("timings must be a Timings instance")
        self._url = subscription_url(self._gateway_url, self._app_key)
        scheme = urlsplit(self._url).scheme
        host = urlsplit(self._url).hostname or ""
        if scheme == "ws" and not _is_loopback(host) and not self._allow_insecure:
            raise ConfigurationError(
                f"gateway_url uses plain http for {host}: tokens and events would cross the "
                "network unencrypted. Use https, or pass allow_insecure=True for a test gateway"
            )
        # Every input rule is checked here, before any I/O (protocol §2).
        self._document(self._start_offset, self._start_at_highest)
        self._ssl_context = self._make_ssl_context()
        self._window = self._dedup_window or max(self._queue_size * 2, 10_000)
        self._budget, self._budget_is_new = _shared_budget(
            self._app_key, *self.timings.upgrade_budget
        )

    def _make_ssl_context(self) -> ssl_module.SSLContext | None:
        option = self._ssl_option
        if option is None or isinstance(option, ssl_module.SSLContext):
            return option
        path = Path(option)
        try:
            exists = path.is_file()
        except OSError as exc:  # a name too long for the file system, and the like
            raise ConfigurationError(f"ssl CA file cannot be read: {exc.strerror}") from None
        if not exists:
            raise ConfigurationError(f"ssl CA file {path} does not exist: pass a PEM file path")
        try:
            return ssl_module.create_default_context(cafile=str(path))
        except (ssl_module.SSLError, OSError) as exc:
            raise ConfigurationError(f"cannot load the CA file {path}: {exc}") from exc

    def _document(self, offset: str | None, highest: bool) -> SubscriptionDocument:
        return build_subscription(
            self._chain_code,
            offset=offset,
            offset_type="highest" if highest else None,
            delta=self._delta,
            hotel_codes=self._hotel_codes,
        )

    # --- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> EventStream:
        if self._entered:
            raise ConfigurationError("this EventStream was already entered; make a new one")
        self._validate()
        key = self.stream_id if self._guard_scope == "stream" else _digest(self._app_key.strip())
        scope = f"stream {self.stream_id} (chain {self._chain_code})"
        if self._guard_scope == "app_key":
            scope = f"application key {key}"
        guard = StreamGuard(
            key,
            lock_dir=self._lock_dir,
            description=scope,
            upgrades_key=_digest(self._app_key.strip()),
        )
        guard.acquire()
        self._guard = guard
        self._entered = True
        self._load_budget(guard)
        if not self._checkpoints_given:
            _log.warning(
                "stream %s has no checkpoint store: processed offsets are kept in memory and a "
                "restart will not resume (pass checkpoints=SQLiteCheckpointStore(path))",
                self.stream_id,
            )
        _log.info("stream %s ready (chain %s)", self.stream_id, self._chain_code)
        return self

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
        return self._iterator()

    def __anext__(self) -> Awaitable[Event]:
        """The next event: what ``async for`` gets, for direct use (``anext(stream)``)."""
        return self._iterator().__anext__()

    def _iterator(self) -> AsyncGenerator[Event, None]:
        # One iteration at a time: a loop left with break goes on where it stopped; one ended by
        # an exception (EventValidationError, a fatal error) starts over from the stream's state.
        events = self._events_gen
        if events is None or events.ag_frame is None:
            events = self._events_gen = cast(AsyncGeneratorType[Event, None], self._events())
        return events

    def _may_read(self, live: _Live | None) -> bool:
        """Whether the caller may read ``live`` itself: nobody reads it, it has not ended, and
        no stop was asked (closing asks for one too)."""
        return (
            live is not None and live.owner is None and not live.ended and not self._stop_requested
        )

    async def _events(self) -> AsyncGenerator[Event, None]:
        """The caller's side: ``async for`` resumes this generator once per event.

        While the caller asks for events it reads the socket itself, in its own task (the hot
        path, below); otherwise it takes what the stream's task queued. An event counts as
        processed when the next one is asked for, that is when this generator is resumed.
        """
        stats = self.stats
        queue = self._queue
        items = queue._items
        while True:
            self._note_handed()
            if self._dirty >= self._commit_at:
                await self._commit()
            if self._stop_requested or self._closed:
                return
            if self._fatal is not None:
                raise self._fatal
            live = self._live
            if items or not self._may_read(live):
                if items:  # Buffer.get_nowait, inlined
                    item = items.popleft()
                    if queue._putters:
                        _wake_one(queue._putters)
                else:
                    if self._task is None:
                        self._start()
                    item = await queue.get()
                if type(item) is Event:
                    self._handed = item
                    stats.events += 1
                    stats.last_offset = item.metadata.offset
                    yield item
                elif isinstance(item, InvalidNext):
                    await self._invalid(item)
                elif isinstance(item, _Fatal):
                    self._fatal = item.error
                    raise item.error
                elif item is _STOP:
                    return
                continue
            assert live is not None
            # The hot path: frames -> events -> de-duplication -> the caller, with no task or
            # queue in between. This loop runs once per event; what it does is measured by
            # benchmarks/throughput.py.
            recv = live.recv
            next_buffered = live.next_buffered
            receive_event = live.receive_event
            accept = self._accept
            invalid: InvalidNext | None = None
            # Liveness (protocol §4): silence counts from here, or from the last event the
            # keeper saw arrive (no clock read per event).
            self._reading_since = time.monotonic()
            while True:
                live.owner = _CALLER
                try:
                    while True:
                        # Undecoded: the one-pass validation reads the UTF-8 bytes itself.
                        # Already received (the common case under load): a plain call.
                        frame = next_buffered()
                        if frame is None:
                            frame = await recv(False)
                        event = receive_event(frame)
                        if event is None:
                            other = await self._other_frame(live, frame)
                            if other is None:
                                continue
                            if isinstance(other, InvalidNext):
                                invalid = other
                                break
                            event = other
                        offset = accept(live, event)
                        if offset is None:
                            continue  # a replay, dropped
                        break
                except ConnectionClosed as exc:
                    self._end_live(live, _Planned() if self._completing else exc)
                    event = None
                except Exception as exc:  # the session's policy decides what comes next
                    self._end_live(live, exc)
                    event = None
                finally:
                    live.owner = None
                if event is None:
                    if invalid is not None:
                        self._reading_since = None
                        await self._invalid(invalid)  # the dead-letter path, in the caller
                    break
                if self._stop_requested:
                    break  # not handed out, so not processed: it comes again next time
                self._handed = event
                stats.events += 1
                stats.last_offset = offset
                yield event
                handed = self._handed
                if handed is not None:  # _note_processed, inlined
                    self._handed = None
                    self._done = handed
                    dirty = self._dirty = self._dirty + 1
                    if dirty >= self._commit_at:
                        await self._commit()
                if live.owner is not None or live.ended or self._stop_requested or items:
                    break
            self._reading_since = None

    async def _invalid(self, item: InvalidNext) -> None:
        self.stats.invalid += 1
        handler = self._on_invalid
        if handler == "raise":
            # The stream stays usable: the next __anext__ marks this event processed.
            if item.offset is not None:
                self._handed = item
            raise item.error
        if handler == "skip":
            _log.warning("skipped an invalid event: %s", item.error)
        else:
            result = handler(item.raw, item.error)
            if inspect.isawaitable(result):
                await result
        await self._processed(item)

    def _start(self) -> None:
        if not self._entered:
            raise ConfigurationError("use the stream inside 'async with EventStream(...)'")
        self._task = asyncio.create_task(self._run(), name=f"ohip-stream-{self.stream_id}")
        self._arm_commit_timer()

    def request_stop(self) -> None:
        """Ask the iteration to end (thread-unsafe; call from the loop): ``async for`` ends at
        the next event, and leaving the block completes, drains and commits."""
        self._stop_requested = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_STOP)
        live = self._live
        if live is not None and live.owner == _CALLER and not self._stop_complete:
            # The caller waits on the socket itself: complete, so that the server sends what
            # is in flight and closes, which ends that wait (leaving the block drains the rest).
            self._stop_complete = asyncio.ensure_future(
                _quietly(self._begin_complete(live.conn, "stop"))
            )

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
        self._note_handed()
        await self._commit(force=True)

    async def _close(self, *, commit_handed: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_requested = True
        try:
            if commit_handed:
                self._note_handed()
            self._handed = None
            events, self._events_gen = self._events_gen, None
            if events is not None and events.ag_frame is not None and not events.ag_running:
                # A loop left with break leaves its iteration suspended: end it here.
                await events.aclose()
            if self._stop_complete is not None:
                await asyncio.gather(self._stop_complete, return_exceptions=True)
            await self._stop_pump()
            if self._commit_timer is not None:
                self._commit_timer.cancel()
            idle_commit = self._idle_commit
            if idle_commit is not None and not idle_commit.done():
                await asyncio.gather(idle_commit, return_exceptions=True)
            if self._dirty or self._checkpoint.completed_at is not None:
                await self._commit(force=True)
        finally:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)
            if self._guard is not None:
                self._guard.release()
            for resource in reversed(self._owned):
                with contextlib.suppress(Exception):
                    closer = getattr(resource, "aclose", None)
                    if closer is not None:
                        await closer()
            _log.info("stream %s closed", self.stream_id)

    async def _stop_pump(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        conn = self._conn
        if conn is not None and conn.protocol.state in (State.SUBSCRIBED, State.COMPLETING):
            # Subscribed, or already draining a rotation: complete (if not yet) and let the
            # server close, so that the gap is known and the stream is released cleanly.
            self._stopping = True
            self._wake_pump()
            # Events not handed out yet are not processed: they come again next time.
            self._queue._items.clear()
            try:
                await self._begin_complete(conn, "stop")
                await asyncio.wait_for(asyncio.shield(task), self.timings.drain_timeout + 5)
            except (asyncio.TimeoutError, TimeoutError, OhipError, ConnectionClosed, OSError):
                pass
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # --- processing and commits ---------------------------------------------------------------

    @property
    def _checkpoint(self) -> Checkpoint:
        """Where the stream stands: the event processed last is folded in when read."""
        done = self._done
        if done is not None:
            self._done = None
            if type(done) is Event:
                offset: str | None = done.metadata.offset
                uid = done.metadata.unique_event_id
            else:
                assert isinstance(done, InvalidNext)
                offset, uid = done.offset, None
            base = self._checkpoint_base
            self._checkpoint_base = Checkpoint(offset, uid, base.completed_at, base.updated_at)
        return self._checkpoint_base

    @_checkpoint.setter
    def _checkpoint(self, checkpoint: Checkpoint) -> None:
        self._checkpoint_base = checkpoint

    def _note_processed(self, item: Event | InvalidNext) -> None:
        # Per event, only remembered: reading _checkpoint folds it in (a Checkpoint per event
        # cost more than the rest of the per-event bookkeeping).
        if type(item) is InvalidNext and item.offset is None:
            return
        self._done = item
        self._dirty += 1

    def _note_handed(self) -> None:
        handed = self._handed
        if handed is not None:
            self._handed = None
            self._note_processed(handed)

    async def _processed(self, item: InvalidNext) -> None:
        self._note_processed(item)
        if self._dirty >= self._commit_at:
            await self._commit()

    def _arm_commit_timer(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        self._commit_at = self._commit_every
        self._commit_timer = asyncio.get_running_loop().call_later(
            self._commit_interval, self._commit_time
        )

    def _commit_time(self) -> None:
        # commit_interval has passed since the last commit: the next event asked for commits;
        # processed events waiting for a quiet stream are committed now.
        self._commit_timer = None
        self._commit_at = 1
        if self._dirty and not self._closed and not self._commit_lock.locked():
            self._idle_commit = asyncio.create_task(self._commit_quietly())

    async def _commit_quietly(self) -> None:
        try:
            await self._commit()
        except Exception as exc:  # the next commit writes it again (the count is kept)
            _log.warning("stream %s: a checkpoint commit failed: %s", self.stream_id, exc)

    async def _commit(self, *, force: bool = False) -> None:
        async with self._commit_lock:
            if not self._dirty and not force:
                return
            checkpoint = Checkpoint(
                self._checkpoint.offset,
                self._checkpoint.unique_event_id,
                self._checkpoint.completed_at,
                self._clock(),
            )
            dirty = self._dirty
            self._dirty = 0
            if not self._closed:
                self._arm_commit_timer()
            try:
                await self._checkpoints.save(self.stream_id, checkpoint)
            except BaseException:
                self._dirty += dirty
                raise
            # Only the time of the write: an offset noted or a complete recorded while the
            # store was writing must not be undone (the next commit writes them).
            current = self._checkpoint
            self._checkpoint = Checkpoint(
                current.offset, current.unique_event_id, current.completed_at, checkpoint.updated_at
            )

    # --- the pump: connections, one after another ---------------------------------------------

    async def _run(self) -> None:
        try:
            await self._load_checkpoint()
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_Retry),
                wait=_action_delay,
                sleep=self._sleep,
                stop=stop_never,
                before_sleep=self._before_retry,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    while not self._stopping:
                        await self._session()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # delivered to the caller from __anext__
            error = exc
            if not isinstance(exc, OhipError):
                error = TransportError(f"the stream failed unexpectedly: {exc!r}")
                error.__cause__ = exc
            _log.error("stream %s stopped: %s", self.stream_id, error)
            await self._queue.put(_Fatal(error))

    def _before_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Retry):
            action = error.action
            self.stats.count_reconnect(action.cause)
            level = logging.WARNING if action.kind is ActionKind.LOCKOUT else logging.INFO
            _log.log(
                level,
                "stream %s: reconnecting in %.3g s (%s, %s)",
                self.stream_id,
                action.delay,
                action.cause,
                action.kind.value,
            )

    async def _load_checkpoint(self) -> None:
        checkpoint = await self._checkpoints.load(self.stream_id)
        if checkpoint is None:
            return
        self._checkpoint = checkpoint
        if self._start_offset is not None or self._start_at_highest:
            # An explicit start overrides the checkpoint for this run (only completed_at, the
            # gap, still counts): nothing is dropped as already processed.
            _log.info(
                "stream %s starts where asked, not after the checkpoint (offset %s)",
                self.stream_id,
                checkpoint.offset or "(none)",
            )
            return
        if checkpoint.offset is not None and checkpoint.offset.isdigit():
            # Everything at or below the checkpoint was processed: a replay of it is dropped.
            self._last_seen = int(checkpoint.offset)
            self._last_seen_offset = checkpoint.offset
        if checkpoint.unique_event_id:
            self._seen_young[checkpoint.unique_event_id] = None
        _log.info(
            "stream %s resumes after offset %s", self.stream_id, checkpoint.offset or "(none)"
        )

    def _resume_document(self) -> SubscriptionDocument:
        # An explicit start applies until the stream has seen an event; then the last offset
        # seen is sent again (inclusive replay, protocol §6: safe whether or not the server
        # replays inclusively, as the replayed event is dropped as a duplicate).
        if self._first_start and self._start_offset is not None:
            self._asked_offset = int(self._start_offset)
            return self._document(self._start_offset, False)
        if self._last_seen_offset is not None:
            self._asked_offset = self._last_seen
            return self._document(self._last_seen_offset, False)
        self._asked_offset = None
        return self._document(None, self._first_start and self._start_at_highest)

    async def _wait_gap(self) -> None:
        # Protocol §4: at least complete_gap between the end of a completed connection and the
        # next subscribe, across restarts too (completed_at is kept with the checkpoint).
        completed_at = self._checkpoint.completed_at
        if completed_at is None:
            return
        rest = self.timings.complete_gap - (self._clock() - completed_at)
        if rest > 0:
            _log.info("stream %s: waiting %.3g s, the gap after complete", self.stream_id, rest)
            await self._sleep(rest)

    def _load_budget(self, guard: StreamGuard) -> None:
        # Protocol §1: upgrades made with this key by an earlier process (a crash and a
        # restart) count against the budget too, or a crash loop would reach the 429. Once per
        # process and key: later streams of the key share the budget that already counts them.
        budget = self._budget
        assert budget is not None
        if not self._budget_is_new:
            return
        wall, mono = time.time(), time.monotonic()
        for at in guard.recent_upgrades(budget.window, wall):
            budget.record(mono - (wall - at))

    async def _wait_budget(self) -> None:
        budget = self._budget
        assert budget is not None
        wait = budget.wait_time(time.monotonic())
        if wait > 0:
            _log.warning(
                "stream %s: %d upgrades in the last %g s; waiting %.3g s to stay under the "
                "gateway's limit",
                self.stream_id,
                len(budget),
                self.timings.upgrade_budget[1],
                wait,
            )
            await self._sleep(wait)

    def _record_upgrade(self) -> None:
        # Counted right before the request leaves (after the token fetch, which can be slow):
        # the gateway counts upgrades when they arrive.
        budget = self._budget
        assert budget is not None
        budget.record(time.monotonic())
        if self._guard is not None:
            self._guard.record_upgrade(time.time(), budget.window)

    async def _session(self) -> None:
        """One connection, from the upgrade to its close; raises ``_Retry`` to reconnect."""
        await self._wait_gap()
        await self._wait_budget()
        token: AccessToken | None = None
        conn: Connection | None = None
        try:
            token = await self._auth.get_token()
            deadline = self._rotation_deadline(token)
            if deadline is not None and self._clock() >= deadline:
                # After a long wait (lockout, 429, budget) the cached token may be past its
                # rotation deadline: a connection with it would have to rotate at once.
                self._auth.invalidate(token)
                token = await self._auth.get_token()
            register_secret(token.value, transient=True)
            conn = Connection(
                self._url,
                token=token.value,
                app_key=self._app_key,
                enterprise_id=getattr(self._auth, "enterprise_id", None),
                ssl=self._ssl_context,
                proxy=self._proxy,
                max_message_size=self._max_message_size,
                open_timeout=max(self.timings.init_timeout * 2, 10.0),
                init_timeout=self.timings.init_timeout,
            )
            self._conn = conn
            self._record_upgrade()
            await conn.open()
            if self._standby:
                await self._wait_standby(conn)
            document = self._resume_document()
            self._completing = False
            self._liveness_lost = False
            await conn.subscribe(document.payload())
            self.stats.connected_since = self._clock()
            _log.info(
                "stream %s subscribed (from offset %s)",
                self.stream_id,
                document.input.get("offset", document.input.get("offsetType", "server position")),
            )
            self._keeper = asyncio.create_task(self._keep(conn, token))
            live = self._live = _Live(conn)
            await self._serve(live)
        except _Planned:
            await self._after_planned_close(token)
        except asyncio.CancelledError:
            raise
        except _Retry:
            raise
        except OhipError as exc:
            if not exc.retriable:
                raise
            self._fail(exc, token)
        except Exception as exc:
            self._fail(exc, token)
        finally:
            self._live = None
            self.stats.connected_since = None
            self._completing = False  # a failure of the next connection is no drain of this one
            keeper, self._keeper = self._keeper, None
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await keeper
            if conn is not None:
                await _quietly(conn.abort())
            self._conn = None

    def _fail(self, exc: BaseException, token: AccessToken | None) -> None:
        if self._completing:
            # Our complete reached the gateway before this failure ended the drain: the gap
            # before the next subscribe counts from now all the same (protocol §4).
            self._mark_completed()
        failure = classify_exception(exc)
        if self._liveness_lost:
            failure = Failure(FailureKind.LIVENESS, reason="no pong and no event in time")
        if failure.kind in (FailureKind.MALFORMED,) or (
            failure.kind is FailureKind.CLOSE and failure.code == 1009
        ):
            if self._failure_offset == self._last_seen:
                self._same_offset_failures += 1
            else:
                self._failure_offset = self._last_seen
                self._same_offset_failures = 1
        is_auth = (failure.kind is FailureKind.CLOSE and failure.code == 4401) or (
            failure.kind is FailureKind.HTTP and failure.code == 401
        )
        self._auth_failures = self._auth_failures + 1 if is_auth else 0
        self._attempt += 1
        completed_at = self._checkpoint.completed_at
        state = PolicyState(
            attempt=self._attempt,
            auth_failures=self._auth_failures,
            lockouts=self._lockouts,
            same_offset_failures=self._same_offset_failures,
            since_complete=None if completed_at is None else self._clock() - completed_at,
        )
        action = decide(failure, state, self.timings, self._rng)
        if action.kind is ActionKind.FATAL:
            assert action.error is not None
            raise action.error from (exc if isinstance(exc, Exception) else None)
        if action.kind is ActionKind.LOCKOUT:
            self._lockouts += 1
            self.stats.lockouts += 1
            _log.warning(
                "stream %s: another consumer holds the stream (4409); waiting %.3g s",
                self.stream_id,
                action.delay,
            )
        if action.kind is ActionKind.REFRESH_TOKEN and token is not None:
            self._auth.invalidate(token)
        raise _Retry(action) from None

    def _mark_completed(self) -> None:
        self._checkpoint = Checkpoint(
            self._checkpoint.offset,
            self._checkpoint.unique_event_id,
            self._clock(),
            self._checkpoint.updated_at,
        )

    async def _after_planned_close(self, token: AccessToken | None) -> None:
        # The server closed after our complete (or we did, after drain_timeout): the stream is
        # completed; the gap before the next subscribe counts from now (protocol §4).
        self._mark_completed()
        await self._commit(force=True)
        if self._stopping:
            return
        self.stats.rotations += 1
        self.stats.count_reconnect("rotation")
        if token is not None:
            self._auth.invalidate(token)
        _log.info("stream %s rotated its connection before the token expired", self.stream_id)

    async def _wait_standby(self, conn: Connection) -> None:
        # Oracle's active/standby pattern (protocol §2): subscribe only once the status query
        # says Inactive. When another consumer was seen active, it has just completed: keep
        # the gap before subscribing (protocol §4), or the gateway answers 4409.
        seen_active = False
        while True:
            status = await conn.query_status(self.timings.init_timeout)
            if status.casefold() != "active":
                if seen_active:
                    await self._idle(conn, self.timings.complete_gap)
                return
            seen_active = True
            _log.info(
                "stream %s: another consumer is active; standing by for %.3g s",
                self.stream_id,
                self.timings.complete_gap,
            )
            await self._idle(conn, self.timings.complete_gap)

    async def _idle(self, conn: Connection, seconds: float) -> None:
        """Wait on an open connection, pinging it every ping_interval (protocol §4)."""
        waited = 0.0
        while waited < seconds:
            step = min(self.timings.ping_interval, seconds - waited)
            await asyncio.sleep(step)
            waited += step
            await conn.send_ping()

    async def _serve(self, live: _Live) -> None:
        """The pump's part of a subscribed connection: read it while the caller is away (busy
        with an event, or waiting on the queue), until it ends; raises how it ended."""
        napped = False
        seen = -1
        while not live.ended:
            if live.owner is None and (
                self._queue._getters or self._stopping or (napped and self.stats.events == seen)
            ):
                await self._pump_read(live)
                napped = False
            else:
                seen = self.stats.events
                await self._nap(_CALLER_AWAY)
                napped = True
        assert live.outcome is not None
        raise live.outcome

    async def _nap(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        wake = self._pump_wake = loop.create_future()
        timer = loop.call_later(seconds, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._pump_wake = None

    def _wake_pump(self) -> None:
        wake = self._pump_wake
        if wake is not None:
            _resolve(wake)

    def _end_live(self, live: _Live, outcome: BaseException) -> None:
        if not live.ended:
            live.ended = True
            live.outcome = outcome
            self._wake_pump()

    async def _pump_read(self, live: _Live) -> None:
        """The stream's task reads ``live`` while the caller is away: events go to the queue,
        until the caller waits on the queue again (it then reads for itself) or the
        connection ended."""
        live.owner = _PUMP
        recv = live.recv
        receive_event = live.receive_event
        handed_off = 0
        # Liveness (protocol §4): silence counts from here, from each wait for room in the
        # queue, or from the last event the keeper saw arrive (a late pong during a burst is
        # fine).
        self._reading_since = time.monotonic()
        try:
            while True:
                try:
                    frame = await recv(False)
                    event = receive_event(frame)
                    other = None if event is not None else await self._other_frame(live, frame)
                except ConnectionClosed as exc:
                    self._end_live(live, _Planned() if self._completing else exc)
                    return
                except Exception as exc:  # the session's policy decides what comes next
                    self._end_live(live, exc)
                    return
                if isinstance(other, InvalidNext):
                    await self._wait_for_room(other)
                    continue
                if other is not None:
                    event = other
                if event is None or self._accept(live, event) is None or self._stopping:
                    continue
                queue = self._queue
                items = queue._items
                if len(items) < queue._maxsize:  # Buffer.offer, inlined
                    items.append(event)
                    if queue._getters:
                        # The caller waits on the queue: it is back, and reads for itself next.
                        _wake_one(queue._getters)
                        return
                    handed_off += 1
                    if handed_off >= _HANDOFF_EVERY:
                        # Let the caller take what is queued before reading on.
                        handed_off = 0
                        await asyncio.sleep(0)
                else:
                    await self._wait_for_room(event)
        finally:
            live.owner = None
            self._reading_since = None

    async def _other_frame(self, live: _Live, frame: str | bytes) -> Event | InvalidNext | None:
        """Any frame but a valid event of the subscription: an event that needed the slow path,
        an invalid event that is new (for the dead-letter path), or ``None``."""
        item = live.receive(frame)
        if type(item) is Next:
            return item.event
        if type(item) is InvalidNext:
            return item if self._accept_invalid(live, item) else None
        if type(item) is Ping:
            await live.conn.flush()
        elif type(item) is ErrorMessage:
            raise SubscriptionError(
                f"the gateway refused the subscription: {item.message}", reason=item.message
            )
        elif type(item) is Complete and not self._completing:
            # The server ended the subscription; its close ends the connection.
            _log.info("stream %s: the server completed the subscription", self.stream_id)
        return None

    def _accept(self, live: _Live, event: Event) -> str | None:
        """De-duplication (protocol §6), by offset, then by unique id: the offset of ``event``
        if it is new, None if it is a replay (counted as a duplicate)."""
        metadata = event.metadata
        offset = metadata.offset
        try:
            number = int(offset)
        except ValueError:
            number = -1
        if live.first:
            live.first = False
            self._first_event(number)
        if number <= self._last_seen and number >= 0:
            self.stats.duplicates += 1
            return None
        uid = metadata.unique_event_id
        young = self._seen_young
        if uid in young or uid in self._seen_old:
            self.stats.duplicates += 1
            return None
        young[uid] = None
        if len(young) >= self._window:
            self._seen_old = young
            self._seen_young = {}
        if number >= 0:
            self._last_seen = number
            self._last_seen_offset = offset
        return offset

    def _accept_invalid(self, live: _Live, item: InvalidNext) -> bool:
        """Whether an invalid event is new (the dead-letter path gets it once)."""
        if live.first:
            live.first = False
            self._first_event(-1)
        bad_offset = item.offset
        if bad_offset is not None and bad_offset.isdigit():
            if int(bad_offset) <= self._last_seen:
                self.stats.duplicates += 1
                return False
            self._last_seen = int(bad_offset)
            self._last_seen_offset = bad_offset
        return not self._stopping

    async def _wait_for_room(self, item: Any) -> None:
        # The caller is slower than the gateway: stop reading, so TCP pushes back on the server
        # (backpressure); this wait does not count against liveness.
        self._reading_since = None
        try:
            await self._queue.put(item)
        finally:
            self._reading_since = time.monotonic()

    def _first_event(self, number: int) -> None:
        # Progress: the policy counts consecutive failures without an event in between.
        self._first_start = False
        self._attempt = 0
        self._auth_failures = 0
        self._lockouts = 0
        asked = self._asked_offset
        if asked is None or number < 0 or self._hotel_codes:
            return
        # Protocol §6: the first event after a resume must be the offset asked for (or the one
        # after it); anything beyond means events were lost upstream.
        if number > asked + 1:
            lost = number - asked - 1
            self.stats.gaps += lost
            _log.warning(
                "stream %s: %d event(s) lost upstream: asked to resume at offset %d, the first "
                "event was %d (retention or the 24-hour resume limit)",
                self.stream_id,
                lost,
                asked,
                number,
            )

    async def _begin_complete(self, conn: Connection, why: str) -> None:
        if self._completing or conn.protocol.state is not State.SUBSCRIBED:
            return
        self._completing = True
        _log.info("stream %s: completing the subscription (%s)", self.stream_id, why)
        await conn.complete()

    def _arrivals(self) -> int:
        """Events that arrived so far, however they went on: handed out, dropped as duplicates,
        dead-lettered, or still queued (no reader keeps a clock per event)."""
        stats = self.stats
        return stats.events + stats.duplicates + stats.invalid + self._queue.qsize()

    def _rotation_deadline(self, token: AccessToken) -> float | None:
        expires_at = token.expires_at
        if expires_at is None:
            return None  # a token without expiry never forces a rotation
        margin = float(getattr(self._auth, "margin", 0.0))
        lifetime = expires_at - token.issued_at
        if lifetime > 0:
            margin = min(margin, lifetime / 2)
        return min(token.issued_at + self.timings.rotate_after, expires_at - margin)

    async def _keep(self, conn: Connection, token: AccessToken) -> None:
        """Per connection: ping every ping_interval, watch liveness, rotate before expiry."""
        timings = self.timings
        deadline = self._rotation_deadline(token)
        low_water = max(1, self._queue_size // 2)
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + timings.ping_interval
        drain_until: float | None = None
        progress = self._arrivals()
        progress_at = loop.time()
        while True:
            wake = next_ping
            if deadline is not None and not self._completing:
                wake = min(wake, loop.time() + max(0.0, deadline - self._clock()))
            if drain_until is not None:
                wake = min(wake, drain_until)
            await asyncio.sleep(max(0.0, wake - loop.time()))
            now = loop.time()
            if now >= next_ping:
                next_ping = now + timings.ping_interval
                await conn.send_ping()
            # An event that arrived since the last look is a sign of life too.
            seen = self._arrivals()
            if seen != progress:
                progress, progress_at = seen, now
            reading_since = self._reading_since
            if reading_since is not None:
                silent = now - max(conn.protocol.last_alive, reading_since, progress_at)
                if silent > timings.liveness_timeout:
                    _log.warning(
                        "stream %s: no pong and no event for %.3g s; dropping the connection",
                        self.stream_id,
                        silent,
                    )
                    self._liveness_lost = True
                    await conn.abort()
                    return
            if (
                deadline is not None
                and not self._completing
                and self._clock() >= deadline
                and self._queue.qsize() < low_water
            ):
                await self._begin_complete(conn, "rotation before the token expires")
            if self._completing and drain_until is None:
                drain_until = now + timings.drain_timeout
            elif drain_until is not None and now >= drain_until:
                _log.warning(
                    "stream %s: the server did not close within %.3g s of complete; closing "
                    "with 1000",
                    self.stream_id,
                    timings.drain_timeout,
                )
                await conn.close(1000, "completed")
                return

    def __repr__(self) -> str:
        return (
            f"EventStream(stream_id={self.stream_id!r}, chain_code={self._chain_code!r}, "
            f"gateway={_gateway_host(self._gateway_url)!r})"
        )


# Oracle counts upgrades per application key (HTTP 429 past 150 in 2 minutes, protocol §1), and
# one key may stream several chains at once: the streams of one key in this process share one
# budget.
_budgets: weakref.WeakValueDictionary[tuple[str, int, float], UpgradeBudget] = (
    weakref.WeakValueDictionary()
)
_budgets_lock = threading.Lock()


def _shared_budget(app_key: str, count: int, window: float) -> tuple[UpgradeBudget, bool]:
    """The budget of ``app_key`` in this process, and whether it was made just now."""
    key = (_digest(app_key.strip()), count, window)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is not None:
            return budget, False
        budget = UpgradeBudget(count, window)
        _budgets[key] = budget
        return budget, True


def _action_delay(state: RetryCallState) -> float:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    return error.action.delay if isinstance(error, _Retry) else 0.0


async def _quietly(awaitable: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):
        await awaitable
