"""Fault injection on demand (protocol §9): what a test asks the emulator to do wrong.

Each fault acts on the live connections of an :class:`~._handlers.EmulatorServer` and returns
how many it touched, so a test can tell "nothing was connected" from "the client ignored it".
All of them run on the emulator's loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ohip_stream.testing._eventlog import dumps
from ohip_stream.testing._events import make_detail

if TYPE_CHECKING:
    from ohip_stream.testing._handlers import EmulatorServer

__all__ = [
    "burst",
    "close_with",
    "complete_without_close",
    "drop",
    "expire_tokens",
    "reject_upgrades",
    "send_invalid_event",
    "send_oversized",
    "send_raw",
]

_WAIT = 5.0  # seconds (loop clock) a fault waits for the connections it closed to be gone


async def drop(server: EmulatorServer) -> int:
    """Abort every live connection without a close frame (the clients see 1006)."""
    sessions = server.live()
    for session in sessions:
        session.abort()
    await server.wait_sessions(_WAIT)
    return len(sessions)


async def close_with(server: EmulatorServer, code: int, reason: str) -> int:
    """Close every live connection with ``code`` and ``reason`` (1006: a drop)."""
    sessions = server.live()
    for session in sessions:
        session.request_close(code, reason)
    await server.wait_sessions(_WAIT)
    return len(sessions)


async def complete_without_close(server: EmulatorServer) -> int:
    """Send ``complete`` for every live subscription and keep the sockets open.

    The connections go on answering pings; no event follows. How many got the ``complete``.
    """
    completed = 0
    for session in server.subscribed():
        if await session.complete_from_server():
            completed += 1
    return completed


async def send_raw(server: EmulatorServer, text: str) -> int:
    """Send ``text`` as one frame, as it is, to every live subscription."""
    sent = 0
    for session in server.subscribed():
        sent += await session.send_text(text)
    return sent


async def send_invalid_event(server: EmulatorServer) -> str:
    """Send each live subscription a ``next`` that breaks the schema; the first frame sent."""
    text = ""
    for session in server.subscribed():
        frame = dumps(
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


async def send_oversized(server: EmulatorServer, size: int) -> int:
    """Send each live subscription a valid-looking ``next`` of about ``size`` bytes."""
    sent = 0
    for session in server.subscribed():
        last = session.last_sent
        if last is not None:
            event = last.data()  # same offset and id: a client that accepts it de-duplicates
        else:
            event = server.factory.next_event()
            event["metadata"] = {"offset": "0", "uniqueEventId": "oversized"}
        frame_base = session.frame_prefix + dumps(event) + "}}}"
        pad = max(0, size - len(frame_base.encode()) - 120)
        detail = list(event.get("detail") or [])
        detail.append(make_detail("COMMENTS", "x" * pad, ""))
        event["detail"] = detail
        sent += await session.send_text(session.frame_prefix + dumps(event) + "}}}")
    return sent


async def expire_tokens(server: EmulatorServer) -> int:
    """Expire every issued token now; close the initialised connections with 4401."""
    server.tokens.expire_all(server.clock())
    sessions = [session for session in server.live() if session.initialised]
    for session in sessions:
        session.request_close(4401, "token expired")
    await server.wait_sessions(_WAIT)
    return len(sessions)


def reject_upgrades(server: EmulatorServer, status: int, count: int = 1) -> None:
    """Answer the next ``count`` upgrade requests with HTTP ``status``."""
    server.rejections.extend([status] * count)


async def burst(
    server: EmulatorServer, count: int, defer_pong: bool = True, chain_code: str | None = None
) -> list[str]:
    """Publish ``count`` events and wait until live subscriptions have sent them.

    With ``defer_pong`` the answers to client pings are held until the burst is out, as
    Oracle's backpressure mode does (protocol §4).
    """
    chain = chain_code or server.config.chain_code
    if defer_pong:
        server.pong_deferral += 1
    try:
        offsets = await server.publish(count, chain_code=chain)
        if offsets:
            await server.wait_sent(chain, int(offsets[-1]), 30.0)
    finally:
        if defer_pong:
            server.pong_deferral -= 1
    if server.pong_deferral == 0:
        for session in server.live():
            while session.deferred_pongs:
                session.deferred_pongs -= 1
                await session.send_pong()
    return offsets
