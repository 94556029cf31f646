"""One WebSocket connection of the emulator: graphql-transport-ws with OHIP's rules.

The session reads the client's frames, answers pings, runs the timers (init timeout, server
pings, idle close, token expiry) and sends a subscription's events. Every decision it makes is
asked of the pure parts: :mod:`._oauth` for ``connection_init``, :mod:`._graphql` for the
subscribe document, :mod:`._gateway` for the stream (4409, start position, resume, hold).
Transport timers use the loop's monotonic clock; OHIP's rules use the emulator clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ohip_stream._logging import get_logger
from ohip_stream.testing._eventlog import ChainLog, StoredEvent, dumps
from ohip_stream.testing._gateway import StartPlan, truncate_reason
from ohip_stream.testing._graphql import (
    HELP,
    Invalid,
    QueryRequest,
    Selection,
    answer_query,
    input_error,
    read_subscribe,
    renderer,
    subscribe_id,
)
from ohip_stream.testing._oauth import InitRefusal, Token, check_init
from ohip_stream.testing._records import ClosedBy, ConnectionRecord, SubscribeRejection

if TYPE_CHECKING:
    from ohip_stream.testing._handlers import EmulatorServer

__all__ = ["Session"]

_log = get_logger("ohip_stream.testing")

_YIELD_EVERY = 64  # the sender yields to the loop this often, so reads and timers run
_PING = '{"type":"ping"}'
_PONG = '{"type":"pong"}'


class Session:
    """One WebSocket connection (protocol §1-§7)."""

    def __init__(
        self,
        server: EmulatorServer,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        record: ConnectionRecord,
        subprotocol_ok: bool,
    ) -> None:
        self.server = server
        self.ws = ws
        self.transport = transport
        self.record = record
        self.subprotocol_ok = subprotocol_ok
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.init_deadline = loop.time() + server.config.init_timeout
        self.last_client_ping = loop.time()
        self.init_received = False
        self.initialised = False
        self.token: Token | None = None
        self.sub_id: str | None = None
        self.log: ChainLog | None = None
        self.frame_prefix = ""
        self.completing = False  # the client sent complete: send what is in flight, then close
        self.complete_budget = 0
        self.server_completed = False  # the server sent complete and keeps the socket open
        self.closing = False
        self.scan_position = 0
        self.resume_position: int | None = None
        self.last_sent: StoredEvent | None = None
        self.deferred_pongs = 0
        self.sender: asyncio.Task[None] | None = None
        self.keepalive: asyncio.Task[None] | None = None
        self.close_task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.poke = asyncio.Event()  # wakes the keepalive timer early (after the ack)

    @property
    def live_subscription(self) -> bool:
        """Subscribed, not completed by the server, and the socket not closing."""
        return self.sub_id is not None and not self.closing and not self.server_completed

    # --- closing ------------------------------------------------------------------------------

    def _set_closed(self, code: int, reason: str, by: ClosedBy) -> bool:
        record = self.record
        if record.closed_by is not None:
            return False
        record.close_code = code
        record.close_reason = reason
        record.closed_by = by
        record.closed_at = self.server.clock()
        record.closed_monotonic = time.monotonic()
        self.closing = True
        # protocol §7: the stream is held only while the socket is open; release it now, so
        # that a client reconnecting the moment it sees the close is not refused
        self._release()
        return True

    def _release(self) -> None:
        chain_code = self.record.chain_code
        if chain_code is None or self.log is None:
            return
        closed_at = self.record.closed_at
        self.server.gateway.release(
            self.record.id,
            chain_code,
            dropped=self.record.close_code == 1006,
            resume_position=self.resume_position,
            at=closed_at if closed_at is not None else self.server.clock(),
        )

    def request_close(self, code: int, reason: str) -> None:
        """Close from the server with ``code``; the wire carries at most 123 bytes of reason."""
        if code == 1006:  # 1006 cannot be sent in a close frame: it means an abrupt drop
            self.abort()
            return
        if not self._set_closed(code, reason, "server"):
            return
        _log.debug("connection %d: server closes with %d %s", self.record.id, code, reason)
        self.close_task = self.loop.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=truncate_reason(reason))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self._set_closed(1006, "connection dropped by the emulator", "abort")
        if self.transport is not None:
            self.transport.abort()

    def wake(self) -> None:
        """Wake the sender (after ``complete`` or a close)."""
        if self.log is not None:
            self.server.spawn(self.server.notify_log(self.log.chain_code))

    async def send_text(self, text: str) -> bool:
        """Send one frame; ``False`` when the connection is already going away."""
        if self.closing:
            return False
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def send_pong(self) -> None:
        """Answer one client ping."""
        if await self.send_text(_PONG):
            self.record.pongs_sent += 1

    # --- the reader -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the client's frames until the connection ends."""
        self.keepalive = self.loop.create_task(self._keepalive())
        try:
            if not self.subprotocol_ok:
                # graphql-ws: 4406 when the client did not ask for graphql-transport-ws
                self.request_close(4406, "Subprotocol not acceptable")
            while await self._read_one():
                pass
        finally:
            await self._finish()

    async def _read_one(self) -> bool:
        """Handle one frame of the client; ``False`` once the connection is over."""
        msg = await self.ws.receive()
        if msg.type is WSMsgType.TEXT:
            try:
                await self._on_text(msg.data)
            except Exception:
                # graphql-ws: 4500 for an internal error; the emulator must not hang
                _log.exception("connection %d: internal error", self.record.id)
                self.request_close(4500, "Internal server error")
            return True
        if msg.type is WSMsgType.BINARY:
            self.record.client_messages.append((self.server.clock(), "binary"))
            self.request_close(4400, "Invalid message received")
            return True
        if msg.type is WSMsgType.CLOSE:
            self._set_closed(int(msg.data), msg.extra or "", "client")
        # CLOSE, CLOSING, CLOSED, ERROR: the peer closed, or the transport went away
        return False

    async def _finish(self) -> None:
        # No close frame either way: the client vanished (it sees, and we record, 1006).
        self._set_closed(1006, "connection lost", "client")
        self.closing = True
        tasks = [task for task in (self.keepalive, self.sender) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.close_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.close_task), 5.0)
        self._release()
        if self.record.chain_code is not None and self.log is not None:
            self.server.gateway.forget(self.record.id, self.record.chain_code)
        self.server.sessions.discard(self)
        self.done.set()
        _log.info(
            "connection %d closed by %s: %s %s",
            self.record.id,
            self.record.closed_by,
            self.record.close_code,
            self.record.close_reason,
        )

    # --- timers: init timeout, server pings, idle close, token expiry ------------------------

    async def _keepalive(self) -> None:
        next_ping: float | None = None
        while not self.closing:
            now = self.loop.time()
            if not self.initialised:
                if now >= self.init_deadline:
                    # graphql-ws: no connection_init within the timeout -> 4408
                    self.request_close(4408, "Connection initialisation timeout")
                    return
                wake = self.init_deadline
            else:
                if next_ping is None:
                    next_ping = now + self.server.config.server_ping_interval
                woke = await self._live_timers(now, next_ping)
                if woke is None:
                    return
                next_ping, wake = woke
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.poke.wait(), max(0.0, wake - self.loop.time()))
            self.poke.clear()

    async def _live_timers(self, now: float, next_ping: float) -> tuple[float, float] | None:
        """Run the timers of an acknowledged connection; the next ping and wake-up times."""
        config = self.server.config
        idle_deadline = self.last_client_ping + config.idle_timeout
        if now >= idle_deadline:
            # protocol §4: a connection without client pings is closed
            self.request_close(1000, "idle: no ping received")
            return None
        if self.token is not None and self.server.clock() >= self.token.expires_at:
            self.request_close(4401, "token expired")  # protocol §4: tokens last 60 minutes
            return None
        if now >= next_ping:
            await self.send_text(_PING)  # protocol §4: server pings
            next_ping = now + config.server_ping_interval
        return next_ping, min(idle_deadline, next_ping, now + 1.0)

    # --- the client's messages ------------------------------------------------------------------

    async def _on_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            kind = "?"
        self.record.client_messages.append((self.server.clock(), kind))
        if not isinstance(message, dict) or kind == "?":
            self.request_close(4400, "Invalid message received")
        elif kind == "ping":
            await self._on_ping()
        elif kind == "pong":
            pass
        elif kind == "connection_init":
            await self._on_init(message)
        elif not self.initialised:
            # graphql-ws: anything but init/ping/pong before the ack -> 4401
            self.request_close(4401, "Unauthorized")
        elif kind == "subscribe":
            await self._on_subscribe(message)
        elif kind == "complete":
            self._on_complete(message)
        else:
            self.request_close(4400, f"Invalid message received: unexpected type {kind!r}")

    async def _on_ping(self) -> None:
        self.record.pings_received += 1
        self.last_client_ping = self.loop.time()
        if self.server.pong_deferral > 0:  # protocol §4: pongs held during a burst
            self.deferred_pongs += 1
        else:
            await self.send_pong()

    async def _on_init(self, message: Mapping[str, Any]) -> None:
        server = self.server
        if self.init_received:
            self.request_close(4429, "Too many initialisation requests")  # graphql-ws
            return
        self.init_received = True
        checked = check_init(
            message.get("payload"),
            server.tokens,
            server.credentials,
            server.gateway.key_hash,
            revoked=server.credentials_revoked,
            now=server.clock(),
        )
        if isinstance(checked, InitRefusal):
            self.request_close(checked.code, checked.reason)  # protocol §1, §5: 4401
            return
        self.token = checked
        self.initialised = True
        self.record.initialised_at = server.clock()
        self.poke.set()
        await self.send_text('{"type":"connection_ack"}')

    async def _on_subscribe(self, message: Mapping[str, Any]) -> None:
        sub_id = subscribe_id(message)
        if sub_id is None:
            self.request_close(4400, "Invalid message received: subscribe needs id and query")
            return
        if sub_id == self.sub_id:
            self.request_close(4409, f"Subscriber for {sub_id} already exists")  # graphql-ws
            return
        request = read_subscribe(message["payload"])
        if isinstance(request, Invalid):
            self.request_close(request.code, request.reason)  # protocol §2, §5: 4400
            return
        if isinstance(request, QueryRequest):
            await self._answer_query(sub_id, request)
            return
        self.record.subscribe_inputs.append(dict(request.values))
        error = input_error(request.values)
        if error is not None:
            self.request_close(4400, error)  # protocol §2: limits of NewEventInput
            return
        if self.sub_id is not None:
            # one subscription per connection; graphql-ws answers a second with 4409
            self.request_close(4409, f"Subscriber for {sub_id} already exists")
            return
        self._accept(sub_id, request.values, request.selection)

    def _accept(self, sub_id: str, values: Mapping[str, Any], selection: Selection | None) -> None:
        server = self.server
        gateway = server.gateway
        chain_code: str = values["chainCode"]
        now = server.clock()
        refusal = gateway.admit(self.record.id, chain_code, now)
        if refusal is not None:
            # protocol §7: a refused subscription holds nothing
            server.subscribe_rejections.append(
                SubscribeRejection(now, self.record.id, 4409, refusal)
            )
            self.request_close(4409, refusal)
            return
        plan = gateway.accept(self.record.id, chain_code, values, now)
        self.sub_id = sub_id
        self.log = gateway.log(chain_code)
        self.scan_position = plan.position
        self.resume_position = plan.position
        record = self.record
        record.subscription_id = sub_id
        record.chain_code = chain_code
        record.stream_key = gateway.stream(chain_code).id
        record.subscribed_at = now
        record.subscribed_monotonic = time.monotonic()
        self.frame_prefix = (
            '{"id":' + dumps(sub_id) + ',"type":"next","payload":{"data":{"newEvent":'
        )
        _log.info(
            "connection %d subscribed to %s from offset %d", record.id, chain_code, plan.position
        )
        shape = None if selection is None or selection.full else selection
        self.sender = self.loop.create_task(self._send_events(plan, shape))

    async def _answer_query(self, query_id: str, request: QueryRequest) -> None:
        # protocol §2, §7: query { connection { id status } } tells whether a consumer is active
        root = {"connection": self.server.gateway.connection_status(), "getHelp": HELP}
        payload = answer_query(request, root)
        await self.send_text(dumps({"id": query_id, "type": "next", "payload": payload}))
        await self.send_text(dumps({"id": query_id, "type": "complete"}))

    def _on_complete(self, message: Mapping[str, Any]) -> None:
        if (
            self.sub_id is None
            or message.get("id") != self.sub_id
            or self.completing
            or self.server_completed
        ):
            return  # graphql-ws: a complete for an unknown or finished id is ignored
        now = self.server.clock()
        # protocol §4: stop taking new events, send what is in flight, then the SERVER closes
        self.completing = True
        self.complete_budget = self.server.config.complete_inflight
        self.record.completed_at = now
        self.record.complete_before_close = True
        if self.record.chain_code is not None:
            self.server.gateway.complete(self.record.chain_code, now)
        self.wake()

    async def complete_from_server(self) -> bool:
        """Send ``complete`` for the live subscription and keep the socket open (a fault).

        The sender stops at once (no ``next`` follows the ``complete``); pings are still
        answered. The stream stays held until the socket closes, and the gap after
        ``complete`` (protocol §4) is counted from now. ``False`` if nothing was live.
        """
        if not self.live_subscription or self.completing or self.record.chain_code is None:
            return False
        now = self.server.clock()
        self.server_completed = True  # checked by the sender before each frame
        self.record.server_completed_at = now
        self.server.gateway.complete(self.record.chain_code, now)
        self.wake()
        return await self.send_text(dumps({"id": self.sub_id, "type": "complete"}))

    # --- the sender -----------------------------------------------------------------------------

    async def _wait_for_events(self, log: ChainLog, index: int) -> None:
        events = log.events
        changed = self.server.log_changed(log.chain_code)
        async with changed:
            await changed.wait_for(
                lambda: (
                    len(events) > index or self.completing or self.closing or self.server_completed
                )
            )

    def _note_sent(self, stored: StoredEvent, position: int) -> None:
        record = self.record
        self.last_sent = stored
        self.resume_position = position
        record.events_sent += 1
        if record.first_offset_sent is None:
            record.first_offset_sent = stored.offset_text
        record.last_offset_sent = stored.offset_text
        if self.completing:
            self.complete_budget -= 1
            record.events_after_complete += 1

    async def _send_events(self, plan: StartPlan, selection: Selection | None) -> None:
        log = self.log
        assert log is not None
        server = self.server
        send = self.ws.send_str
        render = renderer(plan.delta, selection)
        prefix = self.frame_prefix
        events = log.events  # appended in place by publish()
        passes = plan.passes
        position = plan.position
        sent_since_yield = 0
        try:
            while not self.closing and not self.server_completed:
                index = log.index_of(position)
                if index >= len(events):
                    if self.completing:
                        break
                    await self._wait_for_events(log, index)
                    # retention moves with the clock (protocol §6)
                    oldest = server.gateway.oldest_retained(log.chain_code, server.clock())
                    position = max(position, oldest)
                    continue
                if self.completing and self.complete_budget <= 0:
                    break
                stored = events[index]
                position += 1
                self.scan_position = position
                if passes(stored.hotel_id):  # protocol §2: the hotelCode filter
                    # backpressure: the write is awaited, a slow client slows this loop
                    await send(prefix + render(stored) + "}}}")
                    self._note_sent(stored, position)
                    sent_since_yield += 1
                    if sent_since_yield >= _YIELD_EVERY:
                        sent_since_yield = 0
                        await asyncio.sleep(0)
                if server.progress_waiters:
                    await server.notify_progress()
        except (ConnectionError, RuntimeError):
            return
        if self.completing and not self.closing:
            # protocol §4: the in-flight events are out; the server closes the socket
            self.request_close(1000, "Normal Closure")
