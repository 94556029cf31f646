"""One WebSocket connection to an OHIP gateway: connect, init, (query), subscribe, drain.

A thin asyncio layer over :mod:`ohip_stream._protocol`: it moves frames between the socket and
the sans-I/O core and knows nothing of offsets, checkpoints or retries (the stream's business).
Errors of websockets and the OS come out as they are; the stream classifies them with
:func:`ohip_stream._policy.classify_exception`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ohip_stream._compat import timeout
from ohip_stream._exceptions import ConnectionRejectedError, ProtocolError, TransportError
from ohip_stream._logging import get_logger
from ohip_stream._protocol import (
    SUBPROTOCOL,
    ClientProtocol,
    Complete,
    ConnectionAck,
    ErrorMessage,
    Ping,
    ProtocolEvent,
    QueryResult,
)
from ohip_stream._query import connection_status_query

__all__ = ["Connection", "buffered_message_reader"]

_log = get_logger("ohip_stream._connection")
_ws_log = get_logger("ohip_stream.websockets")


def _none() -> bytes | None:
    return None


def buffered_message_reader(ws: ClientConnection) -> Callable[[], bytes | None]:
    """A function returning the next whole message ``ws`` has already received (undecoded), or
    None when there is none yet: then ``await ws.recv(False)`` waits for it.

    Under load a socket read holds hundreds of frames. ``ws.recv()`` hands each over through
    three coroutines; taking a buffered one this way costs a plain call, with the same order,
    the same flow control (reading resumes below the low-water mark) and the same bytes.
    Fragmented messages, and anything while a ``recv()`` is under way, are left to ``recv()``.

    It reads websockets' message buffer, which is not public API. Its shape is checked here
    (the same from websockets 15 to 17); should a later release change it, the function returned
    always answers None and every message goes through ``recv()``.
    """
    assembler: Any = getattr(ws, "recv_messages", None)
    frames = getattr(getattr(assembler, "frames", None), "queue", None)
    resume = getattr(assembler, "maybe_resume", None)
    if (
        not isinstance(frames, deque)
        or not callable(resume)
        or not isinstance(getattr(assembler, "get_in_progress", None), bool)
    ):
        _log.debug("websockets' message buffer has an unknown shape; every message via recv()")
        return _none
    popleft = frames.popleft

    def next_buffered() -> bytes | None:
        # The queue holds data frames only; with no recv() under way, its head starts a message.
        if frames and not assembler.get_in_progress:
            frame = frames[0]
            if frame.fin:
                popleft()
                resume()
                data = frame.data
                return data if type(data) is bytes else bytes(data)
        return None

    return next_buffered


class Connection:
    """One graphql-transport-ws connection (one subscription at most, protocol §2)."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        app_key: str,
        enterprise_id: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        proxy: str | None = None,
        max_message_size: int | None = 16 * 1024 * 1024,
        open_timeout: float = 10.0,
        init_timeout: float = 5.0,
        max_queue: int = 64,
    ) -> None:
        self.url = url
        self._token = token
        self._app_key = app_key
        self._enterprise_id = enterprise_id
        self._ssl = ssl
        self._proxy = proxy
        self._max_size = max_message_size
        self._open_timeout = open_timeout
        self._init_timeout = init_timeout
        self._max_queue = max_queue
        self.protocol = ClientProtocol(clock=time.monotonic)
        self.ws: ClientConnection | None = None
        #: The next whole message already received, or None (see buffered_message_reader).
        self.next_buffered: Callable[[], bytes | None] = _none
        self.opened_at: float | None = None

    def __repr__(self) -> str:
        state = self.protocol.state.value
        return f"Connection(state={state!r})"

    async def open(self) -> None:
        """Upgrade, send ``connection_init`` and wait for ``connection_ack``.

        The token goes in ``connection_init`` (and in the upgrade's ``Authorization`` header,
        which OHIP may or may not read); the RAW application key goes in ``x-app-key`` and only
        its hash in the URL (protocol §1).
        """
        kwargs: dict[str, Any] = {}
        if self.url.startswith("wss:"):
            kwargs["ssl"] = self._ssl if self._ssl is not None else True
        self.ws = await connect(
            self.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            additional_headers={"Authorization": f"Bearer {self._token}"},
            proxy=self._proxy,
            open_timeout=self._open_timeout,
            # OHIP liveness is the graphql-level ping/pong, counted by the stream; WebSocket
            # keepalive would kill a healthy connection while the server holds back pongs
            # during a burst (protocol §4).
            ping_interval=None,
            ping_timeout=None,
            close_timeout=self._init_timeout,
            max_size=self._max_size,
            max_queue=self._max_queue,
            logger=_ws_log,
            **kwargs,
        )
        self.opened_at = time.monotonic()
        self.next_buffered = buffered_message_reader(self.ws)
        if self.ws.subprotocol != SUBPROTOCOL:
            await self.ws.close()
            raise ConnectionRejectedError(
                f"the server did not accept the {SUBPROTOCOL} subprotocol; check the gateway URL "
                "and any proxy between here and the gateway"
            )
        payload: dict[str, Any] = {
            "Authorization": f"Bearer {self._token}",
            "x-app-key": self._app_key,
        }
        if self._enterprise_id:
            payload["enterpriseId"] = self._enterprise_id
        await self.ws.send(self.protocol.connection_init(payload))
        try:
            async with timeout(self._init_timeout):
                while not isinstance(await self.receive(), ConnectionAck):
                    pass
        except TimeoutError:
            await self.abort()
            raise TransportError(
                f"no connection_ack within {self._init_timeout:g} s of connection_init"
            ) from None

    async def receive(self) -> ProtocolEvent:
        """The next protocol event (pongs owed to the server are sent on the way).

        A closed socket raises websockets' ``ConnectionClosed`` (its close code drives the
        policy).
        """
        ws = self.ws
        assert ws is not None
        event = self.protocol.receive(await ws.recv())
        if type(event) is Ping:
            await self.flush()
        return event

    async def flush(self) -> None:
        """Send what the protocol owes the server (pongs)."""
        ws = self.ws
        if ws is None:
            return
        for frame in self.protocol.data_to_send():
            await ws.send(frame)

    async def query_status(self, wait: float) -> str:
        """Run ``query { connection { id status } }``: ``"Active"`` or ``"Inactive"``."""
        assert self.ws is not None
        op_id, frame = self.protocol.query(connection_status_query())
        await self.ws.send(frame)
        status: str | None = None
        async with timeout(wait):
            while True:
                event = await self.receive()
                if isinstance(event, QueryResult) and event.id == op_id:
                    data = event.data or {}
                    connection = data.get("connection")
                    if isinstance(connection, Mapping) and isinstance(
                        connection.get("status"), str
                    ):
                        status = str(connection["status"])
                elif isinstance(event, ErrorMessage) and event.id == op_id:
                    raise ProtocolError(f"the connection status query failed: {event.message}")
                elif isinstance(event, Complete) and event.id == op_id:
                    break
        if status is None:
            raise ProtocolError("the connection status query returned no status")
        return status

    async def subscribe(self, payload: Mapping[str, Any]) -> None:
        """Send the ``subscribe`` of the connection's one subscription."""
        assert self.ws is not None
        await self.ws.send(self.protocol.subscribe(payload))

    async def send_ping(self) -> None:
        """Send a graphql-level ``ping``."""
        assert self.ws is not None
        await self.ws.send(self.protocol.ping())

    async def complete(self) -> None:
        """Send ``complete``: the server then sends what is in flight and closes (protocol §4)."""
        assert self.ws is not None
        await self.ws.send(self.protocol.complete())

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket ourselves (only after a drain timeout, or before subscribing)."""
        if self.ws is not None:
            await self.ws.close(code, reason)

    async def abort(self) -> None:
        """Drop the TCP connection at once (liveness lost, or cancelled)."""
        ws = self.ws
        if ws is not None and ws.transport is not None:
            ws.transport.abort()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), 1.0)
