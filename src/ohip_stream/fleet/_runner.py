"""One stream a worker owns: build its :class:`~ohip_stream.EventStream` from the stream's
specification and this worker's environment, pace its start through the fleet's upgrade budget,
and hand its events to the user's handler, one at a time, in order."""

from __future__ import annotations

import asyncio
import contextlib
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
from ohip_stream.fleet._errors import LeaseStoreError, LeaseStoreUnavailableError
from ohip_stream.fleet._fenced import FencedCheckpointStore
from ohip_stream.fleet._model import StreamSpec
from ohip_stream.fleet._store import LeaseStore

__all__ = ["Handler", "Owned", "StreamFactory", "consume"]

_log = get_logger("ohip_stream.fleet")

_CONFIRM_POLL = 0.02

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
    extra: dict[str, Any] = field(default_factory=dict)


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
        self, spec: StreamSpec, checkpoints: FencedCheckpointStore, *, fresh: bool, epoch: int
    ) -> tuple[EventStream, Any]:
        """The stream and its (shared) token provider. ``fresh``: the stream has no checkpoint
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
        stream = EventStream(
            gateway_url=spec.gateway_url,
            app_key=app_key,
            chain_code=spec.chain_code,
            auth=auth,
            checkpoints=checkpoints,
            delta=spec.delta,
            hotel_codes=list(spec.hotel_codes) or None,
            **start,
            **self.options,
        )
        return stream, auth


async def pace_start(
    store: LeaseStore,
    key: str,
    budget: tuple[int, float],
    *,
    rng: random.Random,
    holder: str = "",
    max_retry: float = 5.0,
) -> float:
    """Wait for a slot in the fleet's upgrade budget of the key (protocol §10: one budget per
    application key across every worker); the seconds waited."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    count, window = budget
    failures = 0
    while True:
        try:
            wait = await store.take_upgrade(key, count, window, holder)
        except LeaseStoreUnavailableError as exc:
            failures += 1
            wait = min(max_retry, 0.1 * 2**failures)
            _log.warning(
                "the fleet's upgrade budget cannot be read (%s): again in %.3g s", exc, wait
            )
        else:
            if wait <= 0:
                return loop.time() - began
        # Jitter: the workers waiting on one key do not all come back at the same instant.
        await asyncio.sleep(wait + rng.uniform(0, min(1.0, wait / 10)))


async def consume(
    owned: Owned,
    *,
    store: LeaseStore,
    factory: StreamFactory,
    handler: Handler,
    slots: asyncio.Semaphore,
    rng: random.Random,
) -> None:
    """The task of one owned stream: pace, build, iterate, hand each event to the handler."""
    spec = owned.spec
    app_key = factory.app_key(spec)
    fresh = await store.load_checkpoint(factory.stream_id(spec)) is None
    stream, auth = factory.make(spec, owned.checkpoints, fresh=fresh, epoch=owned.epoch)
    owned.stream = stream
    if factory.telemetry is not None:
        factory.telemetry.watch(stream)
    try:
        # The token first: once the budget's slot is taken, the upgrade follows at once (the
        # database's record and the gateway's count of the upgrade stay close together).
        await auth.get_token()
        key, holder = key_id(app_key), f"{spec.name}#{owned.epoch}"
        await pace_start(store, key, factory.upgrade_budget, rng=rng, holder=holder)
        if owned.stopping:
            return
        confirm = asyncio.create_task(_confirm_upgrade(stream, store, key, holder, factory))
        owned.extra["confirm"] = confirm
        async with stream:
            if owned.stopping:
                return
            async for event in stream:
                async with slots:
                    result = handler(spec, event)
                    if inspect.isawaitable(result):
                        await result
                owned.handled += 1
    finally:
        if factory.telemetry is not None:
            factory.telemetry.forget(stream)
        confirm_task = owned.extra.pop("confirm", None)
        if confirm_task is not None:
            confirm_task.cancel()


async def _confirm_upgrade(
    stream: EventStream, store: LeaseStore, key: str, holder: str, factory: StreamFactory
) -> None:
    """Once the stream subscribed, move its budget record to now (the upgrade happened just
    before): the window then counts from the real upgrade, later than the slot's taking, so a
    slow start never lets the next window's upgrades come early (protocol §10)."""
    _, window = factory.upgrade_budget
    # The stream tells no one when it subscribed (no hook yet): its counters are looked at
    # every 20 ms, for one window at most (past it, the record has left the window anyway).
    for _ in range(max(1, int(window / _CONFIRM_POLL))):
        if stream.stats.connected_since is not None:
            with contextlib.suppress(LeaseStoreError):
                await store.confirm_upgrade(key, holder)
            return
        await asyncio.sleep(_CONFIRM_POLL)
