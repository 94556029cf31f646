"""A real TCP proxy for fault injection between a client and a server (a database).

It runs on its own event loop in a background thread, so the code under test may block its own
loop. Faults, each safe to call from any thread:

* :meth:`TcpProxy.cut` closes every open connection (both ends see a reset or EOF) and makes
  new ones fail at once (accepted, then closed) until :meth:`TcpProxy.restore`;
* :meth:`TcpProxy.blackhole` keeps connections open but forwards nothing (a network partition:
  the client waits for answers that never come) until :meth:`TcpProxy.restore`;
* ``delay`` (seconds) holds every chunk that long before forwarding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from types import TracebackType

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.delay = 0.0
        self.accepted = 0
        self._state = "open"  # open | cut | blackhole
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()

    # --- life ----------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._main, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the TCP proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                loop.run_until_complete(server.wait_closed())
            loop.close()

    # --- faults --------------------------------------------------------------------------------

    def _call(self, state: str) -> None:
        loop = self._loop
        assert loop is not None
        done = threading.Event()

        def apply() -> None:
            self._state = state
            if state == "blackhole":
                self._flowing.clear()
            else:
                self._flowing.set()
            if state == "cut":
                for writer in list(self._writers):
                    writer.transport.abort()
                self._writers.clear()
            done.set()

        loop.call_soon_threadsafe(apply)
        done.wait(5)

    def cut(self) -> None:
        """Close every connection; refuse new ones until :meth:`restore`."""
        self._call("cut")

    def blackhole(self) -> None:
        """Forward nothing (connections stay open) until :meth:`restore`."""
        self._call("blackhole")

    def restore(self) -> None:
        """Forward again."""
        self._call("open")

    @contextlib.contextmanager
    def outage(self, kind: str = "cut") -> Iterator[None]:
        """A cut (or blackhole) for the duration of the block."""
        self.cut() if kind == "cut" else self.blackhole()
        try:
            yield
        finally:
            self.restore()

    # --- forwarding ----------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._state == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            self._writers.discard(end)
            end.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await self._flowing.wait()
            if self._state == "cut":
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
