"""One stream a worker owns: build its :class:`~ohip_stream.EventStream` from the stream's
specification and this worker's environment, with an upgrade gate that takes every upgrade (the
start, each reconnect, each rotation) from the fleet's budget in the database, and hand its
events to the user's handler, one at a time, in order."""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ohip_stream._auth import OAuthClientCredentials, OAuthPassword
from ohip_stream._budget import key_id
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import get_logger, register_secret
from ohip_stream._models import Event
from ohip_stream._net import stream_id_for
from ohip_stream._stream import EventStream
from ohip_stream.fleet._errors import LeaseStoreError
from ohip_stream.fleet._fenced import FencedCheckpointStore
from ohip_stream.fleet._model import Lease, StreamSpec
from ohip_stream.fleet._stats import FleetStats
from ohip_stream.fleet._store import LeaseStore

__all__ = [
    "BudgetGate",
    "Handler",
    "Owned",
    "StreamFactory",
    "claim_then",
    "consume",
    "positive_seconds",
]

_log = get_logger("ohip_stream.fleet")

#: The shortest wait before asking the fleet's budget again.
_MIN_PAUSE = 0.05

#: The user's code: ``handler(stream, event)``, sync or async.
Handler = Callable[[StreamSpec, Event], "Awaitable[None] | None"]


@dataclass
class Owned:
    """A stream this worker holds a lease on, and the task that consumes it."""

    spec: StreamSpec
    epoch: int
    checkpoints: FencedCheckpointStore
    #: The loop's monotonic time by which the stream must be stopped unless the lease is
    #: renewed (the lease's expiry minus the safety margin, measured from the request's start).
    fence_at: float
    task: asyncio.Task[None] | None = None
    stream: EventStream | None = None
    #: Handing over (balance, shutdown): the stream completes, drains, commits, then releases.
    stopping: bool = False
    #: The lease is not ours any more (not renewed in time, or a stale epoch): never release.
    lost: bool = False
    error: BaseException | None = None
    handled: int = 0

    def past_fence(self, now: float) -> bool:
        """Whether ``now`` (the loop's monotonic time) is past :attr:`fence_at`: the lease may
        have expired without a renewal, so the stream must not hand out one more event."""
        return now >= self.fence_at

    def cancel_task(self) -> None:
        """Cancel the stream's task if it still runs (a second cancel aborts the connection)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()


@dataclass
class StreamFactory:
    """How the fleet makes the ``EventStream`` of an owned stream."""

    env: Mapping[str, str]
    options: Mapping[str, Any]
    upgrade_budget: tuple[int, float]
    providers: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    #: A ``Telemetry`` that reports every stream the worker owns (or None).
    telemetry: Any = None

    def secret(self, spec: StreamSpec, variable: str | None, what: str) -> str:
        value = self.env.get(variable or "")
        if not value:
            raise ConfigurationError(
                f"stream {spec.name}: the environment variable {variable} (the {what}) is not "
                "set on this worker: set it in the worker's environment"
            )
        register_secret(value)
        return value

    def app_key(self, spec: StreamSpec) -> str:
        return self.secret(spec, spec.app_key_env, "application key")

    def stream_id(self, spec: StreamSpec) -> str:
        return stream_id_for(spec.gateway_url, spec.chain_code, self.app_key(spec))

    def auth(self, spec: StreamSpec, app_key: str) -> Any:
        """The token provider of the stream's credentials: one per environment, shared by its
        streams (one token, one TLS context; the provider is safe to share). Closed by
        :meth:`aclose`."""
        key = (spec.gateway_url, spec.client_id, spec.enterprise_id, spec.username, app_key)
        found = self.providers.get(key)
        if found is not None:
            return found
        secret = self.secret(spec, spec.client_secret_env, "OAuth client secret")
        auth: Any
        if spec.enterprise_id is not None:
            auth = OAuthClientCredentials(
                gateway_url=spec.gateway_url,
                client_id=spec.client_id,
                client_secret=secret,
                app_key=app_key,
                enterprise_id=spec.enterprise_id,
            )
        else:
            auth = OAuthPassword(
                gateway_url=spec.gateway_url,
                client_id=spec.client_id,
                client_secret=secret,
                app_key=app_key,
                username=spec.username or "",
                password=self.secret(spec, spec.password_env, "password"),
            )
        self.providers[key] = auth
        return auth

    async def aclose(self) -> None:
        """Close the token providers."""
        providers, self.providers = list(self.providers.values()), {}
        for provider in providers:
            await provider.aclose()

    def make(
        self,
        spec: StreamSpec,
        checkpoints: FencedCheckpointStore,
        *,
        fresh: bool,
        epoch: int,
        gate: BudgetGate | None = None,
    ) -> EventStream:
        """The stream, its upgrades through ``gate``. ``fresh``: the stream has no checkpoint
        yet, so its ``start`` applies."""
        app_key = self.app_key(spec)
        auth = self.auth(spec, app_key)
        start: dict[str, Any] = {}
        if fresh and spec.start == "highest":
            start["start_at_highest"] = True
        elif fresh and spec.start != "checkpoint":
            start["offset"] = spec.start
        elif fresh and epoch > 1:
            # An earlier owner consumed without committing anything: the server's position
            # (protocol §6, without an offset) is where ITS connection stopped, past events it
            # received but never processed. Replay what is retained instead, as the first
            # subscription of the stream did.
            start["offset"] = "0"
        return EventStream(
            gateway_url=spec.gateway_url,
            app_key=app_key,
            chain_code=spec.chain_code,
            auth=auth,
            checkpoints=checkpoints,
            delta=spec.delta,
            hotel_codes=list(spec.hotel_codes) or None,
            upgrade_gate=gate,
            **start,
            **self.options,
        )


def positive_seconds(name: str, value: float) -> float:
    """A fleet option in seconds, checked: above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a number of seconds above 0, got {value!r}")
    return float(value)


class BudgetGate:
    """The upgrade gate of one owned stream (``EventStream(upgrade_gate=...)``): each call takes
    a slot in the fleet's budget of the application key, shared by every worker (protocol
    §10), and returns once it has one.

    A database that cannot answer is asked again after a growing pause (up to ``max_retry``
    seconds, logged each time), never in a tight loop; a stop or a fence cancels the wait.
    """

    def __init__(
        self,
        store: LeaseStore,
        key: str,
        budget: tuple[int, float],
        *,
        rng: random.Random,
        holder: str,
        stats: FleetStats | None = None,
        max_retry: float = 5.0,
    ) -> None:
        self.store = store
        self.key = key
        self.budget = budget
        self.rng = rng
        self.holder = holder
        self.stats = stats
        self.max_retry = max_retry
        #: Slots taken through this gate (one per upgrade of the stream).
        self.taken = 0
        self._confirming: set[asyncio.Task[None]] = set()

    def _upgraded(self, holder: str) -> None:
        """The upgrade request leaves now: the slot's record moves to this moment (a busy
        process may upgrade a while after it took the slot; the window must count from the
        upgrade, as the gateway's does)."""
        task = asyncio.ensure_future(self._confirm(holder, asyncio.get_running_loop().time()))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _confirm(self, holder: str, upgraded_at: float) -> None:
        try:
            ago = asyncio.get_running_loop().time() - upgraded_at
            await self.store.confirm_upgrade(self.key, holder, ago)
        except LeaseStoreError as exc:  # the slot's time stands: budget_pad covers most delays
            _log.info("%s: the upgrade's time was not recorded: %s", holder, exc)

    async def __call__(self) -> Callable[[], None]:
        """Take a slot; the function returned is called when the upgrade request leaves."""
        count, window = self.budget
        holder = f"{self.holder}#{self.taken + 1}"
        failures = 0
        while True:
            try:
                wait = await self.store.take_upgrade(self.key, count, window, holder)
            except LeaseStoreError as exc:
                failures += 1
                wait = min(self.max_retry, 0.1 * 2**failures)
                if self.stats is not None:
                    self.stats.budget_errors += 1
                _log.warning(
                    "%s: the fleet's upgrade budget cannot be read (%s): again in %.3g s",
                    self.holder,
                    exc,
                    wait,
                )
            else:
                if wait <= 0:
                    self.taken += 1
                    if self.stats is not None:
                        self.stats.upgrades += 1
                    return functools.partial(self._upgraded, holder)
                failures = 0
            # Jitter: the workers waiting on one key do not all come back at the same instant;
            # a floor: a crowd told "a few milliseconds" at a window's end does not spin.
            pause = max(wait, _MIN_PAUSE)
            await asyncio.sleep(pause + self.rng.uniform(0, min(1.0, max(0.1, pause / 10))))


async def claim_then(
    store: LeaseStore, stream: str, owner: str, ttl: float, claimed: Callable[[Lease], None]
) -> None:
    """``store.claim``, and ``claimed(lease)`` once it succeeded, even when the caller stopped
    waiting first (a control round that ran out of time): otherwise the lease would be held by
    no running stream until it expires."""
    claiming = asyncio.ensure_future(store.claim(stream, owner, ttl))

    def done(future: asyncio.Future[Lease | None]) -> None:
        if not future.cancelled() and future.exception() is None:
            lease = future.result()
            if lease is not None:
                claimed(lease)

    claiming.add_done_callback(done)
    await asyncio.shield(claiming)


async def consume(
    owned: Owned,
    *,
    store: LeaseStore,
    factory: StreamFactory,
    handler: Handler,
    slots: asyncio.Semaphore,
    rng: random.Random,
    fence: Callable[[Owned], None],
    stats: FleetStats | None = None,
) -> None:
    """The task of one owned stream: build, iterate, hand each event to the handler (every
    upgrade of the stream takes its slot in the fleet's budget through the stream's gate).

    Before each event the lease is checked against the loop's clock: a worker whose loop was
    frozen or starved past the lease (a SIGSTOP, a paused VM, a handler that blocked) would
    otherwise hand out the events it buffered before, while another worker may own the stream.
    Then ``fence(owned)``, the fleet's self-fencing, cancels this task: the event in hand is
    neither handled nor committed."""
    spec = owned.spec
    loop = asyncio.get_running_loop()
    gate = BudgetGate(
        store,
        key_id(factory.app_key(spec)),
        factory.upgrade_budget,
        rng=rng,
        holder=f"{spec.name}#{owned.epoch}",
        stats=stats,
    )
    fresh = await store.load_checkpoint(factory.stream_id(spec)) is None
    stream = factory.make(spec, owned.checkpoints, fresh=fresh, epoch=owned.epoch, gate=gate)
    owned.stream = stream
    if factory.telemetry is not None:
        factory.telemetry.watch(stream)
    try:
        async with stream:
            if owned.stopping:
                return
            async for event in stream:
                if owned.past_fence(loop.time()):
                    fence(owned)
                    await asyncio.sleep(0)  # where the cancellation lands
                async with slots:
                    result = handler(spec, event)
                    if inspect.isawaitable(result):
                        await result
                owned.handled += 1
    finally:
        if factory.telemetry is not None:
            factory.telemetry.forget(stream)
