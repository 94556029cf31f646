"""Small hostile gateways for the regression tests of issues 17 and 19.

Each is a real WebSocket server (websockets' asyncio server on 127.0.0.1, port 0) that speaks
just enough graphql-transport-ws to get a client subscribed (``connection_init`` ->
``connection_ack``, then one ``subscribe``) and then lets a test's handler misbehave: echo
secrets, send offsets no subscription can send back, complete without closing, redirect the
upgrade elsewhere.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["Hostile", "frame", "hostile_gateway", "http_answer", "next_frame", "url_of"]

SUBPROTOCOL = "graphql-transport-ws"

Handler = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]
RequestHook = Callable[[ServerConnection, Request], Response | None]


@dataclass
class Hostile:
    """What a hostile gateway saw: its URL, every connection and every frame a client sent."""

    url: str = ""
    #: One entry per WebSocket connection that reached the handler.
    connections: int = 0
    #: Every text frame received from clients, parsed (or the raw text if it was not JSON).
    frames: list[Any] = field(default_factory=list)
    #: ``subscribe`` frames received.
    subscribes: int = 0


def url_of(server: Server) -> str:
    """The ``http://127.0.0.1:PORT`` gateway URL of a listening server."""
    port = next(iter(server.sockets)).getsockname()[1]
    return f"http://127.0.0.1:{port}"


def next_frame(offset: str, uid: str | None = None, **changes: Any) -> str:
    """A ``next`` frame of subscription ``"1"`` carrying one valid event at ``offset``."""
    event: dict[str, Any] = {
        "metadata": {"offset": offset, "uniqueEventId": uid if uid is not None else f"u{offset}"},
        "moduleName": "RESERVATION",
        "eventName": "NEW RESERVATION",
        "primaryKey": "1",
        "hotelId": "HOTEL1",
        "timestamp": "2024-01-01T00:00:00Z",
        "detail": [],
    }
    event.update(changes)
    return frame({"id": "1", "type": "next", "payload": {"data": {"newEvent": event}}})


def frame(message: dict[str, Any]) -> str:
    return json.dumps(message)


def http_answer(status: int, body: bytes = b"", **headers: str) -> RequestHook:
    """A ``process_request`` hook that answers every upgrade with ``status`` and ``body``."""

    def answer(_connection: ServerConnection, _request: Request) -> Response:
        items = [(name.replace("_", "-"), value) for name, value in headers.items()]
        items.append(("Content-Length", str(len(body))))
        reason = {307: "Temporary Redirect", 400: "Bad Request", 429: "Too Many Requests"}
        return Response(status, reason.get(status, "Error"), Headers(items), body)

    return answer


@asynccontextmanager
async def hostile_gateway(
    handler: Handler | None = None,
    *,
    host: str = "127.0.0.1",
    process_request: RequestHook | None = None,
    answer_pings: bool = True,
) -> AsyncIterator[Hostile]:
    """Serve a hostile gateway for the ``async with`` block.

    The client is acknowledged and its ``subscribe`` read before ``handler(ws, init)`` runs
    (``init`` is the client's ``connection_init`` message). After the handler returns, the
    connection stays open, reading the client's frames (answering pings when
    ``answer_pings``) until the client closes: a server that never closes by itself.
    """
    seen = Hostile()

    def record(text: str | bytes) -> Any:
        try:
            message = json.loads(text)
        except ValueError:
            message = text
        seen.frames.append(message)
        if isinstance(message, dict) and message.get("type") == "subscribe":
            seen.subscribes += 1
        return message

    async def serve_one(ws: ServerConnection) -> None:
        seen.connections += 1
        with contextlib.suppress(ConnectionClosed):
            await talk(ws)

    async def talk(ws: ServerConnection) -> None:
        init = record(await ws.recv())
        if handler is None:
            return
        await ws.send(frame({"type": "connection_ack"}))
        record(await ws.recv())
        await handler(ws, init if isinstance(init, dict) else {})
        async for text in ws:
            message = record(text)
            if answer_pings and isinstance(message, dict) and message.get("type") == "ping":
                await ws.send(frame({"type": "pong"}))

    async with serve(
        serve_one,
        host,
        0,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        ping_interval=None,
        process_request=process_request,
    ) as server:
        seen.url = url_of(server).replace("127.0.0.1", host)
        yield seen
