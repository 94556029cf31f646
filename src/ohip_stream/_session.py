"""One WebSocket connection to the gateway: upgrade, init, (standby,) subscribe, keep, drain.

The connection's only reader is the transport's ``data_received``: every frame goes through
:meth:`Session.frames_received`, a read's frames at a time. Event frames are appended, undecoded,
to the stream's bounded buffer, a run of them as one batch (the caller validates each as it
hands it out); every other frame (``connection_ack``,
``ping``, ``pong``, ``complete``, ``error``, query results) is handled at once, so a server ping
is answered even while the caller is busy. No task runs per connection: pings, liveness, the
rotation deadline and the drain timeout are timers of the stream's clock.

The rules kept here (the protocol page):

* ``connection_init`` within ``init_timeout`` of connecting, with the token and the RAW key;
  nothing is subscribed before ``connection_ack`` (§1);
* a ``ping`` every ``ping_interval`` (at most 15 s) and a ``pong`` for every server ping;
  liveness lost after ``liveness_timeout`` without a pong or an arriving frame, counted only
  while the socket is being read (a paused socket is the caller's backpressure) (§4);
* rotation before the token expires: ``complete``, consume what is in flight, let the SERVER
  close; held back while the buffer is above its low-water mark, so that the drain does not
  meet a full buffer (§4);
* after a ``complete`` (ours or the server's), close with 1000 ourselves only after
  ``drain_timeout`` without the server's close (§4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ohip_stream._exceptions import OhipError, ProtocolError, SubscriptionError
from ohip_stream._lifecycle import Lifecycle, StreamState
from ohip_stream._logging import get_logger, redact, register_secret
from ohip_stream._policy import Failure, FailureKind, failure_of
from ohip_stream._protocol import (
    SUBPROTOCOL,
    ClientProtocol,
    Complete,
    ConnectionAck,
    ErrorMessage,
    InvalidNext,
    Next,
    Ping,
    ProtocolEvent,
    QueryResult,
    RawFrame,
    State,
)
from ohip_stream._query import connection_status_query
from ohip_stream._transport import Failed, WebSocket, open_websocket

if TYPE_CHECKING:
    from ohip_stream._auth import AccessToken
    from ohip_stream._buffer import Buffer
    from ohip_stream._clock import Clock, TimerHandle
    from ohip_stream._config import StreamConfig

__all__ = ["Ended", "Session", "SessionStart", "rotation_deadline"]

_log = get_logger("ohip_stream.session")
_ws_log = get_logger("ohip_stream.websockets")

# An event frame, told from the rest without parsing (bytes.find: `in` on bytes first tries
# its operand as an integer, raising and clearing a TypeError, which costs more than the search).
_NEXT = b'"next"'


def rotation_deadline(
    token: AccessToken, *, rotate_after: float, margin: float, renewable: bool
) -> float | None:
    """When (wall clock) a connection with ``token`` must rotate, or None for never.

    The earlier of ``issued_at + rotate_after`` and the expiry minus the provider's margin (at
    most half the token's lifetime). A token without expiry never forces a rotation; a token
    the provider cannot renew (a static token) is used until the gateway refuses it, since a
    rotation would only bring the same token back.
    """
    expires_at = token.expires_at
    if expires_at is None or not renewable:
        return None
    lifetime = expires_at - token.issued_at
    if lifetime > 0:
        margin = min(margin, lifetime / 2)
    return min(token.issued_at + rotate_after, expires_at - margin)


@dataclass(frozen=True, slots=True)
class Ended:
    """How a connection ended."""

    #: Why it ended; None when it never started because a stop was asked first.
    failure: Failure | None
    #: Our ``complete`` (or the server's) preceded the end: the stream was completed (the gap
    #: counts from now) and a clean close is a planned rotation, not a failure.
    completed: bool = False
    #: Whether an event frame arrived (progress: the policy's failure counters restart).
    progress: bool = False
    #: Whether the subscription was sent (the connection got that far).
    subscribed: bool = False
    #: The token used, if one was fetched (invalidated on a refresh or a rotation).
    token: AccessToken | None = None

    @property
    def planned(self) -> bool:
        """A clean close after a complete: a rotation (or a stop), not a failure."""
        return (
            self.completed and self.failure is not None and self.failure.kind is FailureKind.CLOSE
        )


class SessionStart:
    """The buffer's marker of a new subscription: the frames after it are its own, and its
    first event is checked against the offset it asked for (``asked``)."""

    __slots__ = ("asked", "session")

    def __init__(self, session: Session, asked: int | None) -> None:
        self.session = session
        self.asked = asked


class Session:
    """One connection of a stream (one subscription at most, §2)."""

    def __init__(
        self,
        config: StreamConfig,
        *,
        clock: Clock,
        buffer: Buffer,
        life: Lifecycle,
        label: str,
        on_upgrade: Callable[[], None] | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.on_upgrade = on_upgrade
        self.on_subscribed = on_subscribed
        self.clock = clock
        self.buffer = buffer
        self.life = life
        self.label = label
        self.protocol = ClientProtocol(clock=clock.monotonic)
        #: Frames received so far (liveness reads it; no clock read per frame).
        self.arrivals = 0
        self.completing = False
        self.progress = False
        self.token: AccessToken | None = None
        self._ws: WebSocket | None = None
        self._streaming = False
        self._failure: Failure | None = None
        self._ended: asyncio.Future[Failure] = asyncio.get_running_loop().create_future()
        self._waiting: asyncio.Future[Any] | None = None
        self._query_id: str | None = None
        self._query_status: str | None = None
        self._timers: dict[str, TimerHandle] = {}
        self._alive_at = clock.monotonic()
        self._arrivals_seen = 0

    def __repr__(self) -> str:
        return f"Session({self.label}, state={self.protocol.state.value})"

    # --- the whole connection -----------------------------------------------------------------

    async def run(self, subscription: Callable[[], tuple[dict[str, Any], int | None]]) -> Ended:
        """Connect, subscribe with ``subscription()`` (called right before sending, so that it
        reflects every event seen until then: the payload and the offset it asks for) and wait
        until the connection ends."""
        subscribed = False
        try:
            token = self.token = await self._fetch_token()
            if self.on_upgrade is not None:
                # Counted right before the request leaves (after the token fetch, which can be
                # slow): the gateway counts upgrades when they arrive.
                self.on_upgrade()
            self._ws = await open_websocket(
                self.config.url,
                sink=self,
                subprotocol=SUBPROTOCOL,
                headers={"Authorization": f"Bearer {token.value}"},
                ssl=self.config.ssl,
                proxy=self.config.proxy,
                max_message_size=self.config.max_message_size,
                open_timeout=max(self.config.timings.init_timeout * 2, 10.0),
                logger=_ws_log,
            )
            await self._initialize(token)
            if self.config.standby:
                await self._stand_by()
            if not self.life.stopping:
                self._subscribe(*subscription())
                subscribed = True
            else:
                self._ws.close(1000, "stopped before subscribing")
            failure = await self._ended
        except Failed as exc:
            self.abort()
            failure = self._failure or exc.failure
        except asyncio.CancelledError:
            self.abort()
            raise
        except OhipError as exc:
            self.abort()
            failure = self._failure or failure_of(exc)
        finally:
            self._disarm()
            if self.buffer.reader is self._ws:
                self.buffer.attach(None)
        return Ended(failure, self.completing, self.progress, subscribed, self.token)

    async def _fetch_token(self) -> AccessToken:
        auth = self.config.auth
        token: AccessToken = await auth.get_token()
        deadline = self._deadline(token)
        if deadline is not None and self.clock.time() >= deadline:
            # After a long wait (lockout, 429, budget) the cached token may be past its rotation
            # deadline: a connection with it would have to rotate at once.
            auth.invalidate(token)
            token = await auth.get_token()
        register_secret(token.value, transient=True)
        return token

    def _deadline(self, token: AccessToken) -> float | None:
        return rotation_deadline(
            token,
            rotate_after=self.config.timings.rotate_after,
            margin=float(getattr(self.config.auth, "margin", 0.0)),
            renewable=self.config.token_renewable,
        )

    async def _initialize(self, token: AccessToken) -> None:
        """``connection_init`` with the token and the RAW application key (the hash only in
        the URL, §1), then wait for ``connection_ack``."""
        payload: dict[str, Any] = {
            "Authorization": f"Bearer {token.value}",
            "x-app-key": self.config.app_key,
        }
        enterprise_id = getattr(self.config.auth, "enterprise_id", None)
        if enterprise_id:
            payload["enterpriseId"] = enterprise_id
        self._send(self.protocol.connection_init(payload))
        seconds = self.config.timings.init_timeout
        if not await self._wait_for(seconds):
            raise Failed(
                Failure(FailureKind.NETWORK, reason=f"no connection_ack within {seconds:g} s")
            )

    async def _stand_by(self) -> None:
        """Oracle's active/standby pattern (§2): subscribe once the connection status query
        says Inactive; after seeing it Active, keep the gap before subscribing (§4)."""
        seen_active = False
        while True:
            op_id, frame = self.protocol.query(connection_status_query())
            self._query_id, self._query_status = op_id, None
            self._send(frame)
            if not await self._wait_for(self.config.timings.init_timeout):
                raise ProtocolError("the connection status query got no answer in time")
            status = self._query_status
            if status is None:
                raise ProtocolError("the connection status query returned no status")
            if status.casefold() != "active":
                if seen_active:
                    await self._idle(self.config.timings.complete_gap)
                return
            seen_active = True
            _log.info(
                "stream %s: another consumer is active; standing by for %.3g s",
                self.label,
                self.config.timings.complete_gap,
            )
            await self._idle(self.config.timings.complete_gap)
            if self.life.stopping:
                return

    async def _idle(self, seconds: float) -> None:
        """Wait on an open connection, pinging it every ping_interval (§4)."""
        left = seconds
        while left > 0 and not self._ended.done():
            step = min(self.config.timings.ping_interval, left)
            await self.clock.sleep(step)
            left -= step
            if not self._ended.done():
                self._send(self.protocol.ping())

    async def _wait_for(self, seconds: float) -> bool:
        """Wait until a control frame resolves the current wait (True), or ``seconds`` pass
        (False); raises :class:`Failed` if the connection ends meanwhile."""
        waiting = self._waiting = asyncio.get_running_loop().create_future()
        timer = self.clock.call_later(seconds, lambda: _resolve(waiting, False))
        try:
            await asyncio.wait({waiting, self._ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            self._waiting = None
        if waiting.done():
            return bool(waiting.result())
        raise Failed(self._ended.result())

    def _subscribe(self, payload: dict[str, Any], asked: int | None) -> None:
        self._send(self.protocol.subscribe(payload))
        self._streaming = True
        self.buffer.put(SessionStart(self, asked))
        if self.on_subscribed is not None:
            self.on_subscribed()
        assert self._ws is not None
        self.buffer.attach(self._ws)
        self.life.to(StreamState.LIVE)
        self._alive_at = self.clock.monotonic()
        self._arm("ping", self.config.timings.ping_interval, self._ping_tick)
        deadline = self._deadline(self.token) if self.token is not None else None
        if deadline is not None:
            self._arm("rotation", deadline - self.clock.time(), self._rotation_due)

    # --- frames (called by the transport) ---------------------------------------------------

    def frames_received(self, frames: list[RawFrame]) -> None:
        """The reader: event frames go to the buffer as they are, each run of them as one
        batch; any other frame is handled in its place. Once a stop was asked, event frames are
        dropped (they come again on the next run), so the drain reads on to the server's close
        instead of filling the buffer and pausing the socket in front of it."""
        self.arrivals += len(frames)
        run: list[RawFrame] = []
        for data in frames:
            if self._streaming and data.find(_NEXT) >= 0:
                run.append(data)
            else:
                self._events_received(run)
                run = []
                self.control(data)
        self._events_received(run)

    def _events_received(self, run: list[RawFrame]) -> None:
        if run:
            self.progress = True
            if not self.life.stopping:
                self.buffer.push(run)

    def connection_ended(self, failure: Failure) -> None:
        self._streaming = False
        if not self._ended.done():
            self._ended.set_result(self._failure or failure)
        self.buffer.wake()

    def control(self, data: RawFrame) -> None:
        """Handle a frame that is not an event of the subscription (or hand it to the buffer
        if it is one after all)."""
        try:
            item = self.protocol.receive(data)
        except ProtocolError as exc:
            self.fail(Failure(FailureKind.MALFORMED, reason=redact(str(exc))))
            return
        if type(item) is Next or type(item) is InvalidNext:
            self.buffer.push([data])  # in order with the other event frames
            return
        self.handle(item)

    def handle(self, item: ProtocolEvent) -> None:
        """React to a control event (from :meth:`control`, or from the caller's slow path)."""
        if type(item) is Ping:
            for frame in self.protocol.data_to_send():
                self._send(frame)
        elif type(item) is ConnectionAck:
            self._resolve_wait(True)
        elif type(item) is QueryResult:
            connection = (item.data or {}).get("connection")
            if isinstance(connection, dict) and isinstance(connection.get("status"), str):
                self._query_status = str(connection["status"])
        elif type(item) is Complete:
            if item.id == self._query_id:
                self._resolve_wait(True)
            else:
                self._server_completed()
        elif type(item) is ErrorMessage:
            message = redact(item.message)
            if item.id == self._query_id:
                self.fail(Failure(FailureKind.MALFORMED, reason=f"status query failed: {message}"))
            else:
                self.fail_fatally(
                    SubscriptionError(
                        f"the gateway refused the subscription: {message}", reason=message
                    )
                )

    def _resolve_wait(self, value: bool) -> None:
        if self._waiting is not None:
            _resolve(self._waiting, value)

    # --- ending -------------------------------------------------------------------------------

    def complete(self, why: str) -> None:
        """Send ``complete``: the server sends what is in flight and closes (§4)."""
        if self.protocol.state is not State.SUBSCRIBED or self._ended.done():
            return
        _log.info("stream %s: completing the subscription (%s)", self.label, why)
        self._send(self.protocol.complete())
        self._drain()

    def _server_completed(self) -> None:
        # The server ended the subscription; its close ends the connection. If the close never
        # comes, close ourselves after drain_timeout and resume (a complete without a close).
        # After our own complete, the server's answer changes nothing: the drain is under way.
        if self.completing:
            return
        _log.info("stream %s: the server completed the subscription", self.label)
        self._drain()

    def _drain(self) -> None:
        self.completing = True
        self.buffer.cancel_when_low()
        self.life.to(StreamState.DRAINING)
        self._cancel("rotation")
        self._arm("drain", self.config.timings.drain_timeout, self._drain_expired)

    def _drain_expired(self) -> None:
        _log.warning(
            "stream %s: the server did not close within %.3g s of complete; closing with 1000",
            self.label,
            self.config.timings.drain_timeout,
        )
        if self._ws is not None:
            self._ws.close(1000, "completed")

    def fail(self, failure: Failure) -> None:
        """End the connection now because of ``failure`` (the first one is what is reported)."""
        if self._failure is None:
            self._failure = failure
        self.abort()

    def fail_fatally(self, error: OhipError) -> None:
        """End the connection with an error that must reach the caller."""
        self.fail(Failure(FailureKind.FATAL, reason=str(error), error=error))

    def abort(self) -> None:
        """Drop the connection at once."""
        self._streaming = False
        if self._ws is not None:
            self._ws.abort()

    @property
    def ended(self) -> bool:
        return self._ended.done()

    # --- timers ---------------------------------------------------------------------------------

    def _ping_tick(self) -> None:
        if self._ended.done():
            return
        self._send(self.protocol.ping())
        now = self.clock.monotonic()
        if self.arrivals != self._arrivals_seen or self.buffer.paused:
            # A frame that arrived since the last look is a sign of life; a paused socket is
            # the caller's backpressure, not the server's silence.
            self._arrivals_seen = self.arrivals
            self._alive_at = now
        silent = now - max(self.protocol.last_alive, self._alive_at)
        timeout = self.config.timings.liveness_timeout
        if silent > timeout:
            _log.warning(
                "stream %s: no pong and no event for %.3g s; dropping the connection",
                self.label,
                silent,
            )
            self.fail(
                Failure(FailureKind.LIVENESS, reason=f"no pong and no event for {silent:.3g} s")
            )
            return
        self._arm("ping", self.config.timings.ping_interval, self._ping_tick)

    def _rotation_due(self) -> None:
        if self.completing or self._ended.done() or self.life.stopping:
            return
        # Held back while the buffer is above its low-water mark (the drain must not meet a
        # full buffer); the buffer calls back once the caller took it below (no polling).
        self.life.to(StreamState.COMPLETING)
        self.buffer.when_low(lambda: self.complete("rotation before the token expires"))

    def _arm(self, name: str, delay: float, callback: Any) -> None:
        self._cancel(name)
        self._timers[name] = self.clock.call_later(max(0.0, delay), callback)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _disarm(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.buffer.cancel_when_low()

    def _send(self, frame: str) -> None:
        if self._ws is not None:
            self._ws.send_text(frame)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
