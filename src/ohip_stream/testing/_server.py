"""The emulator's server: an aiohttp app that behaves like an OHIP gateway (protocol §9).

One port serves ``POST /oauth/v1/tokens`` (protocol §8) and the WebSocket upgrade of
``GET /subscriptions?key=<hash>`` (protocol §1), speaking graphql-transport-ws with OHIP's rules.
Everything here runs on the emulator's own event loop (see ``_emulator.py``); the public
:class:`~ohip_stream.testing.Emulator` calls in through ``run_coroutine_threadsafe``.

Two clocks: the emulator clock (``clock=``, wall seconds, injectable) drives what OHIP measures in
wall time (token expiry, the gap after ``complete``, holds after a drop, the 24-hour resume
window, retention, the upgrade budget, the records); the loop's monotonic clock drives the
transport timers (init timeout, server pings, idle close), so a test that freezes ``clock``
still sees its sockets behave.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import functools
import hashlib
import hmac
import json
import secrets
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values, get_variable_values
from pydantic import BaseModel

from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import get_logger, install_redaction, register_secret
from ohip_stream._query import load_schema, validate_input
from ohip_stream.testing._events import EventFactory, encoded_size, make_detail
from ohip_stream.testing._records import (
    ClosedBy,
    ConnectionRecord,
    SubscribeRejection,
    UpgradeRecord,
)

__all__ = ["EmulatorConfig", "EmulatorServer", "hash_app_key", "truncate_reason"]

_log = get_logger("ohip_stream.testing")

SUBPROTOCOL = "graphql-transport-ws"
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
_YIELD_EVERY = 64  # the sender yields to the loop this often, so reads and timers run

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_HELP = {
    "overview": "The ohip-stream emulator: a local stand-in for the OHIP Streaming API.",
    "configuration": "Subscribe to newEvent(input: {chainCode: ...}) after connection_init.",
    "connection": {
        "help": "Send connection_init with Authorization and x-app-key, ping every 10 s.",
        "errors": "4400 bad input, 4401 bad token or key, 4409 stream in use, 4429 re-init.",
    },
    "events": {
        "payload": "EventHeader: metadata { offset uniqueEventId } moduleName eventName ...",
        "replaying": 'offset: "N" replays event N and later; offsetType: "highest" the newest.',
    },
    "slack": "n/a",
    "email": "n/a",
}


def hash_app_key(app_key: str) -> str:
    """The ``key`` query parameter for ``app_key``: lower-case hex SHA-256 (protocol §1)."""
    return hashlib.sha256(app_key.encode("utf-8")).hexdigest()


def truncate_reason(reason: str, limit: int = MAX_CLOSE_REASON_BYTES) -> bytes:
    """``reason`` as UTF-8, cut to ``limit`` bytes without splitting a character (protocol §5)."""
    data = reason.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class EmulatorConfig:
    """Every setting of the emulator (seconds on the emulator clock unless said otherwise)."""

    host: str = "127.0.0.1"
    port: int = 0
    chain_code: str = "OHIPCN"
    token_ttl: float = 3600.0
    complete_gap: float = 10.0
    hold_after_drop: float = 0.0
    init_timeout: float = 5.0  # loop clock
    idle_timeout: float = 300.0  # loop clock
    resume_ttl: float = 86400.0
    retention: float = 7 * 86400.0
    upgrade_budget: tuple[int, float] = (150, 120.0)
    server_ping_interval: float = 30.0  # loop clock
    complete_inflight: int = 3
    first_offset: int = 1
    seed: int | None = 0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    fast_replay: bool = False


@dataclass(frozen=True)
class Credentials:
    """What the emulator's OAuth endpoint and ``connection_init`` accept."""

    app_key: str
    client_id: str
    client_secret: str
    enterprise_id: str
    username: str
    password: str

    @classmethod
    def generate(cls) -> Credentials:
        """Fresh random credentials (app key: a lower-case UUID4, as Oracle's look)."""
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return cls(
            app_key=str(uuid.uuid4()),
            client_id=f"emulator_client_{secrets.token_hex(4)}",
            client_secret=secrets.token_urlsafe(24),
            enterprise_id="EMU" + "".join(secrets.choice(alphabet) for _ in range(5)),
            username=f"emulator_user_{secrets.token_hex(3)}",
            password=secrets.token_urlsafe(18),
        )


class _Token:
    __slots__ = ("expires_at", "issued_at", "subject", "value")

    def __init__(self, value: str, subject: str, issued_at: float, expires_at: float) -> None:
        self.value = value
        self.subject = subject
        self.issued_at = issued_at
        self.expires_at = expires_at


class _StoredEvent:
    """One event of a chain's log, pre-encoded once at publish time."""

    __slots__ = ("_delta", "encoded", "hotel_id", "offset", "offset_text", "published_at")

    def __init__(self, offset: int, published_at: float, hotel_id: str | None, encoded: str):
        self.offset = offset
        self.offset_text = str(offset)
        self.published_at = published_at
        self.hotel_id = hotel_id
        self.encoded = encoded
        self._delta: str | None = None

    def data(self) -> Any:
        return json.loads(self.encoded)

    def delta(self) -> str:
        """The event with only the detail elements whose value changed (``delta: true``)."""
        if self._delta is None:
            data = self.data()
            detail = data.get("detail") if isinstance(data, dict) else None
            if isinstance(detail, list):
                data["detail"] = [
                    item
                    for item in detail
                    if not isinstance(item, dict) or item.get("oldValue") != item.get("newValue")
                ]
                self._delta = _dumps(data)
            else:
                self._delta = self.encoded
        return self._delta


class _ChainLog:
    """The ordered event log of one chain: offsets are consecutive integers (protocol §6)."""

    def __init__(self, chain_code: str, first_offset: int) -> None:
        self.chain_code = chain_code
        self.first_offset = first_offset
        self.events: list[_StoredEvent] = []
        self.times: list[float] = []
        # An opaque uniqueEventId: a random prefix per log and the offset in hex.
        base = uuid.uuid4().hex
        self._unique_prefix = f"{base[:8]}-{base[8:12]}-4{base[13:16]}-{base[16:20]}-"
        self.changed = asyncio.Condition()

    @property
    def next_offset(self) -> int:
        return self.first_offset + len(self.events)

    def unique_id(self, offset: int) -> str:
        return f"{self._unique_prefix}{offset:012x}"

    def append(self, published_at: float, hotel_id: str | None, encoded: str) -> _StoredEvent:
        stored = _StoredEvent(self.next_offset, published_at, hotel_id, encoded)
        self.events.append(stored)
        self.times.append(published_at)
        return stored

    def first_retained(self, cutoff: float) -> int:
        """The offset of the oldest event published at or after ``cutoff`` (7-day retention)."""
        return self.first_offset + bisect.bisect_left(self.times, cutoff)

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


class _Stream:
    """One stream: (application key, chain code). The emulator has one application key."""

    def __init__(self, chain_code: str, stream_id: str) -> None:
        self.chain_code = chain_code
        self.id = stream_id
        self.holder: _Session | None = None
        self.held_until = 0.0
        self.last_complete_at: float | None = None
        self.resume_offset: int | None = None
        self.resume_since: float | None = None
        self.resume_owner: _Session | None = None  # the closing connection still sending


# --- selections: which fields of EventHeader a subscription asked for -------------------------


class _Selection:
    """The fields a subscription selected, to shape each event like a GraphQL response."""

    def __init__(self, type_name: str, fields: list[tuple[str, str, _Selection | None]]):
        self.type_name = type_name
        self.fields = fields
        self.full = False

    def apply(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.apply(item) for item in value]
        if not isinstance(value, dict):
            return value
        shaped: dict[str, Any] = {}
        for key, name, sub in self.fields:
            if name == "__typename":
                shaped[key] = self.type_name
                continue
            item = value.get(name)
            shaped[key] = sub.apply(item) if sub is not None and item is not None else item
        return shaped


@functools.lru_cache(maxsize=256)
def _parse_and_validate(query: str) -> tuple[DocumentNode | None, str]:
    """The parsed document, or ``None`` and the first syntax or validation error (cached)."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, exc.message
    errors = validate(load_schema(), document)
    if errors:
        return None, errors[0].message
    return document, ""


def _collect_fields(
    selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    found: list[FieldNode] = []
    for node in selection_set.selections:
        if isinstance(node, FieldNode):
            found.append(node)
        elif isinstance(node, InlineFragmentNode):
            found.extend(_collect_fields(node.selection_set, fragments))
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                found.extend(_collect_fields(fragment.selection_set, fragments))
    return found


def _named_type(graphql_type: Any) -> Any:
    while isinstance(graphql_type, GraphQLNonNull | GraphQLList):
        graphql_type = graphql_type.of_type
    return graphql_type


def _build_selection(
    selection_set: SelectionSetNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    object_type: GraphQLObjectType,
) -> _Selection:
    entries: list[tuple[str, str, _Selection | None]] = []
    full = True
    for node in _collect_fields(selection_set, fragments):
        name = node.name.value
        key = node.alias.value if node.alias is not None else name
        sub: _Selection | None = None
        if node.selection_set is not None and name in object_type.fields:
            inner = _named_type(object_type.fields[name].type)
            if isinstance(inner, GraphQLObjectType):
                sub = _build_selection(node.selection_set, fragments, inner)
                full = full and sub.full
        if key != name:
            full = False
        entries.append((key, name, sub))
    names = [name for _, name, _ in entries]
    selection = _Selection(object_type.name, entries)
    selection.full = (
        full
        and len(set(names)) == len(names) == len(object_type.fields)
        and set(names) == set(object_type.fields)
    )
    return selection


# --- one WebSocket connection ---------------------------------------------------------------


class _Session:
    """One WebSocket connection: graphql-transport-ws with OHIP's rules (protocol §1-§7)."""

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
        self.token: _Token | None = None
        self.sub_id: str | None = None
        self.stream: _Stream | None = None
        self.log: _ChainLog | None = None
        self.frame_prefix = ""
        self.completing = False
        self.complete_budget = 0
        self.closing = False
        self.scan_position = 0
        self.resume_position: int | None = None
        self.last_sent: _StoredEvent | None = None
        self.deferred_pongs = 0
        self.sender: asyncio.Task[None] | None = None
        self.keepalive: asyncio.Task[None] | None = None
        self.close_task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.poke = asyncio.Event()  # wakes the keepalive timer early (after the ack)

    # --- closing ------------------------------------------------------------------------------

    def _set_closed(self, code: int, reason: str, by: ClosedBy) -> bool:
        if self.record.closed_by is not None:
            return False
        self.record.close_code = code
        self.record.close_reason = reason
        self.record.closed_by = by
        self.record.closed_at = self.server.clock()
        self.closing = True
        # protocol §7: the stream is held only while the socket is open; release it now, so
        # that a client reconnecting the moment it sees the close is not refused
        self.server.release(self)
        return True

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
        log = self.log
        if log is not None:
            self.server.spawn(log.notify())

    async def send_text(self, text: str) -> bool:
        """Send one frame; ``False`` when the connection is already going away."""
        if self.closing:
            return False
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return False
        return True

    # --- the reader -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the client's frames until the connection ends."""
        self.keepalive = self.loop.create_task(self._keepalive())
        try:
            if not self.subprotocol_ok:
                # graphql-ws: 4406 when the client did not ask for graphql-transport-ws
                self.request_close(4406, "Subprotocol not acceptable")
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.TEXT:
                    try:
                        await self._on_text(msg.data)
                    except Exception:
                        # graphql-ws: 4500 for an internal error; the emulator must not hang
                        _log.exception("connection %d: internal error", self.record.id)
                        self.request_close(4500, "Internal server error")
                elif msg.type is WSMsgType.BINARY:
                    self.record.client_messages.append((self.server.clock(), "binary"))
                    self.request_close(4400, "Invalid message received")
                elif msg.type is WSMsgType.CLOSE:
                    self._set_closed(int(msg.data), msg.extra or "", "client")
                    break
                else:  # CLOSING, CLOSED, ERROR: the server closed, or the transport went away
                    break
        finally:
            await self._finish()

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
        self.server.release(self)
        self.server.sessions.discard(self)
        if self.stream is not None and self.stream.resume_owner is self:
            self.stream.resume_owner = None
        self.done.set()
        _log.info(
            "connection %d closed by %s: %s %s",
            self.record.id,
            self.record.closed_by,
            self.record.close_code,
            self.record.close_reason,
        )

    async def _keepalive(self) -> None:
        config = self.server.config
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
                    next_ping = now + config.server_ping_interval
                idle_deadline = self.last_client_ping + config.idle_timeout
                if now >= idle_deadline:
                    # protocol §4: a connection without client pings is closed
                    self.request_close(1000, "idle: no ping received")
                    return
                if self.token is not None and self.server.clock() >= self.token.expires_at:
                    self.request_close(4401, "token expired")
                    return
                if now >= next_ping:
                    await self.send_text('{"type":"ping"}')  # protocol §4: server pings
                    next_ping = now + config.server_ping_interval
                wake = min(idle_deadline, next_ping, now + 1.0)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.poke.wait(), max(0.0, wake - self.loop.time()))
            self.poke.clear()

    async def _on_text(self, data: str) -> None:
        server = self.server
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            kind = "?"
        self.record.client_messages.append((server.clock(), kind))
        if not isinstance(message, dict) or kind == "?":
            self.request_close(4400, "Invalid message received")
            return
        if kind == "ping":
            self.record.pings_received += 1
            self.last_client_ping = self.loop.time()
            if server.pong_deferral > 0:  # protocol §4: pongs held during a burst
                self.deferred_pongs += 1
            elif await self.send_text('{"type":"pong"}'):
                self.record.pongs_sent += 1
            return
        if kind == "pong":
            return
        if kind == "connection_init":
            await self._on_init(message)
            return
        if not self.initialised:
            # graphql-ws: anything but init/ping/pong before the ack -> 4401
            self.request_close(4401, "Unauthorized")
            return
        if kind == "subscribe":
            await self._on_subscribe(message)
        elif kind == "complete":
            self._on_complete(message)
        else:
            self.request_close(4400, f"Invalid message received: unexpected type {kind!r}")

    # --- connection_init (protocol §1) ------------------------------------------------------------

    async def _on_init(self, message: Mapping[str, Any]) -> None:
        server = self.server
        if self.init_received:
            self.request_close(4429, "Too many initialisation requests")  # graphql-ws
            return
        self.init_received = True
        payload = message.get("payload")
        fields = (
            {str(k).lower(): v for k, v in payload.items()} if isinstance(payload, dict) else {}
        )
        prefix = "Unauthorised - Invalid credentials - "
        if server.credentials_revoked:
            self.request_close(4401, prefix + "the credentials were revoked")
            return
        authorization = fields.get("authorization")
        if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
            self.request_close(4401, prefix + "send Authorization: Bearer <access token>")
            return
        token = server.tokens.get(authorization[len("Bearer ") :].strip())
        if token is None:
            self.request_close(4401, prefix + "Invalid Auth Token")
            return
        if server.clock() >= token.expires_at:
            self.request_close(4401, "token expired")
            return
        app_key = fields.get("x-app-key")
        if isinstance(app_key, str) and app_key.lower() == server.key_hash:
            self.request_close(
                4401,
                prefix + "Check you are sending the application key, not the hash: "
                "send the application key, not its hash",
            )
            return
        if app_key != server.credentials.app_key:
            self.request_close(4401, prefix + "Invalid API Key")
            return
        self.token = token
        self.initialised = True
        self.record.initialised_at = server.clock()
        self.poke.set()
        await self.send_text('{"type":"connection_ack"}')

    # --- subscribe (protocol §2) -----------------------------------------------------------------

    async def _on_subscribe(self, message: Mapping[str, Any]) -> None:
        server = self.server
        schema = load_schema()
        sub_id = message.get("id")
        payload = message.get("payload")
        if (
            not isinstance(sub_id, str)
            or not sub_id
            or not isinstance(payload, dict)
            or not isinstance(payload.get("query"), str)
        ):
            self.request_close(4400, "Invalid message received: subscribe needs id and query")
            return
        if sub_id == self.sub_id:
            self.request_close(4409, f"Subscriber for {sub_id} already exists")  # graphql-ws
            return
        document, error = _parse_and_validate(payload["query"])
        if document is None:
            self.request_close(4400, error)  # protocol §5: syntax or schema error -> 4400
            return
        operation_name = payload.get("operationName")
        operation = get_operation_ast(
            document, operation_name if isinstance(operation_name, str) else None
        )
        if operation is None:
            self.request_close(4400, "Unknown or ambiguous operation")
            return
        variables = payload.get("variables") or {}
        if not isinstance(variables, dict):
            self.request_close(4400, "variables must be an object")
            return
        if operation.operation is OperationType.QUERY:
            await self._answer_query(sub_id, document, variables, operation_name)
            return
        if operation.operation is not OperationType.SUBSCRIPTION:
            self.request_close(4400, "Only subscriptions and queries are supported")
            return
        coerced = get_variable_values(schema, operation.variable_definitions or (), variables)
        if isinstance(coerced, list):
            self.request_close(4400, coerced[0].message)
            return
        fragments = {
            node.name.value: node
            for node in document.definitions
            if isinstance(node, FragmentDefinitionNode)
        }
        roots = _collect_fields(operation.selection_set, fragments)
        subscription_type = schema.subscription_type
        assert subscription_type is not None
        if len(roots) != 1 or roots[0].name.value != "newEvent":
            self.request_close(4400, "Subscribe to exactly one field: newEvent")
            return
        field_node = roots[0]
        field_def = subscription_type.fields["newEvent"]
        try:
            arguments = get_argument_values(field_def, field_node, coerced)
        except GraphQLError as exc:
            self.request_close(4400, exc.message)
            return
        values = arguments.get("input")
        if not isinstance(values, dict):
            self.request_close(4400, "newEvent needs its input")
            return
        self.record.subscribe_inputs.append(dict(values))
        try:
            validate_input(values)  # protocol §2: limits of NewEventInput -> 4400
        except ConfigurationError as exc:
            self.request_close(4400, str(exc))
            return
        if self.sub_id is not None:
            # one subscription per connection; graphql-ws answers a second with 4409
            self.request_close(4409, f"Subscriber for {sub_id} already exists")
            return
        chain_code: str = values["chainCode"]
        refusal = server.admit(self, chain_code)
        if refusal is not None:
            server.subscribe_rejections.append(
                SubscribeRejection(server.clock(), self.record.id, 4409, refusal)
            )
            self.request_close(4409, refusal)
            return
        header_type = schema.get_type("EventHeader")
        assert isinstance(header_type, GraphQLObjectType)
        selection = (
            _build_selection(field_node.selection_set, fragments, header_type)
            if field_node.selection_set is not None
            else None
        )
        self._start(sub_id, chain_code, values, selection)

    def _start(
        self,
        sub_id: str,
        chain_code: str,
        values: Mapping[str, Any],
        selection: _Selection | None,
    ) -> None:
        server = self.server
        config = server.config
        stream = server.stream(chain_code)
        log = server.log(chain_code)
        now = server.clock()
        oldest = log.first_retained(now - config.retention)
        offset = values.get("offset")
        if offset is not None:
            start = max(int(offset), oldest)  # protocol §6: inclusive replay, within retention
        elif values.get("offsetType") == "highest":
            # protocol §6: "highest" starts AT the newest event (it is sent), then live events;
            # with an empty log, the next event published.
            start = max(log.next_offset - 1, oldest) if log.events else log.next_offset
        elif (
            stream.resume_offset is not None
            and stream.resume_since is not None
            and now - stream.resume_since < config.resume_ttl
        ):
            # protocol §6: without an offset, resume where this stream's last connection stopped
            start = max(stream.resume_offset, oldest)
        else:
            start = oldest  # first ever (or past 24 h): the oldest retained event
        hotel_code = values.get("hotelCode")
        hotels = (
            frozenset(code.strip() for code in hotel_code.split(",") if code.strip())
            if isinstance(hotel_code, str)
            else None
        )
        self.sub_id = sub_id
        self.stream = stream
        self.log = log
        self.scan_position = start
        self.resume_position = start
        if not config.fast_replay:
            stream.holder = self
        self.record.subscription_id = sub_id
        self.record.chain_code = chain_code
        self.record.subscribed_at = now
        self.frame_prefix = (
            '{"id":' + _dumps(sub_id) + ',"type":"next","payload":{"data":{"newEvent":'
        )
        _log.info(
            "connection %d subscribed to %s from offset %d", self.record.id, chain_code, start
        )
        plain = selection is None or selection.full
        delta = bool(values.get("delta"))
        self.sender = self.loop.create_task(
            self._send_events(start, hotels, delta, None if plain else selection)
        )

    async def _answer_query(
        self, query_id: str, document: DocumentNode, variables: dict[str, Any], name: Any
    ) -> None:
        # protocol §2: query { connection { id status } } tells whether the stream has a consumer
        stream = self.server.status_stream()
        root = {
            "connection": {
                "id": stream.id,
                "status": "Active" if stream.holder is not None else "Inactive",
            },
            "getHelp": _HELP,
        }
        result = execute_sync(
            load_schema(),
            document,
            root_value=root,
            variable_values=variables,
            operation_name=name if isinstance(name, str) else None,
        )
        await self.send_text(_dumps({"id": query_id, "type": "next", "payload": result.formatted}))
        await self.send_text(_dumps({"id": query_id, "type": "complete"}))

    def _on_complete(self, message: Mapping[str, Any]) -> None:
        if self.sub_id is None or message.get("id") != self.sub_id or self.completing:
            return  # graphql-ws: a complete for an unknown id is ignored
        now = self.server.clock()
        # protocol §4: stop taking new events, send what is in flight, then the SERVER closes
        self.completing = True
        self.complete_budget = self.server.config.complete_inflight
        self.record.completed_at = now
        self.record.complete_before_close = True
        if self.stream is not None:
            self.stream.last_complete_at = now  # the gap is counted from here (protocol §4)
        self.wake()

    # --- the sender -----------------------------------------------------------------------------

    def _render(self, stored: _StoredEvent, delta: bool, selection: _Selection | None) -> str:
        if selection is None:
            return stored.delta() if delta else stored.encoded
        data = json.loads(stored.delta() if delta else stored.encoded)
        return _dumps(selection.apply(data))

    async def _wait_for_events(self, log: _ChainLog, index: int) -> None:
        events = log.events
        async with log.changed:
            await log.changed.wait_for(
                lambda: len(events) > index or self.completing or self.closing
            )

    async def _send_events(
        self,
        position: int,
        hotels: frozenset[str] | None,
        delta: bool,
        selection: _Selection | None,
    ) -> None:
        log = self.log
        assert log is not None
        server = self.server
        record = self.record
        send = self.ws.send_str
        prefix = self.frame_prefix
        events = log.events  # appended in place by publish()
        first = log.first_offset
        plain = selection is None and not delta
        sent_since_yield = 0
        try:
            while not self.closing:
                index = position - first
                if index < len(events):
                    if self.completing and self.complete_budget <= 0:
                        break
                    stored = events[index]
                    position += 1
                    self.scan_position = position
                    if hotels is not None and stored.hotel_id not in hotels:
                        # protocol §2: hotelCode filter; chain-level events are excluded
                        if server.progress_waiters:
                            await server.notify_progress()
                        continue
                    body = stored.encoded if plain else self._render(stored, delta, selection)
                    # backpressure: the write is awaited, a slow client slows this loop
                    await send(prefix + body + "}}}")
                    self.last_sent = stored
                    self.resume_position = position
                    record.events_sent += 1
                    if record.first_offset_sent is None:
                        record.first_offset_sent = stored.offset_text
                    record.last_offset_sent = stored.offset_text
                    if self.completing:
                        self.complete_budget -= 1
                        record.events_after_complete += 1
                    if server.progress_waiters:
                        await server.notify_progress()
                    sent_since_yield += 1
                    if sent_since_yield >= _YIELD_EVERY:
                        sent_since_yield = 0
                        await asyncio.sleep(0)
                    continue
                if self.completing:
                    break
                await self._wait_for_events(log, index)
                # retention moves with the clock (protocol §6)
                cutoff = server.clock() - server.config.retention
                position = max(position, log.first_retained(cutoff))
        except (ConnectionError, RuntimeError):
            return
        if self.completing and not self.closing:
            # protocol §4: the in-flight events are out; the server closes the socket
            self.request_close(1000, "Normal Closure")


# --- the server -----------------------------------------------------------------------------


class EmulatorServer:
    """The gateway's state and its aiohttp app. Use it only on the emulator's event loop."""

    def __init__(
        self,
        config: EmulatorConfig,
        credentials: Credentials,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.clock = clock
        self.key_hash = hash_app_key(credentials.app_key)
        self.factory = EventFactory(config.seed)
        self._signing_key = secrets.token_bytes(32)
        self.tokens: dict[str, _Token] = {}
        self.logs: dict[str, _ChainLog] = {}
        self.streams: dict[str, _Stream] = {}
        self.sessions: set[_Session] = set()
        self.records: list[ConnectionRecord] = []
        self.upgrades: list[UpgradeRecord] = []
        self.subscribe_rejections: list[SubscribeRejection] = []
        self.credentials_revoked = False
        self.pong_deferral = 0
        self.progress_waiters = 0
        self._progress: asyncio.Condition | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._upgrade_times: deque[float] = deque()
        self._rejections: deque[int] = deque()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = config.port
        self._ssl_context = self._make_ssl_context()
        register_secret(
            credentials.app_key,
            self.key_hash,
            credentials.client_secret,
            credentials.password,
        )
        install_redaction()

    # --- lifecycle ------------------------------------------------------------------------------

    def _make_ssl_context(self) -> ssl.SSLContext | None:
        if self.config.ssl_certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.config.ssl_certfile, self.config.ssl_keyfile)
        return context

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context is not None else "http"

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/v1/tokens", self._token_endpoint)
        app.router.add_get("/subscriptions", self._subscriptions)
        app.router.add_route("*", "/{tail:.*}", self._wrong_url)
        return app

    async def start(self) -> None:
        """Listen (on the configured port, or the one bound before: a restart keeps it)."""
        # asyncio primitives belong to the loop that runs them: make them on this one.
        for log in self.logs.values():
            log.changed = asyncio.Condition()
        self._progress = asyncio.Condition()
        if self._runner is None:
            # access_log=None: the query string carries the key hash (protocol §1)
            runner = web.AppRunner(
                self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0
            )
            await runner.setup()
            self._runner = runner
        await self._listen()
        _log.info("emulator listening on %s://%s:%d", self.scheme, self.config.host, self.port)

    async def _listen(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.port,
            ssl_context=self._ssl_context,
            reuse_address=True,
        )
        await site.start()
        self._site = site
        self.port = site.port

    async def stop(self) -> None:
        """Close every connection (1001, as for maintenance), then stop listening."""
        for session in list(self.sessions):
            session.request_close(1001, "Going Away: the emulator is stopping")
        await self._wait_sessions(1.0)
        for session in list(self.sessions):
            session.abort()
        await self._wait_sessions(2.0)
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def restart(self) -> None:
        """Abort every connection, stop listening, listen again on the same port."""
        for session in list(self.sessions):
            session.abort()
        self._abort_http_connections()
        await self._wait_sessions(2.0)
        if self._site is not None:
            await self._site.stop()
        await self._listen()
        _log.info("emulator restarted on port %d", self.port)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _abort_http_connections(self) -> None:
        runner = self._runner
        server = runner.server if runner is not None else None
        if server is None:
            return
        for handler in server.connections:
            transport = handler.transport
            if transport is not None:
                transport.abort()

    async def _wait_sessions(self, timeout: float) -> None:
        waiting = [session.done.wait() for session in list(self.sessions)]
        if not waiting:
            return
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), timeout)

    # --- streams and logs ------------------------------------------------------------------------

    def log(self, chain_code: str) -> _ChainLog:
        found = self.logs.get(chain_code)
        if found is None:
            found = _ChainLog(chain_code, self.config.first_offset)
            self.logs[chain_code] = found
        return found

    def stream(self, chain_code: str) -> _Stream:
        found = self.streams.get(chain_code)
        if found is None:
            digest = hashlib.sha256(f"{self.key_hash}|{chain_code}".encode()).hexdigest()
            found = _Stream(chain_code, f"stream-{digest[:16]}")
            self.streams[chain_code] = found
        return found

    def status_stream(self) -> _Stream:
        """The stream a ``connection`` query reports: a held one, else the default chain's."""
        for stream in self.streams.values():
            if stream.holder is not None:
                return stream
        return self.stream(self.config.chain_code)

    def admit(self, session: _Session, chain_code: str) -> str | None:
        """Why a subscription to ``chain_code`` must be refused with 4409, or ``None``."""
        if self.config.fast_replay:
            return None
        stream = self.stream(chain_code)
        now = self.clock()
        holder = stream.holder
        if holder is not None and holder is not session:
            # protocol §7: one consumer per stream
            return (
                f"Conflict: stream {chain_code} already has a consumer "
                f"(connection {holder.record.id}); only one consumer per stream"
            )
        if now < stream.held_until:
            # protocol §7: the stream stays held for hold_after_drop after an abrupt drop
            return f"Conflict: stream {chain_code} is still held after an abrupt disconnect"
        last = stream.last_complete_at
        if last is not None and now - last < self.config.complete_gap:
            # protocol §4: wait complete_gap between a complete and the next subscribe
            return (
                f"Conflict: subscribed too soon after complete ({now - last:.3g} s; "
                f"wait {self.config.complete_gap:g} s)"
            )
        return None

    def release(self, session: _Session) -> None:
        """Bookkeeping when a connection closes (again when it is gone): hold and resume."""
        stream = session.stream
        if stream is None:
            return
        closed_at = session.record.closed_at
        now = closed_at if closed_at is not None else self.clock()
        if stream.holder is session:
            stream.holder = None
            if session.record.close_code == 1006:
                stream.held_until = now + self.config.hold_after_drop
        if session.resume_position is not None and stream.resume_owner in (None, session):
            # protocol §6: the next subscribe without an offset resumes after the last event sent
            stream.resume_offset = session.resume_position
            stream.resume_since = now
            stream.resume_owner = session

    async def notify_progress(self) -> None:
        assert self._progress is not None
        async with self._progress:
            self._progress.notify_all()

    # --- HTTP endpoints ---------------------------------------------------------------------------

    async def _wrong_url(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            self.upgrades.append(UpgradeRecord(self.clock(), 400))
            return web.Response(status=400, text="Incorrect key or URL")
        return web.Response(status=404, text="Not found")

    async def _subscriptions(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        if self._rejections:
            status = self._rejections.popleft()
            self.upgrades.append(UpgradeRecord(now, status))
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            return web.Response(status=status, text="Rejected by the emulator", headers=headers)
        if request.query.get("key") != self.key_hash:
            # protocol §1: wrong or upper-case hash, or no key -> HTTP 400 before the upgrade
            self.upgrades.append(UpgradeRecord(now, 400))
            return web.Response(status=400, text="Incorrect key or URL")
        if not self.config.fast_replay:
            count, window = self.config.upgrade_budget
            times = self._upgrade_times
            while times and times[0] <= now - window:
                times.popleft()
            times.append(now)
            if len(times) > count:
                # protocol §1: more than 150 upgrades in 2 minutes -> HTTP 429
                self.upgrades.append(UpgradeRecord(now, 429))
                retry = max(1, int(window - (now - times[0]) + 0.999))
                return web.Response(
                    status=429,
                    text="Too Many Requests",
                    headers={"Retry-After": str(retry)},
                )
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            compress=False,
            timeout=5.0,
            max_msg_size=16 * 1024 * 1024,
        )
        ready = ws.can_prepare(request)
        if not ready.ok:
            self.upgrades.append(UpgradeRecord(now, 400))
            return web.Response(status=400, text="Incorrect key or URL: expected a WebSocket")
        self.upgrades.append(UpgradeRecord(now, 101))
        transport = request.transport
        await ws.prepare(request)
        record = ConnectionRecord(id=len(self.records) + 1, opened_at=now)
        self.records.append(record)
        session = _Session(self, ws, transport, record, ready.protocol == SUBPROTOCOL)
        self.sessions.add(session)
        _log.info("connection %d opened", record.id)
        await session.run()
        return ws

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        credentials = self.credentials

        def error(status: int, code: str, description: str) -> web.Response:
            _log.info("token request refused: %d %s", status, code)
            return web.json_response(
                {"error": code, "error_description": description}, status=status
            )

        if self.credentials_revoked:
            return error(401, "invalid_client", "The client credentials were revoked")
        client = _basic_credentials(request.headers.get("Authorization"))
        if client != (credentials.client_id, credentials.client_secret):
            return error(401, "invalid_client", "Invalid client id or client secret")
        if request.headers.get("x-app-key") != credentials.app_key:
            return error(401, "invalid_client", "Invalid or missing x-app-key header")
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if request.headers.get("enterpriseId") != credentials.enterprise_id:
                return error(400, "invalid_request", "Invalid or missing enterpriseId header")
            if not form.get("scope"):
                return error(400, "invalid_request", "client_credentials needs a scope")
            subject = credentials.client_id
        elif grant == "password":
            if (form.get("username"), form.get("password")) != (
                credentials.username,
                credentials.password,
            ):
                return error(401, "invalid_grant", "Invalid username or password")
            subject = credentials.username
        elif grant is None:
            return error(400, "invalid_request", "grant_type is required")
        else:
            return error(400, "unsupported_grant_type", "Use client_credentials or password")
        token = self.issue_token(subject)
        _log.info("token issued to %s", subject)
        return web.json_response(
            {
                "access_token": token.value,
                "expires_in": int(self.config.token_ttl),
                "token_type": "Bearer",
                "oracle_tk_context": "user_assertion",
            }
        )

    def issue_token(self, subject: str | None = None) -> _Token:
        """A JWT-shaped access token, valid for ``token_ttl`` on the emulator clock."""
        issued_at = self.clock()
        expires_at = issued_at + self.config.token_ttl
        header = _b64url(b'{"alg":"HS256","typ":"JWT","kid":"ohip-stream-emulator"}')
        subject = subject or self.credentials.client_id
        claims = {
            "sub": subject,
            "iss": "ohip-stream-emulator",
            "aud": "OHIP",
            "iat": int(issued_at),
            "exp": int(expires_at),
            "jti": str(uuid.uuid4()),
            "client_id": self.credentials.client_id,
            "enterprise_id": self.credentials.enterprise_id,
        }
        body = _b64url(_dumps(claims).encode())
        signature = hmac.new(self._signing_key, f"{header}.{body}".encode(), "sha256").digest()
        value = f"{header}.{body}.{_b64url(signature)}"
        token = _Token(value, subject, issued_at, expires_at)
        self.tokens[value] = token
        return token

    # --- publishing -----------------------------------------------------------------------------

    def _store(self, log: _ChainLog, event: Mapping[str, Any], published_at: float) -> str:
        body = dict(event)
        metadata = body.pop("metadata", None)
        metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
        offset = log.next_offset
        metadata["offset"] = str(offset)
        metadata["uniqueEventId"] = log.unique_id(offset)
        rest = _dumps(body)
        encoded = '{"metadata":' + _dumps(metadata) + ("," + rest[1:] if body else "}")
        hotel = body.get("hotelId")
        log.append(published_at, hotel if isinstance(hotel, str) else None, encoded)
        return str(offset)

    async def publish(
        self,
        count: int = 1,
        events: Iterable[Mapping[str, Any] | BaseModel] | None = None,
        chain_code: str | None = None,
    ) -> list[str]:
        log = self.log(chain_code or self.config.chain_code)
        now = self.clock()
        if events is None:
            given: Sequence[Mapping[str, Any]] = self.factory.events(count)
        else:
            given = [
                item.model_dump(by_alias=True) if isinstance(item, BaseModel) else item
                for item in events
            ]
        offsets = [self._store(log, event, now) for event in given]
        await log.notify()
        return offsets

    async def publish_invalid(self, count: int = 1, chain_code: str | None = None) -> list[str]:
        log = self.log(chain_code or self.config.chain_code)
        now = self.clock()
        offsets = []
        for index in range(count):
            # breaks the schema (primaryKey a number, eventName missing), offset still readable
            broken = {
                "moduleName": "RESERVATION",
                "primaryKey": 100000 + index,
                "timestamp": "not a timestamp",
                "hotelId": "HOTEL1",
                "detail": [{"elementName": None, "newValue": 2}],
            }
            offsets.append(self._store(log, broken, now))
        await log.notify()
        return offsets

    async def load_backlog(self, count: int, chain_code: str | None = None) -> list[str]:
        """Append ``count`` realistic events of about 700 bytes each, quickly."""
        log = self.log(chain_code or self.config.chain_code)
        templates = _backlog_templates(self.config.seed)
        now = self.clock()
        first = log.next_offset
        unique = log.unique_id
        for index in range(count):
            hotel, rest = templates[index % len(templates)]
            offset = first + index
            encoded = (
                '{"metadata":{"offset":"'
                + str(offset)
                + '","uniqueEventId":"'
                + unique(offset)
                + '"},'
                + rest
            )
            log.append(now, hotel, encoded)
        await log.notify()
        return [str(first), str(first + count - 1)] if count else []

    def events(self, chain_code: str | None = None) -> list[dict[str, Any]]:
        log = self.logs.get(chain_code or self.config.chain_code)
        if log is None:
            return []
        return [stored.data() for stored in list(log.events)]

    # --- faults -----------------------------------------------------------------------------------

    def _live(self) -> list[_Session]:
        return [session for session in self.sessions if not session.closing]

    def _subscribed(self) -> list[_Session]:
        return [session for session in self._live() if session.sub_id is not None]

    async def drop(self) -> int:
        sessions = self._live()
        for session in sessions:
            session.abort()
        await self._wait_sessions(5.0)
        return len(sessions)

    async def close_with(self, code: int, reason: str) -> int:
        sessions = self._live()
        for session in sessions:
            session.request_close(code, reason)
        await self._wait_sessions(5.0)
        return len(sessions)

    async def send_raw(self, text: str) -> int:
        sent = 0
        for session in self._subscribed():
            sent += await session.send_text(text)
        return sent

    async def send_invalid_event(self) -> str:
        text = ""
        for session in self._subscribed():
            frame = _dumps(
                {
                    "id": session.sub_id,
                    "type": "next",
                    "payload": {
                        "data": {
                            "newEvent": {
                                "metadata": {"uniqueEventId": 42},
                                "moduleName": None,
                                "primaryKey": 12345,
                                "detail": "not a list",
                            }
                        }
                    },
                }
            )
            await session.send_text(frame)
            text = text or frame
        return text

    async def send_oversized(self, size: int) -> int:
        sent = 0
        for session in self._subscribed():
            last = session.last_sent
            if last is not None:
                event = last.data()  # same offset and id: a client that accepts it de-duplicates
            else:
                event = self.factory.next_event()
                event["metadata"] = {"offset": "0", "uniqueEventId": "oversized"}
            frame_base = session.frame_prefix + _dumps(event) + "}}}"
            pad = max(0, size - len(frame_base.encode()) - 120)
            detail = list(event.get("detail") or [])
            detail.append(make_detail("COMMENTS", "x" * pad, ""))
            event["detail"] = detail
            sent += await session.send_text(session.frame_prefix + _dumps(event) + "}}}")
        return sent

    async def expire_tokens(self) -> int:
        now = self.clock()
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now)
        sessions = [session for session in self._live() if session.initialised]
        for session in sessions:
            session.request_close(4401, "token expired")
        await self._wait_sessions(5.0)
        return len(sessions)

    def reject_upgrades(self, status: int, count: int = 1) -> None:
        self._rejections.extend([status] * count)

    async def burst(
        self, count: int, defer_pong: bool = True, chain_code: str | None = None
    ) -> list[str]:
        chain = chain_code or self.config.chain_code
        if defer_pong:
            self.pong_deferral += 1
        try:
            offsets = await self.publish(count, chain_code=chain)
            if offsets:
                await self._wait_sent(chain, int(offsets[-1]), 30.0)
        finally:
            if defer_pong:
                self.pong_deferral -= 1
        if self.pong_deferral == 0:
            for session in self._live():
                while session.deferred_pongs:
                    session.deferred_pongs -= 1
                    if await session.send_text('{"type":"pong"}'):
                        session.record.pongs_sent += 1
        return offsets

    async def _wait_sent(self, chain_code: str, last_offset: int, timeout: float) -> None:
        assert self._progress is not None
        progress = self._progress

        def caught_up() -> bool:
            return all(
                session.scan_position > last_offset or session.closing or session.completing
                for session in self._subscribed()
                if session.log is not None and session.log.chain_code == chain_code
            )

        self.progress_waiters += 1
        try:
            async with progress:
                await asyncio.wait_for(progress.wait_for(caught_up), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            pass
        finally:
            self.progress_waiters -= 1


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[len("Basic ") :].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


_TEMPLATE_CACHE: dict[int | None, list[tuple[str | None, str]]] = {}


def _backlog_templates(seed: int | None) -> list[tuple[str | None, str]]:
    """Encoded events without their metadata, each about 700 bytes (fast replay)."""
    cached = _TEMPLATE_CACHE.get(seed)
    if cached is not None:
        return cached
    factory = EventFactory(seed)
    templates: list[tuple[str | None, str]] = []
    while len(templates) < 256:
        event = factory.next_event()
        detail = event["detail"]
        while encoded_size(event) > 760 and len(detail) > 1:
            detail.pop()
        filler = 0
        while encoded_size(event) < 640:
            filler += 1
            detail.append(make_detail(f"UDF CHAR{filler:02d}", "Y", "Y"))
        event.pop("metadata")
        hotel = event.get("hotelId")
        templates.append((hotel if isinstance(hotel, str) else None, _dumps(event)[1:]))
    _TEMPLATE_CACHE[seed] = templates
    return templates
