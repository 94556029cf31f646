"""One WebSocket client connection, driven by websockets' public sans-I/O API over asyncio.

:func:`open_websocket` owns everything between the socket and whole messages: TCP, TLS (the
loop's ``start_tls`` once TCP is up), the HTTP CONNECT tunnel through a proxy
(:mod:`ohip_stream._proxy`), the opening handshake (:mod:`ohip_stream._handshake` checks what
goes in and classifies what went wrong), fragment assembly, the closing handshake and flow
control. Why: only websockets' documented API is used (issue 17), and the per-message path stays
lean. websockets' :class:`~websockets.client.ClientProtocol` parses and serializes; an
:class:`asyncio.Protocol` pumps bytes into it (``data_received`` -> ``receive_data`` ->
``events_received``) as websockets' guide "Integrate the Sans-I/O layer" describes, and hands
the whole messages of each read to a :class:`FrameSink` with one synchronous call: no task,
future or coroutine per message. WebSocket pings are answered by websockets (RFC 6455
§5.5.2); there is no keepalive here (OHIP's liveness is the graphql-level ping, above this layer).

States of a connection::

    CONNECTING  open_websocket runs: TCP, proxy tunnel, TLS, upgrade request, waiting for 101.
                Any failure raises Failed(Failure) and closes the socket; the sink hears nothing.
    OPEN        open_websocket returned. Messages flow to sink.frames_received, in order (those
                that came with the 101 are delivered just after open_websocket returns).
    CLOSING     a close frame was sent (close(), or websockets failed the connection: 1009,
                1002) or received; the server closes TCP (RFC 6455 §7.1.1: the server closes
                first), or close_timeout later we drop it.
    ENDED       TCP is closed: sink.connection_ended(failure) was called, once, after the last
                frames_received; wait_closed() returns.

Every reason is free of the URL's query (it holds the key hash) and of header values; server
text (an HTTP body, a close reason) is redacted before it enters a reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Mapping
from typing import Any, Protocol

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from ohip_stream._compat import timeout
from ohip_stream._handshake import (
    MAX_HEADER_BYTES,
    MAX_RETRY_AFTER,
    NAME_NOT_FOUND,
    REFUSED,
    RESET,
    TIMED_OUT,
    TLS_HANDSHAKE,
    Stage,
    authority,
    check_tunnel,
    connect_transport,
    end_failure,
    error_text,
    forget_tracebacks,
    handshake_failure,
    network_failure,
    parse_url,
    upgrade_request,
)
from ohip_stream._logging import redact
from ohip_stream._policy import Failure, FailureKind
from ohip_stream._protocol import RawFrame
from ohip_stream._proxy import ProxyError, parse_proxy

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_RETRY_AFTER",
    "NAME_NOT_FOUND",
    "REFUSED",
    "RESET",
    "TIMED_OUT",
    "TLS_HANDSHAKE",
    "Failed",
    "FrameSink",
    "WebSocket",
    "open_websocket",
]

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT


class Failed(Exception):
    """Opening the connection failed; :attr:`failure` says how (its reason is the message)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class FrameSink(Protocol):
    """Where a connection delivers what it receives."""

    def frames_received(self, frames: list[RawFrame]) -> None:
        """The whole messages of one read (fragments assembled; never empty): text as its UTF-8
        bytes, binary as is, as websockets parsed them (see :data:`RawFrame`).

        Called synchronously from the transport's ``data_received``, in arrival order; the
        list is the sink's to keep. It must not raise. Frames parsed from the same read are
        delivered even after ``pause_reading``.
        """

    def connection_ended(self, failure: Failure) -> None:
        """Called exactly once, after the last :meth:`frames_received`, however the open
        connection ended: CLOSE (received code and reason; 1009 when a message passed the limit;
        1006 when TCP was lost without a close frame) or MALFORMED (a framing error)."""


class WebSocket:
    """An open connection (the handle :func:`open_websocket` returns)."""

    __slots__ = ("_connection", "subprotocol")

    def __init__(self, connection: _Connection, subprotocol: str) -> None:
        self._connection = connection
        #: The subprotocol the server confirmed.
        self.subprotocol = subprotocol

    def send_text(self, text: str) -> None:
        """Queue a text message on the socket now; does nothing once closing or ended."""
        self._connection.send_text(text)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; ``connection_ended`` follows when the server closes TCP,
        or after ``close_timeout`` (then TCP is dropped)."""
        self._connection.close(code, reason)

    def abort(self) -> None:
        """Drop TCP at once; ``connection_ended`` (CLOSE 1006) follows."""
        self._connection.abort()

    def pause_reading(self) -> None:
        """Stop reading from the socket (idempotent); the server's sends back up."""
        self._connection.pause_reading()

    def resume_reading(self) -> None:
        """Read again (idempotent)."""
        self._connection.resume_reading()

    async def wait_closed(self) -> None:
        """Return once the connection has ended."""
        await asyncio.shield(self._connection.closed)

    @property
    def ended(self) -> bool:
        """Whether ``connection_ended`` was called."""
        return self._connection.ended

    def __repr__(self) -> str:
        return f"<WebSocket subprotocol={self.subprotocol!r} ended={self.ended}>"


class _Connection(asyncio.Protocol):
    """The asyncio side of one connection: bytes in and out of a ClientProtocol."""

    def __init__(
        self,
        protocol: ClientProtocol,
        sink: FrameSink,
        subprotocol: str,
        close_timeout: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._sink = sink
        self._subprotocol = subprotocol
        self._close_timeout = close_timeout
        self._loop = loop
        self.socket_transport: asyncio.Transport | None = None
        #: Resolved when the 101 arrives (None) or the handshake fails (the Failure); a result,
        #: not an exception, so that no traceback ties the future to the frames awaiting it.
        self.opening: asyncio.Future[Failure | None] | None = loop.create_future()
        #: Messages received between the 101 and the return of open_websocket (None after),
        #: delivered once the caller holds the handle; likewise the end, if it came that soon.
        self._early: list[Any] | None = None
        self._held = True
        self._lost: tuple[Exception | None] | None = None
        self._fragments: list[bytes] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._aborted = False
        self.ended = False
        self.closed: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.socket_transport = transport
        if self._reading_paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if self.opening is not None:
            self._handshake_received(events)
            return
        if self._early is not None:
            if self._held:
                self._early.extend(events)
                events = []
            else:
                self._release()
        if events:
            self._frames_received(events)
        self._send_pending()
        if protocol.close_expected():
            self._expect_close()

    def _frames_received(self, events: list[Any]) -> None:
        messages: list[RawFrame] = []
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    messages.append(frame.data)
                else:
                    self._fragments = [bytes(frame.data)]
            elif opcode is _CONT and self._fragments is not None:
                # websockets checks the order of fragments and the size of the whole message
                # (max_size counts every fragment); only the assembly is left to do.
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    messages.append(b"".join(self._fragments))
                    self._fragments = None
            # PING: websockets queued the pong (RFC 6455 §5.5.2), sent by _send_pending.
            # PONG: unsolicited or not, nothing to do. CLOSE: seen through the protocol's state.
        if messages:
            self._sink.frames_received(messages)

    def eof_received(self) -> bool:
        self._protocol.receive_eof()
        self._send_pending()
        # False: the transport closes itself; connection_lost follows.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.socket_transport is not None and not self.socket_transport.is_closing():
            # Python 3.10's TLS transport is not marked closed by the end of the connection
            # (it would warn "unclosed transport" when collected): close it, a no-op otherwise.
            self.socket_transport.close()
        self.socket_transport = None
        if self.ended:
            return  # dropped by a failed open_websocket: the sink hears nothing
        self._protocol.receive_eof()
        opening = self.opening
        if opening is not None:
            if not opening.done():
                detail = f": {error_text(exc)}" if exc is not None else ""
                opening.set_result(
                    Failure(
                        FailureKind.NETWORK,
                        reason=f"{RESET}: the server closed the connection during the "
                        f"WebSocket handshake{detail}",
                    )
                )
            self._finish()
            return
        if self._held:
            self._lost = (exc,)
            return
        self._release()
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        failure = end_failure(self._protocol, aborted=self._aborted, lost=exc)
        self._finish()
        self._sink.connection_ended(failure)

    def pause_writing(self) -> None:
        # Outgoing frames are few and tiny (pongs, graphql-level pings, complete, the close
        # frame): the transport's buffer holds them until the socket drains.
        pass

    def resume_writing(self) -> None:
        pass

    # --- the handshake -------------------------------------------------------------------------

    def start_handshake(self, request: Request) -> None:
        self._protocol.send_request(request)
        self._send_pending()

    def _handshake_received(self, events: list[Any]) -> None:
        opening = self.opening
        assert opening is not None
        protocol = self._protocol
        if protocol.handshake_exc is not None:
            failure = handshake_failure(protocol.handshake_exc)
        elif protocol.state is State.CONNECTING:
            return  # the answer is still incomplete
        elif protocol.subprotocol != self._subprotocol:
            answered = protocol.subprotocol or "none"
            failure = Failure(
                FailureKind.SUBPROTOCOL,
                reason=f"the server did not confirm the subprotocol {self._subprotocol!r} "
                f"(it answered {redact(answered)!r})",
            )
        else:
            self.opening = None
            if not opening.done():
                opening.set_result(None)
            self._early = [event for event in events if not isinstance(event, Response)]
            self._send_pending()
            if protocol.close_expected():
                self._expect_close()
            return
        if not opening.done():
            opening.set_result(failure)

    def hand_out(self) -> None:
        """open_websocket is returning the handle: what came meanwhile is delivered soon."""
        self._held = False
        if self._early or self._lost is not None:
            self._loop.call_soon(self._release)

    def _release(self) -> None:
        # Deliver what arrived before the caller held the handle, ahead of anything later.
        early, self._early = self._early, None
        if early:
            self._frames_received(early)
        lost, self._lost = self._lost, None
        if lost is not None:
            self._end(lost[0])

    # --- sending and closing -------------------------------------------------------------------

    def _send_pending(self) -> None:
        transport = self.socket_transport
        for data in self._protocol.data_to_send():
            if transport is None or transport.is_closing():
                continue
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                # websockets' SEND_EOF: half-close TCP (RFC 6455 §7.1.1).
                transport.write_eof()

    def send_text(self, text: str) -> None:
        if self.ended or self._protocol.state is not State.OPEN:
            return
        self._protocol.send_text(text.encode("utf-8"))
        self._send_pending()

    def close(self, code: int, reason: str) -> None:
        if self.ended or self._protocol.state is not State.OPEN:
            return
        self._protocol.send_close(code, reason)
        self._send_pending()
        if self._protocol.close_expected():
            self._expect_close()

    def _expect_close(self) -> None:
        # RFC 6455 §7.1.1: after the closing handshake the server closes TCP first; a server
        # that does not is dropped after close_timeout.
        if self._close_timer is None and not self.ended:
            self._close_timer = self._loop.call_later(self._close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self.socket_transport is not None:
            self.socket_transport.abort()

    def abort(self) -> None:
        if self.ended:
            return
        self._aborted = True
        if self.socket_transport is not None:
            self.socket_transport.abort()

    def pause_reading(self) -> None:
        if self._reading_paused:
            return
        self._reading_paused = True
        if self.socket_transport is not None and not self.socket_transport.is_closing():
            self.socket_transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self.socket_transport is not None and not self.socket_transport.is_closing():
            self.socket_transport.resume_reading()

    # --- the end -------------------------------------------------------------------------------

    def _finish(self) -> None:
        self.ended = True
        self._fragments = None
        forget_tracebacks(self._protocol.parser_exc, self._protocol.handshake_exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def drop(self) -> None:
        """Close the socket at once, without telling the sink (the open failed)."""
        self.ended = True
        self.opening = None
        forget_tracebacks(self._protocol.parser_exc, self._protocol.handshake_exc)
        if self.socket_transport is not None:
            self.socket_transport.abort()


async def open_websocket(
    url: str,
    *,
    sink: FrameSink,
    subprotocol: str,
    headers: Mapping[str, str],
    ssl: ssl_module.SSLContext | None,
    proxy: str | None,
    max_message_size: int | None,
    open_timeout: float,
    logger: logging.Logger | None = None,
    close_timeout: float = 5.0,
) -> WebSocket:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``) and return its handle.

    ``subprotocol`` must be confirmed by the server; ``headers`` are added to the upgrade
    request; ``ssl`` is the context for ``wss://`` (None: the system's trust store); ``proxy``
    is ``http://[user:pass@]host:port`` for a CONNECT tunnel; ``max_message_size`` limits a
    whole message (None: no limit); ``open_timeout`` covers TCP, TLS, proxy and handshake
    together; ``close_timeout`` is how long a closing handshake may take.

    Raises :class:`Failed` on any failure to open (the socket is closed by then), and
    ``CancelledError`` as is when cancelled.
    """
    try:
        uri = parse_url(url)
        tunnel = None if proxy is None else parse_proxy(proxy)
        check_tunnel(tunnel, uri)
        protocol = ClientProtocol(
            uri,
            subprotocols=[Subprotocol(subprotocol)],
            max_size=max_message_size,
            logger=logger,
        )
        request = upgrade_request(protocol, headers)
    except ValueError as exc:
        raise Failed(Failure(FailureKind.CONFIG, reason=str(exc))) from None
    context = (ssl or ssl_module.create_default_context()) if uri.secure else None
    connection = _Connection(protocol, sink, subprotocol, close_timeout)
    stage = Stage(f"connecting to {authority(uri.host, uri.port)}")
    opened: list[asyncio.Transport] = []
    try:
        try:
            async with timeout(open_timeout):
                await connect_transport(connection, uri, context, tunnel, stage, opened)
                stage.now = "waiting for the answer to the WebSocket upgrade"
                connection.start_handshake(request)
                assert connection.opening is not None
                failure = await connection.opening
                if failure is not None:
                    raise Failed(failure)
        except TimeoutError:
            raise Failed(
                Failure(
                    FailureKind.NETWORK,
                    reason=f"{TIMED_OUT}: not connected within {open_timeout:g} s ({stage.now})",
                )
            ) from None
        except ProxyError as exc:
            raise Failed(exc.failure) from None
        except OSError as exc:
            # Python 3.10's create_connection keeps its errors in a local of the frame that
            # raised them: a cycle through the traceback, which would hold this connection.
            raise Failed(network_failure(exc.with_traceback(None), stage)) from None
    except BaseException:
        connection.drop()
        for transport in opened:
            transport.abort()
        raise
    connection.hand_out()
    return WebSocket(connection, subprotocol)
