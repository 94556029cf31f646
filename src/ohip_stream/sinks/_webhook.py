"""Webhook sink: each event POSTed, signed as Standard Webhooks says, retried until a 2xx.

Every request carries ``Idempotency-Key`` and ``webhook-id`` = the event's ``uniqueEventId`` (the
same on every retry and after a crash: the receiver drops what it already has), a
``webhook-timestamp`` (integer epoch seconds, fresh for each attempt) and, with a secret,
``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the
key that follows ``whsec_`` (base64). The body is the event's wire form (JSON).

Network errors, timeouts, 408, 429 and 5xx are retried with jittered exponential backoff; any
other answer, or running out of attempts, hands the event to ``on_dead_letter`` and goes on
(without one, the batch fails and nothing of it is committed). The checkpoint moves after every
event of the batch got its 2xx or was dead-lettered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx

from ohip_stream._checkpoints import CheckpointStore
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import get_logger, redact, register_secret
from ohip_stream.sinks._checkpoints import SinkCheckpoints, no_store
from ohip_stream.sinks._protocol import Batch, DeliveryError, DeliveryUnavailableError

if TYPE_CHECKING:
    from ohip_stream._models import Event

__all__ = ["DeadLetter", "WebhookSink", "sign"]

_log = get_logger("ohip_stream.sinks")

#: ``on_dead_letter(event, reason)`` (sync or async): an event that will not be delivered.
DeadLetter = Callable[["Event", str], "Awaitable[None] | None"]
#: Answers worth a retry: timeout, too many requests, and the server's own errors.
_RETRIED = frozenset({408, 429})
_SECRET_PREFIX = "whsec_"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class _Retry(Exception):
    """An answer worth another attempt (the message says which)."""


class _Refused(Exception):
    """An answer that no retry changes (a 4xx other than 408 and 429)."""


def _key(secret: object) -> bytes:
    if not isinstance(secret, str) or not secret.startswith(_SECRET_PREFIX):
        raise ConfigurationError(
            "the webhook secret must be 'whsec_' followed by the base64 key (as Standard "
            "Webhooks issues it)"
        )
    register_secret(secret)
    register_secret(secret[len(_SECRET_PREFIX) :])
    try:
        key = base64.b64decode(secret[len(_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("the webhook secret after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise ConfigurationError(
            "the webhook secret's key is shorter than 16 bytes: use 24 or more"
        )
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSink:
    """Events POSTed to an HTTP endpoint, one effect per event through its idempotency key.

    Args:
        url: The endpoint, ``https://`` (a plain ``http://`` one to another host than this one
            logs a WARNING: the events travel unencrypted).
        checkpoints: The durable store of the stream's checkpoint, written after a batch's
            events all got a 2xx (or were dead-lettered). The caller closes it.
            ``None`` only in a fleet (``Fleet(..., sink=...)``: its database keeps them).
        secret: ``whsec_...``: sign each request (Standard Webhooks); ``None``: unsigned.
        on_dead_letter: ``(event, reason)``, sync or async, for an event refused (a 4xx) or
            still failing after ``max_attempts``; then the stream goes on. ``None``: the batch
            fails instead (:class:`~ohip_stream.sinks.DeliveryError`) and nothing is committed.
        on_delivered: ``(event, attempts)``, called after an event's 2xx.
        max_attempts: Attempts per event (the first one included).
        first_wait: The first retry's wait ceiling in seconds (doubling, jittered, up to
            ``max_wait``).
        timeout: Seconds for one request.
        concurrency: Events of a batch in flight at once (1: in order).
        http_client: A caller's ``httpx.AsyncClient`` (the caller closes it).
    """

    def __init__(
        self,
        url: str,
        *,
        checkpoints: CheckpointStore | None = None,
        secret: str | None = None,
        on_dead_letter: DeadLetter | None = None,
        on_delivered: Callable[[Event, int], None] | None = None,
        max_attempts: int = 8,
        first_wait: float = 0.5,
        max_wait: float = 60.0,
        timeout: float = 10.0,
        concurrency: int = 1,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"url must be an http(s) URL of the webhook endpoint, got {url!r}"
            )
        for name, value in (("max_attempts", max_attempts), ("concurrency", concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"{name} must be a whole number of at least 1, got {value!r}"
                )
        for name, number in (
            ("first_wait", first_wait),
            ("max_wait", max_wait),
            ("timeout", timeout),
        ):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0:
                raise ConfigurationError(f"{name} must be above 0 seconds, got {number!r}")
        self.url = str(parsed)
        # Parsed once: httpx would parse a string URL again at every request.
        self._target = parsed
        if parsed.scheme == "http" and parsed.host not in _LOOPBACK:
            _log.warning(
                "the webhook %s is plain http: events and signatures travel unencrypted "
                "(use https)",
                parsed.host,
            )
        self.where = f"webhook {parsed.scheme}://{parsed.host}{parsed.path}"
        self._key = _key(secret) if secret is not None else None
        self._on_dead_letter = on_dead_letter
        self._on_delivered = on_delivered
        self._max_attempts = max_attempts
        self._first_wait = float(first_wait)
        self._max_wait = float(max_wait)
        self._timeout = float(timeout)
        self._concurrency = concurrency
        self._owned = http_client is None
        self._client = http_client
        self._sleep = sleep
        self._clock = clock
        self._checkpoints = SinkCheckpoints(
            checkpoints if checkpoints is not None else no_store("WebhookSink")
        )

    @property
    def checkpoints(self) -> SinkCheckpoints:
        """The store to give the stream (it moves after the batch's 2xx answers)."""
        return self._checkpoints

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    def headers(self, event: Event, body: bytes) -> dict[str, str]:
        """The headers of one attempt (a fresh timestamp and signature)."""
        msg_id = event.metadata.unique_event_id
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "idempotency-key": msg_id,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        return headers

    async def _post(self, event: Event, body: bytes) -> None:
        headers = self.headers(event, body)
        if self._owned:  # the sink's own client was made with the timeout
            response = await self._http().post(self._target, content=body, headers=headers)
        else:
            response = await self._http().post(
                self._target, content=body, headers=headers, timeout=self._timeout
            )
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in _RETRIED or status >= 500:
            raise _Retry(f"HTTP {status}")
        raise _Refused(f"HTTP {status}")

    def _backoff(self, attempt: int) -> float:
        """The wait after a failed ``attempt``: full jitter under a ceiling that doubles from
        ``first_wait`` up to ``max_wait`` (the receiver's recovery is not met by a herd)."""
        ceiling = min(self._max_wait, self._first_wait * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    async def _deliver_one(self, event: Event) -> None:
        # The common case, a 2xx at the first attempt, costs one request and nothing more: the
        # retry bookkeeping is a counter, not an object per event.
        body = event.model_dump_json(by_alias=True).encode()
        attempt = 1
        while True:
            try:
                await self._post(event, body)
                break
            except _Refused as exc:
                reason = f"the endpoint refused it ({exc})"
                await self._dead_letter(event, reason, unavailable=False)
                return
            except (_Retry, httpx.TransportError) as exc:
                if attempt >= self._max_attempts:
                    reason = f"no 2xx after {attempt} attempts (last: {_describe(exc)})"
                    await self._dead_letter(event, reason, unavailable=True)
                    return
                await self._sleep(self._backoff(attempt))
                attempt += 1
        if self._on_delivered is not None:
            self._on_delivered(event, attempt)

    async def _dead_letter(self, event: Event, reason: str, *, unavailable: bool) -> None:
        offset = event.metadata.offset
        if self._on_dead_letter is None:
            message = f"cannot deliver offset {offset} to {self.where}: {reason}"
            raise (DeliveryUnavailableError if unavailable else DeliveryError)(message)
        _log.warning("offset %s: dead-lettered (%s)", offset, reason)
        outcome = self._on_dead_letter(event, reason)
        if inspect.isawaitable(outcome):
            await outcome

    async def deliver(self, batch: Batch) -> None:
        """POST every event until its 2xx (or its dead letter)."""
        if self._concurrency == 1:
            for event in batch.events:
                await self._deliver_one(event)
            return
        gate = asyncio.Semaphore(self._concurrency)

        async def one(event: Event) -> None:
            async with gate:
                await self._deliver_one(event)

        tasks = [asyncio.ensure_future(one(event)) for event in batch.events]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the sink's own HTTP client (a caller's stays open); idempotent."""
        client = self._client
        if self._owned and client is not None:
            self._client = None
            await client.aclose()

    async def __aenter__(self) -> WebhookSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"WebhookSink({self.where!r})"


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    text = redact(str(error).strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
