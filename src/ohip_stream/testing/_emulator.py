"""The public :class:`Emulator`: a local OHIP gateway in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from ohip_stream.testing import _faults
from ohip_stream.testing._gateway import EmulatorConfig, hash_app_key
from ohip_stream.testing._handlers import EmulatorServer
from ohip_stream.testing._oauth import Credentials
from ohip_stream.testing._records import ConnectionRecord, SubscribeRejection, UpgradeRecord

__all__ = ["Emulator"]

_T = TypeVar("_T")


class Emulator:
    """A local OHIP gateway: OAuth tokens and the Streaming API on one port.

    The server runs in a background thread with its own event loop, so a test that blocks its
    own loop does not freeze it. Start it with :meth:`start` / :meth:`stop` (both idempotent) or
    ``async with Emulator() as emu:``. Every ``async`` method is safe to await from any loop.

    Credentials are generated: :attr:`app_key` (a lower-case UUID4), :attr:`client_id`,
    :attr:`client_secret`, :attr:`enterprise_id` (``^[A-Z0-9]{1,8}$``), :attr:`username`,
    :attr:`password`. :meth:`env` gives them as ``OHIP_*`` variables.

    Timings are seconds. ``token_ttl``, ``complete_gap``, ``hold_after_drop``, ``resume_ttl``
    and ``retention`` are measured on ``clock`` (a callable returning wall seconds, injectable);
    ``init_timeout``, ``idle_timeout`` and ``server_ping_interval`` on the loop's monotonic clock.
    With ``fast_replay=True`` (benchmarks) the one-consumer, gap, hold and upgrade-budget rules are
    off and :meth:`load_backlog` fills the log quickly.

    Example::

        async with Emulator(complete_gap=0.2) as emu:
            await emu.publish(5)
            ...  # connect a client to emu.gateway_url with emu.env()
            assert emu.connections[0].events_sent == 5
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chain_code: str = "OHIPCN",
        token_ttl: float = 3600.0,
        complete_gap: float = 10.0,
        hold_after_drop: float = 0.0,
        init_timeout: float = 5.0,
        idle_timeout: float = 300.0,
        resume_ttl: float = 86400.0,
        retention: float = 7 * 86400.0,
        upgrade_budget: tuple[int, float] = (150, 120.0),
        server_ping_interval: float = 30.0,
        complete_inflight: int = 3,
        first_offset: int = 1,
        seed: int | None = 0,
        clock: Callable[[], float] = time.time,
        ssl_certfile: str | os.PathLike[str] | None = None,
        ssl_keyfile: str | os.PathLike[str] | None = None,
        fast_replay: bool = False,
    ) -> None:
        self._config = EmulatorConfig(
            host=host,
            port=port,
            chain_code=chain_code,
            token_ttl=token_ttl,
            complete_gap=complete_gap,
            hold_after_drop=hold_after_drop,
            init_timeout=init_timeout,
            idle_timeout=idle_timeout,
            resume_ttl=resume_ttl,
            retention=retention,
            upgrade_budget=(int(upgrade_budget[0]), float(upgrade_budget[1])),
            server_ping_interval=server_ping_interval,
            complete_inflight=complete_inflight,
            first_offset=first_offset,
            seed=seed,
            ssl_certfile=os.fspath(ssl_certfile) if ssl_certfile is not None else None,
            ssl_keyfile=os.fspath(ssl_keyfile) if ssl_keyfile is not None else None,
            fast_replay=fast_replay,
        )
        self._credentials = Credentials.generate()
        self._server = EmulatorServer(self._config, self._credentials, clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # --- identity ------------------------------------------------------------------------------

    @property
    def chain_code(self) -> str:
        """The default chain code (events are published there unless told otherwise)."""
        return self._config.chain_code

    @property
    def app_key(self) -> str:
        """The raw application key (send it as ``x-app-key``; its hash goes in the URL)."""
        return self._credentials.app_key

    @property
    def key_hash(self) -> str:
        """``sha256(app_key)`` as lower-case hex: the ``key`` query parameter."""
        return hash_app_key(self._credentials.app_key)

    @property
    def client_id(self) -> str:
        """The OAuth client id."""
        return self._credentials.client_id

    @property
    def client_secret(self) -> str:
        """The OAuth client secret."""
        return self._credentials.client_secret

    @property
    def enterprise_id(self) -> str:
        """The ``enterpriseId`` header the client-credentials grant needs."""
        return self._credentials.enterprise_id

    @property
    def username(self) -> str:
        """The user of the password grant."""
        return self._credentials.username

    @property
    def password(self) -> str:
        """The password of the password grant."""
        return self._credentials.password

    @property
    def port(self) -> int:
        """The TCP port (the bound one once started; a restart keeps it)."""
        return self._server.port

    @property
    def running(self) -> bool:
        """Whether the server thread is running."""
        return self._loop is not None

    @property
    def gateway_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` with TLS): the gateway, no trailing slash."""
        host = self._config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self._server.scheme}://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth endpoint: ``<gateway_url>/oauth/v1/tokens``."""
        return f"{self.gateway_url}/oauth/v1/tokens"

    @property
    def subscriptions_url(self) -> str:
        """``ws(s)://.../subscriptions?key=<hash>`` (it holds the key hash: do not log it)."""
        base = self.gateway_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return f"{base}/subscriptions?key={self.key_hash}"

    def env(self) -> dict[str, str]:
        """The ``OHIP_*`` variables of a client-credentials configuration for this emulator."""
        return {
            "OHIP_GATEWAY_URL": self.gateway_url,
            "OHIP_APP_KEY": self.app_key,
            "OHIP_CHAIN_CODE": self.chain_code,
            "OHIP_CLIENT_ID": self.client_id,
            "OHIP_CLIENT_SECRET": self.client_secret,
            "OHIP_ENTERPRISE_ID": self.enterprise_id,
        }

    def write_env_file(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`env` as ``KEY=value`` lines (mode 0600); returns the path.

        It replaces whatever ``path`` holds, so give it a path of its own (a test's temporary
        directory). To write a ``.env`` that may be a user's, use
        :func:`~ohip_stream.testing.serve_foreground` or ``ohip-stream emulator``: they write
        only a file that is absent or was written by the emulator.
        """
        target = Path(path)
        text = "".join(f"{name}={value}\n" for name, value in self.env().items())
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return target

    def __repr__(self) -> str:
        return (
            f"Emulator(gateway_url={self.gateway_url!r}, chain_code={self.chain_code!r}, "
            f"running={self.running})"
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server thread and listen; returns once it accepts connections."""
        with self._lifecycle:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._thread_main,
                args=(loop, ready),
                name="ohip-stream-emulator",
                daemon=True,
            )
            thread.start()
            try:
                ready.result(timeout=30)
            except BaseException:
                thread.join(timeout=10)
                raise
            self._loop = loop
            self._thread = thread

    def stop(self) -> None:
        """Close every connection (1001), stop listening and end the thread."""
        with self._lifecycle:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError("Emulator.stop() cannot be called from the emulator's thread")
            try:
                asyncio.run_coroutine_threadsafe(self._server.stop(), loop).result(timeout=30)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=30)
                self._loop = None
                self._thread = None

    def _thread_main(
        self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[None]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.start())
        except BaseException as exc:
            ready.set_exception(exc)
            _close_loop(loop)
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            _close_loop(loop)

    async def __aenter__(self) -> Emulator:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _submit(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not running: call start() or use 'async with'")
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always called from a coroutine
            current = None
        if current is loop:
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))

    def _submit_sync(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not running: call start() or use 'with'")
        return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=60)

    # --- the event log ---------------------------------------------------------------------------

    async def publish(
        self,
        count: int = 1,
        events: Iterable[Mapping[str, Any] | BaseModel] | None = None,
        chain_code: str | None = None,
    ) -> list[str]:
        """Append ``count`` generated events (or the given dicts / ``Event`` models).

        The emulator assigns each event's ``metadata.offset`` and ``uniqueEventId``; returns the
        offsets. Live subscriptions receive them at once.
        """
        given = list(events) if events is not None else None
        return await self._submit(lambda: self._server.publish(count, given, chain_code))

    def publish_sync(
        self,
        count: int = 1,
        events: Iterable[Mapping[str, Any] | BaseModel] | None = None,
        chain_code: str | None = None,
    ) -> list[str]:
        """:meth:`publish` for synchronous tests (blocks until the events are stored)."""
        given = list(events) if events is not None else None
        return self._submit_sync(lambda: self._server.publish(count, given, chain_code))

    async def publish_invalid(self, count: int = 1, chain_code: str | None = None) -> list[str]:
        """Append events that break the schema (``primaryKey`` a number, no ``eventName``).

        Each carries a valid ``metadata.offset`` and is replayed like any event.
        """
        return await self._submit(lambda: self._server.publish_invalid(count, chain_code))

    async def load_backlog(self, count: int, chain_code: str | None = None) -> list[str]:
        """Append ``count`` realistic events of about 700 bytes each, fast (benchmarks).

        Returns ``[first offset, last offset]`` (empty for ``count == 0``).
        """
        return await self._submit(lambda: self._server.load_backlog(count, chain_code))

    def events(self, chain_code: str | None = None) -> list[dict[str, Any]]:
        """The event log of ``chain_code`` (default chain) in the wire form, oldest first."""
        return self._server.events(chain_code)

    async def issue_token(self) -> str:
        """A fresh access token, as the OAuth endpoint would issue it (no HTTP round trip)."""

        async def issue() -> str:
            return self._server.issue_token()

        return await self._submit(issue)

    # --- records ---------------------------------------------------------------------------------

    @property
    def connections(self) -> list[ConnectionRecord]:
        """One record per WebSocket connection, oldest first (copies, safe to keep)."""
        return [record.snapshot() for record in list(self._server.records)]

    def overlapping_subscriptions(self) -> list[tuple[ConnectionRecord, ConnectionRecord]]:
        """Every pair of accepted subscriptions of one stream that were open at the same moment.

        Empty while the one-consumer rule held (one subscription per stream at a time). See
        :meth:`ConnectionRecord.overlaps`.
        """
        records = self.connections
        return [
            (first, second)
            for index, first in enumerate(records)
            for second in records[index + 1 :]
            if first.overlaps(second)
        ]

    @property
    def upgrades(self) -> list[UpgradeRecord]:
        """Every upgrade request (and wrong-URL GET) with the HTTP status it got."""
        return list(self._server.upgrades)

    @property
    def subscribe_rejections(self) -> list[SubscribeRejection]:
        """Every ``subscribe`` refused with 4409 by the one-consumer, gap or hold rules."""
        return list(self._server.subscribe_rejections)

    # --- faults ----------------------------------------------------------------------------------

    async def drop(self) -> int:
        """Abort every live connection without a close frame (clients see 1006)."""
        return await self._submit(lambda: _faults.drop(self._server))

    async def close_with(self, code: int, reason: str = "") -> int:
        """Close every live connection with ``code`` and ``reason`` (1006 means :meth:`drop`)."""
        return await self._submit(lambda: _faults.close_with(self._server, code, reason))

    async def send_raw(self, text: str) -> int:
        """Send ``text`` as one frame, as it is, to every live subscription; returns how many."""
        return await self._submit(lambda: _faults.send_raw(self._server, text))

    async def send_invalid_event(self) -> str:
        """Send each live subscription a ``next`` (right id) that breaks the schema, no offset.

        Not stored. Returns the raw text sent (to the first subscription), or an empty string
        when no subscription is live (nothing was sent: subscribe first, e.g. by taking an
        event).
        """
        return await self._submit(lambda: _faults.send_invalid_event(self._server))

    async def send_oversized(self, size: int) -> int:
        """Send each live subscription a valid-looking ``next`` of about ``size`` bytes.

        Not stored; it repeats the metadata of the last event sent on that connection (so a
        client that accepts it de-duplicates it). Returns how many were sent.
        """
        return await self._submit(lambda: _faults.send_oversized(self._server, size))

    async def expire_tokens(self) -> int:
        """Expire every issued token now and close their connections with 4401."""
        return await self._submit(lambda: _faults.expire_tokens(self._server))

    async def revoke_credentials(self) -> None:
        """Refuse OAuth (401) and every token at ``connection_init`` until restored."""

        async def revoke() -> None:
            self._server.credentials_revoked = True

        await self._submit(revoke)

    async def restore_credentials(self) -> None:
        """Undo :meth:`revoke_credentials`."""

        async def restore() -> None:
            self._server.credentials_revoked = False

        await self._submit(restore)

    async def reject_upgrades(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` upgrade requests with HTTP ``status``."""

        async def reject() -> None:
            _faults.reject_upgrades(self._server, status, count)

        await self._submit(reject)

    async def burst(self, count: int, defer_pong: bool = True) -> list[str]:
        """Publish ``count`` events and wait until live subscriptions have sent them.

        With ``defer_pong`` the answers to client pings are held until the burst is out, as
        Oracle's backpressure mode does. Returns the offsets.
        """
        return await self._submit(lambda: _faults.burst(self._server, count, defer_pong))

    async def complete_without_close(self) -> int:
        """Send ``complete`` for every live subscription and keep the sockets open.

        The server stops sending events on those connections but goes on answering pings and
        never closes them itself (until its idle or token timers do): the client must close
        after its drain timeout. The stream stays held until the socket closes, and the gap
        after ``complete`` is counted from this moment. Returns how many subscriptions got it.
        """
        return await self._submit(lambda: _faults.complete_without_close(self._server))

    async def restart(self) -> None:
        """Abort every connection and listen again on the same port; logs, tokens, keys kept."""
        await self._submit(self._server.restart)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
