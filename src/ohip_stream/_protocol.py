"""A sans-I/O client of the graphql-transport-ws protocol, with OHIP's rules.

No sockets and no event loop here: commands return the text of the frame to send, and
:meth:`ClientProtocol.receive` turns one received text frame into one typed event. Replies the
protocol owes the server (a ``pong`` for every ``ping``) wait in :meth:`data_to_send`.

States (graphql-transport-ws, ``PROTOCOL.md`` of graphql-ws)::

    OPEN --connection_init--> INIT_SENT --connection_ack--> ACKNOWLEDGED
    ACKNOWLEDGED --subscribe--> SUBSCRIBED --complete (ours)--> COMPLETING
    SUBSCRIBED --complete/error (server's)--> ENDED
    any --close--> CLOSED

OHIP allows one subscription per connection (protocol §2); after our ``complete`` the events
already in flight, pings, pongs and the server's close are still accepted (protocol §4).
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ohip_stream._exceptions import EventValidationError, ProtocolError, describe_problems
from ohip_stream._logging import redact
from ohip_stream._models import Event, _validate_next_json, event_from_data
from ohip_stream._query import is_valid_offset

__all__ = [
    "SUBPROTOCOL",
    "ClientProtocol",
    "Closed",
    "Complete",
    "ConnectionAck",
    "ErrorMessage",
    "InvalidNext",
    "Next",
    "Ping",
    "Pong",
    "ProtocolEvent",
    "QueryResult",
    "RawFrame",
    "State",
    "event_of_frame",
    "hash_app_key",
    "read_event_frame",
]

#: A received message as the connection hands it over: its UTF-8 bytes, as websockets parsed
#: them (a ``bytearray`` for a message of one frame, which nothing changes afterwards: a copy
#: per event saved), or ``bytes``.
RawFrame = bytes | bytearray

SUBPROTOCOL = "graphql-transport-ws"


def hash_app_key(app_key: str) -> str:
    """SHA-256 of the UTF-8 application key as LOWER-CASE hex (protocol §1; OHIP answers an
    upper-case hash with HTTP 400)."""
    return hashlib.sha256(app_key.encode("utf-8")).hexdigest()


class State(enum.Enum):
    """Where the connection stands in graphql-transport-ws."""

    OPEN = "open"
    INIT_SENT = "init_sent"
    ACKNOWLEDGED = "acknowledged"
    SUBSCRIBED = "subscribed"
    COMPLETING = "completing"
    ENDED = "ended"
    CLOSED = "closed"


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionAck:
    """The server accepted ``connection_init``."""

    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Next:
    """A valid event of the subscription."""

    event: Event


@dataclass(frozen=True, slots=True)
class InvalidNext:
    """A ``next`` of the subscription whose event does not fit the model (raw text kept)."""

    raw: str
    error: EventValidationError

    @property
    def offset(self) -> str | None:
        """The event's offset, when it could be read and is a valid offset."""
        return self.error.offset

    @property
    def unique_event_id(self) -> None:
        """Never kept for an invalid event (it is not de-duplicated by id)."""
        return None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The data of a query operation (``query { connection { id status } }``)."""

    id: str
    data: Mapping[str, Any] | None
    errors: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """An ``error`` message: the server refused or ended an operation with GraphQL errors."""

    id: str
    errors: tuple[Any, ...]

    @property
    def message(self) -> str:
        """The first error's message, or a description of the payload."""
        for error in self.errors:
            if isinstance(error, Mapping) and isinstance(error.get("message"), str):
                return str(error["message"])
        return "the server sent an error without a message"


@dataclass(frozen=True, slots=True)
class Complete:
    """The server completed an operation."""

    id: str


@dataclass(frozen=True, slots=True)
class Ping:
    """A server ``ping`` (the ``pong`` is already queued in :meth:`ClientProtocol.data_to_send`)."""

    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """A ``pong``: proof that the server is alive."""

    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket closed (``code`` 1006 when it was dropped without a close frame)."""

    code: int
    reason: str = ""


ProtocolEvent = (
    ConnectionAck
    | Next
    | InvalidNext
    | QueryResult
    | ErrorMessage
    | Complete
    | Ping
    | Pong
    | Closed
)

_PING = '{"type":"ping"}'
_PONG = '{"type":"pong"}'
_ALIVE_STATES = frozenset({State.SUBSCRIBED, State.COMPLETING})
_SUBSCRIBED = State.SUBSCRIBED
_COMPLETING = State.COMPLETING


@dataclass
class ClientProtocol:
    """The client side of one graphql-transport-ws connection.

    ``clock`` (monotonic seconds) stamps :attr:`last_alive`, the last sign of life (a pong or an
    event) that the liveness check reads.
    """

    subscription_id: str = "1"
    clock: Callable[[], float] = time.monotonic
    # Set in __post_init__, not as a class-level default: an Enum default on the class keeps
    # the interpreter from specializing ``protocol.state``, which the stream reads per event.
    state: State = field(init=False)
    last_alive: float = field(default=0.0)
    _outgoing: list[str] = field(default_factory=list, repr=False)
    _queries: dict[str, bool] = field(default_factory=dict, repr=False)
    _query_count: int = 0

    def __post_init__(self) -> None:
        self.state = State.OPEN
        self.last_alive = self.clock()

    # --- commands ------------------------------------------------------------------------------

    def connection_init(self, payload: Mapping[str, Any]) -> str:
        """The ``connection_init`` frame; OHIP wants ``Authorization`` and the RAW ``x-app-key``
        in its payload (protocol §1), and extra keys such as ``enterpriseId`` are allowed."""
        self._require(State.OPEN, "connection_init", "it may be sent once, first")
        self.state = State.INIT_SENT
        return json.dumps({"type": "connection_init", "payload": dict(payload)})

    def subscribe(self, payload: Mapping[str, Any]) -> str:
        """The ``subscribe`` frame of the one subscription this connection may carry."""
        if self.state in (State.OPEN, State.INIT_SENT):
            raise ProtocolError("cannot subscribe before the server sent connection_ack")
        if self.state is State.CLOSED:
            raise ProtocolError("cannot subscribe: the connection is closed")
        if self.state is not State.ACKNOWLEDGED:
            raise ProtocolError(
                "OHIP allows one subscription per connection; this connection already had one"
            )
        self.state = State.SUBSCRIBED
        return json.dumps({"id": self.subscription_id, "type": "subscribe", "payload": payload})

    def query(self, payload: Mapping[str, Any]) -> tuple[str, str]:
        """A query operation (e.g. the connection status) before the subscription.

        Returns ``(operation id, frame)``; the answer comes as :class:`QueryResult` then
        :class:`Complete` with that id.
        """
        self._require(State.ACKNOWLEDGED, "a query", "it needs connection_ack and no subscription")
        self._query_count += 1
        op_id = f"q{self._query_count}"
        self._queries[op_id] = True
        return op_id, json.dumps({"id": op_id, "type": "subscribe", "payload": payload})

    def complete(self) -> str:
        """The ``complete`` frame that ends the subscription (protocol §4: before every planned
        disconnect); it carries the subscription's id."""
        self._require(State.SUBSCRIBED, "complete", "there is no running subscription")
        self.state = State.COMPLETING
        return json.dumps({"id": self.subscription_id, "type": "complete"})

    def ping(self) -> str:
        """A ``ping`` frame (protocol §4: at least every 15 s)."""
        if self.state is State.CLOSED:
            raise ProtocolError("cannot ping: the connection is closed")
        return _PING

    def data_to_send(self) -> list[str]:
        """Frames the protocol owes the server (pongs); empties the queue."""
        frames, self._outgoing = self._outgoing, []
        return frames

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` has frames waiting."""
        return bool(self._outgoing)

    # --- received ------------------------------------------------------------------------------

    def receive(self, text: str | RawFrame) -> ProtocolEvent:
        """Turn one received frame into an event; a frame that breaks the protocol raises
        :class:`ProtocolError` naming what is wrong."""
        state = self.state
        if state is State.CLOSED:
            raise ProtocolError("received a frame after the connection closed")
        event = self.receive_event(text)
        if event is not None:
            self.last_alive = self.clock()
            return Next(event)
        return self._receive_slow(text if isinstance(text, str) else _decode(text))

    def receive_event(self, text: str | RawFrame) -> Event | None:
        """The hot path: the valid event of a ``next`` frame of the running subscription, or
        ``None`` for any other frame (give that one to :meth:`receive`).

        The whole frame is validated in one pass from its raw text; nothing else is built, and
        :attr:`last_alive` is left alone (a caller reading in a loop knows when it read).
        """
        state = self.state
        if state is not _SUBSCRIBED and state is not _COMPLETING:  # ``in`` hashes the Enum
            return None
        return event_of_frame(text, self.subscription_id)

    def receive_close(self, code: int | None, reason: str = "") -> Closed:
        """The WebSocket closed; ``None`` (no close frame) counts as 1006."""
        self.state = State.CLOSED
        return Closed(1006 if code is None else code, reason)

    def _receive_slow(self, text: str) -> ProtocolEvent:
        try:
            message = json.loads(text)
        except ValueError:
            raise ProtocolError(f"malformed frame: not JSON ({_excerpt(text)})") from None
        except RecursionError:  # JSON nested deeper than the interpreter's stack allows
            raise ProtocolError(
                f"malformed frame: JSON nested too deeply ({_excerpt(text)})"
            ) from None
        if not isinstance(message, dict):
            raise ProtocolError(f"malformed frame: not a JSON object ({_excerpt(text)})")
        kind = message.get("type")
        if not isinstance(kind, str):
            raise ProtocolError(f"malformed frame: no message type ({_excerpt(text)})")
        handler = _HANDLERS.get(kind)
        if handler is None:
            if kind in _CLIENT_ONLY:
                raise ProtocolError(f"the server sent {kind!r}, which only a client may send")
            raise ProtocolError(f"unknown message type {kind!r}")
        return handler(self, message, text)

    def _on_ack(self, message: dict[str, Any], text: str) -> ProtocolEvent:
        if self.state is not State.INIT_SENT:
            raise ProtocolError(f"unexpected connection_ack in state {self.state.value}")
        self.state = State.ACKNOWLEDGED
        return ConnectionAck(_payload(message, text))

    def _on_ping(self, message: dict[str, Any], text: str) -> ProtocolEvent:
        # graphql-transport-ws: answer every ping with a pong at once (a malformed one raises
        # first and gets no pong).
        payload = _payload(message, text)
        self._outgoing.append(_PONG)
        return Ping(payload)

    def _on_pong(self, message: dict[str, Any], text: str) -> ProtocolEvent:
        self.last_alive = self.clock()
        return Pong(_payload(message, text))

    def _on_next(self, message: dict[str, Any], text: str) -> ProtocolEvent:
        op_id = self._operation_id(message, "next")
        payload = message.get("payload")
        if not isinstance(payload, dict):
            raise ProtocolError("malformed next: its payload is not an object")
        errors = payload.get("errors")
        errors_tuple = tuple(errors) if isinstance(errors, list) else ()
        if op_id in self._queries:
            data = payload.get("data")
            return QueryResult(op_id, data if isinstance(data, dict) else None, errors_tuple)
        if payload.get("data") is None and errors_tuple:
            return ErrorMessage(op_id, errors_tuple)
        self.last_alive = self.clock()
        return _event_item(payload, text)

    def _on_error(self, message: dict[str, Any], text: str) -> ProtocolEvent:
        op_id = self._operation_id(message, "error")
        payload = message.get("payload")
        if not isinstance(payload, list):
            raise ProtocolError("malformed error message: its payload is not a list of errors")
        self._end(op_id)
        return ErrorMessage(op_id, tuple(payload))

    def _on_complete(self, message: dict[str, Any], text: str) -> ProtocolEvent:
        op_id = self._operation_id(message, "complete")
        self._end(op_id)
        return Complete(op_id)

    def _end(self, op_id: str) -> None:
        if op_id in self._queries:
            del self._queries[op_id]
        elif self.state is State.SUBSCRIBED:
            self.state = State.ENDED

    def _operation_id(self, message: dict[str, Any], kind: str) -> str:
        op_id = message.get("id")
        if not isinstance(op_id, str) or not op_id:
            raise ProtocolError(f"malformed {kind}: it has no operation id")
        if op_id in self._queries:
            return op_id
        if op_id != self.subscription_id:
            raise ProtocolError(
                f"received {kind} for unknown operation id {op_id!r} "
                f"(ours is {self.subscription_id!r})"
            )
        if self.state not in _ALIVE_STATES:
            raise ProtocolError(f"received {kind} for a subscription in state {self.state.value}")
        return op_id

    def _require(self, state: State, what: str, why: str) -> None:
        if self.state is not state:
            raise ProtocolError(f"cannot send {what} in state {self.state.value}: {why}")


_Handler = Callable[[ClientProtocol, dict[str, Any], str], ProtocolEvent]
_HANDLERS: dict[str, _Handler] = {
    "connection_ack": ClientProtocol._on_ack,
    "ping": ClientProtocol._on_ping,
    "pong": ClientProtocol._on_pong,
    "next": ClientProtocol._on_next,
    "error": ClientProtocol._on_error,
    "complete": ClientProtocol._on_complete,
}
_CLIENT_ONLY = frozenset({"connection_init", "subscribe"})


def event_of_frame(data: str | RawFrame, subscription_id: str) -> Event | None:
    """The hot path: the valid event of a ``next`` frame of subscription ``subscription_id``,
    validated in one pass from the raw text, or ``None`` for any other frame."""
    try:
        frame = _validate_next_json(data)
    except ValidationError:
        return None
    if frame["id"] != subscription_id:
        return None
    return frame["payload"]["data"]["newEvent"]


def read_event_frame(data: RawFrame, subscription_id: str) -> Next | InvalidNext | None:
    """The event of a ``next`` frame of subscription ``subscription_id``, valid or not, or
    ``None`` for any other frame (a connection's protocol object handles those).

    The caller's side of the buffer reads event frames with this: whether a frame was allowed
    when it arrived was the connection's business; this only reads it. A ``next`` that breaks
    the protocol (its payload not an object) raises :class:`ProtocolError`.
    """
    event = event_of_frame(data, subscription_id)
    if event is not None:
        return Next(event)
    text = _decode(data)
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("type") != "next":
        return None
    if message.get("id") != subscription_id:
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise ProtocolError("malformed next: its payload is not an object")
    if payload.get("data") is None and payload.get("errors"):
        return None  # an error in a next: the connection's protocol turns it into an error
    return _event_item(payload, text)


def _event_item(payload: dict[str, Any], text: str) -> Next | InvalidNext:
    data = payload.get("data")
    event_data = data.get("newEvent") if isinstance(data, dict) else None
    try:
        return Next(event_from_data(event_data))
    except ValidationError as exc:
        return InvalidNext(text, _validation_error(exc, text, event_data))
    except RecursionError:
        raise ProtocolError("malformed next: its event is nested too deeply") from None


def _payload(message: dict[str, Any], text: str) -> Mapping[str, Any] | None:
    payload = message.get("payload")
    if payload is None or isinstance(payload, dict):
        return payload
    raise ProtocolError(
        f"malformed {message['type']}: its payload must be an object ({_excerpt(text)})"
    )


def _decode(data: RawFrame) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("malformed frame: not UTF-8 text") from None


def _excerpt(text: str, limit: int = 80) -> str:
    # Server text enters exception messages, which applications log: never a secret in it.
    return repr(redact(text[:limit] + ("..." if len(text) > limit else "")))


def _validation_error(exc: ValidationError, raw: str, data: Any) -> EventValidationError:
    offset: str | None = None
    if isinstance(data, dict):
        metadata = data.get("metadata")
        if isinstance(metadata, dict) and is_valid_offset(metadata.get("offset")):
            offset = metadata["offset"]
    problems = describe_problems(exc.errors(), root="newEvent", limit=5)
    where = f"event at offset {offset}" if offset is not None else "event without a readable offset"
    return EventValidationError(
        f"{where} does not fit the model: {problems}", raw=raw, offset=offset
    )
