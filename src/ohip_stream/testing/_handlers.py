"""The emulator's server: an aiohttp app over the pure gateway (protocol §9).

One port serves ``POST /oauth/v1/tokens`` (protocol §8) and the WebSocket upgrade of
``GET /subscriptions?key=<hash>`` (protocol §1). The rules live in the pure parts
(:mod:`._gateway`, :mod:`._oauth`, :mod:`._graphql`); each connection is a
:class:`~._session.Session`; fault injection is in :mod:`._faults`. Everything here runs on the
emulator's own event loop (see ``_emulator.py``).

Two clocks: the emulator clock (``clock=``, wall seconds, injectable) drives what OHIP measures in
wall time (token expiry, the gap after ``complete``, holds after a drop, the 24-hour resume
window, retention, the upgrade budget, the records); the loop's monotonic clock drives the
transport timers (init timeout, server pings, idle close), so a test that freezes ``clock``
still sees its sockets behave.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ohip_stream._logging import get_logger, install_redaction, register_secret
from ohip_stream.testing._eventlog import ChainLog, broken_event
from ohip_stream.testing._events import EventFactory
from ohip_stream.testing._gateway import EmulatorConfig, Gateway, hash_app_key
from ohip_stream.testing._oauth import (
    Credentials,
    OAuthRefusal,
    TokenBook,
    decide_token_request,
)
from ohip_stream.testing._records import ConnectionRecord, SubscribeRejection, UpgradeRecord
from ohip_stream.testing._session import Session

__all__ = ["SUBPROTOCOL", "EmulatorServer"]

_log = get_logger("ohip_stream.testing")

SUBPROTOCOL = "graphql-transport-ws"


class EmulatorServer:
    """The gateway's aiohttp app and its connections. Use it only on the emulator's loop."""

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
        self.gateway = Gateway(config, self.key_hash)
        self.tokens = TokenBook(credentials, config.token_ttl)
        self.factory = EventFactory(config.seed)
        self.sessions: set[Session] = set()
        self.records: list[ConnectionRecord] = []
        self.upgrades: list[UpgradeRecord] = []
        self.subscribe_rejections: list[SubscribeRejection] = []
        self.credentials_revoked = False
        self.pong_deferral = 0
        self.progress_waiters = 0
        self.rejections: deque[int] = deque()
        self._progress: asyncio.Condition | None = None
        self._changed: dict[str, asyncio.Condition] = {}
        self._background: set[asyncio.Task[None]] = set()
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
        """``https`` with TLS, else ``http``."""
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
        self._changed = {}
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
        await self.wait_sessions(1.0)
        for session in list(self.sessions):
            session.abort()
        await self.wait_sessions(2.0)
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def restart(self) -> None:
        """Abort every connection, stop listening, listen again on the same port."""
        for session in list(self.sessions):
            session.abort()
        self._abort_http_connections()
        await self.wait_sessions(2.0)
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

    async def wait_sessions(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (loop clock) until every open connection is gone."""
        waiting = [session.done.wait() for session in list(self.sessions)]
        if not waiting:
            return
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), timeout)

    # --- wake-ups -------------------------------------------------------------------------------

    def log_changed(self, chain_code: str) -> asyncio.Condition:
        """The condition notified when ``chain_code``'s log grows or a sender must look again."""
        found = self._changed.get(chain_code)
        if found is None:
            found = asyncio.Condition()
            self._changed[chain_code] = found
        return found

    async def notify_log(self, chain_code: str) -> None:
        """Wake every sender of ``chain_code``."""
        changed = self.log_changed(chain_code)
        async with changed:
            changed.notify_all()

    async def notify_progress(self) -> None:
        """Wake whoever waits for senders to catch up (a burst)."""
        assert self._progress is not None
        async with self._progress:
            self._progress.notify_all()

    def live(self) -> list[Session]:
        """The connections not closing."""
        return [session for session in self.sessions if not session.closing]

    def subscribed(self) -> list[Session]:
        """The connections with a live subscription."""
        return [session for session in self.sessions if session.live_subscription]

    async def wait_sent(self, chain_code: str, last_offset: int, timeout: float) -> None:
        """Wait until every live subscription of ``chain_code`` scanned past ``last_offset``."""
        assert self._progress is not None
        progress = self._progress

        def caught_up() -> bool:
            return all(
                session.scan_position > last_offset or session.closing or session.completing
                for session in self.subscribed()
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

    # --- HTTP endpoints ---------------------------------------------------------------------------

    async def _wrong_url(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            self.upgrades.append(UpgradeRecord(self.clock(), 400))
            return web.Response(status=400, text="Incorrect key or URL")
        return web.Response(status=404, text="Not found")

    def _refuse_upgrade(self, request: web.Request, now: float) -> web.Response | None:
        """The HTTP answer refusing this upgrade (400, 429, an injected status), or ``None``."""
        if self.rejections:
            status = self.rejections.popleft()
            self.upgrades.append(UpgradeRecord(now, status))
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            return web.Response(status=status, text="Rejected by the emulator", headers=headers)
        if request.query.get("key") != self.key_hash:
            # protocol §1: wrong or upper-case hash, or no key -> HTTP 400 before the upgrade
            self.upgrades.append(UpgradeRecord(now, 400))
            return web.Response(status=400, text="Incorrect key or URL")
        retry = self.gateway.upgrade(now)
        if retry is not None:
            # protocol §1: more than 150 upgrades in 2 minutes -> HTTP 429
            self.upgrades.append(UpgradeRecord(now, 429))
            return web.Response(
                status=429, text="Too Many Requests", headers={"Retry-After": str(retry)}
            )
        return None

    async def _subscriptions(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        refused = self._refuse_upgrade(request, now)
        if refused is not None:
            return refused
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
        session = Session(self, ws, transport, record, ready.protocol == SUBPROTOCOL)
        self.sessions.add(session)
        _log.info("connection %d opened", record.id)
        await session.run()
        return ws

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        decision = decide_token_request(
            self.credentials, request.headers, form, revoked=self.credentials_revoked
        )
        if isinstance(decision, OAuthRefusal):
            _log.info("token request refused: %d %s", decision.status, decision.error)
            return web.json_response(
                {"error": decision.error, "error_description": decision.description},
                status=decision.status,
            )
        token = self.tokens.issue(self.clock(), decision.subject)
        _log.info("token issued to %s", decision.subject)
        return web.json_response(
            {
                "access_token": token.value,
                "expires_in": int(self.config.token_ttl),
                "token_type": "Bearer",
                "oracle_tk_context": "user_assertion",
            }
        )

    # --- publishing -----------------------------------------------------------------------------

    def _log_of(self, chain_code: str | None) -> ChainLog:
        return self.gateway.log(chain_code or self.config.chain_code)

    async def publish(
        self,
        count: int = 1,
        events: Iterable[Mapping[str, Any] | BaseModel] | None = None,
        chain_code: str | None = None,
    ) -> list[str]:
        """Store generated (or given) events; their offsets. Live subscriptions get them."""
        log = self._log_of(chain_code)
        now = self.clock()
        if events is None:
            given: Sequence[Mapping[str, Any]] = self.factory.events(count)
        else:
            given = [
                item.model_dump(by_alias=True) if isinstance(item, BaseModel) else item
                for item in events
            ]
        offsets = [log.store(event, now) for event in given]
        await self.notify_log(log.chain_code)
        return offsets

    async def publish_invalid(self, count: int = 1, chain_code: str | None = None) -> list[str]:
        """Store events that break the schema, each with a readable offset."""
        log = self._log_of(chain_code)
        now = self.clock()
        offsets = [log.store(broken_event(index), now) for index in range(count)]
        await self.notify_log(log.chain_code)
        return offsets

    async def load_backlog(self, count: int, chain_code: str | None = None) -> list[str]:
        """Append ``count`` realistic events of about 700 bytes each, quickly."""
        log = self._log_of(chain_code)
        offsets = log.load_backlog(count, self.clock(), self.config.seed)
        await self.notify_log(log.chain_code)
        return offsets

    def events(self, chain_code: str | None = None) -> list[dict[str, Any]]:
        """The log of ``chain_code`` in the wire form (empty for an unknown chain)."""
        log = self.gateway.logs.get(chain_code or self.config.chain_code)
        if log is None:
            return []
        return [stored.data() for stored in list(log.events)]

    def issue_token(self, subject: str | None = None) -> str:
        """A fresh access token, as the OAuth endpoint issues it."""
        return self.tokens.issue(self.clock(), subject).value
