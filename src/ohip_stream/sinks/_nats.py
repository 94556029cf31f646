"""NATS JetStream sink: each event published with its ``uniqueEventId`` as the message id.

JetStream drops a message whose ``Nats-Msg-Id`` it stored within the stream's duplicate window
(two minutes unless the stream says otherwise), so an event replayed after a crash is stored
once as long as the restart comes within the window. The checkpoint is written only after the
broker acknowledged every event of the batch (the acks are awaited together: the publishes are
pipelined, not one round trip each).

The acks are JetStream's wire protocol: each publish names a reply subject and the server
answers there with a small JSON document (``{"stream": ..., "seq": ...}``, or ``{"error":
...}``). A batch's publishes share one reply subject and the batch waits for one future that
the last ack completes: per event, one publish and one counted answer, with no future, no
unique inbox and no parsed document of its own (an error's document is parsed).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ohip_stream._checkpoints import CheckpointStore
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import redact
from ohip_stream.sinks._checkpoints import SinkCheckpoints, no_store
from ohip_stream.sinks._protocol import Batch, DeliveryError, DeliveryUnavailableError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from ohip_stream._models import Event

__all__ = ["NatsSink", "subject_for"]

_INSTALL_HINT = 'NatsSink needs nats-py: pip install "ohip-stream[sinks]"'

#: The fields a subject template may use.
SUBJECT_FIELDS = ("chain", "hotel", "module", "event", "stream_id")
# A subject token may not hold '.', whitespace or the wildcards '*' and '>': anything but
# letters, digits, '_' and '-' becomes '_'.
_NOT_IN_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_TOKEN = re.compile(r"[^.\s*>]+\Z")


def _token(value: str | None) -> str:
    return _NOT_IN_A_TOKEN.sub("_", value) if value else "_"


def _check_template(template: object) -> str:
    if not isinstance(template, str) or not template:
        raise ConfigurationError(
            "subject must be a template such as 'ohip.{chain}.{module}.{event}', "
            f"got {template!r}"
        )
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigurationError(f"subject {template!r} is not a valid template: {exc}") from None
    unknown = sorted(fields - set(SUBJECT_FIELDS))
    if unknown:
        raise ConfigurationError(
            f"subject {template!r} uses {', '.join(unknown)}: the fields are "
            f"{', '.join('{' + f + '}' for f in SUBJECT_FIELDS)}"
        )
    sample = template.format(**dict.fromkeys(SUBJECT_FIELDS, "x"))
    if not all(_TOKEN.match(token) for token in sample.split(".")):
        raise ConfigurationError(
            f"subject {template!r} is not a NATS subject: dot-separated tokens, none empty, "
            "no spaces and no wildcards ('*', '>')"
        )
    return template


def subject_for(template: str, event: Event, chain_code: str, stream_id: str = "") -> str:
    """The subject of ``event`` under ``template`` (each value made a valid subject token)."""
    return template.format(
        chain=_token(chain_code),
        hotel=_token(event.hotel_id),
        module=_token(event.module_name),
        event=_token(event.event_name),
        stream_id=_token(stream_id),
    )


def _where(servers: Sequence[str]) -> str:
    """The servers without their credentials, for messages."""
    shown = []
    for server in servers:
        try:
            parts = urlsplit(server)
            shown.append(f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}")
        except ValueError:
            shown.append("(an unparsable server URL)")
    return "NATS " + ", ".join(shown)


class NatsSink:
    """Events into NATS JetStream, de-duplicated by the broker on ``uniqueEventId``.

    Args:
        servers: The NATS server URL(s), such as ``nats://127.0.0.1:4222``; or ``connection``.
        subject: The subject template; fields ``{chain}``, ``{hotel}``, ``{module}``,
            ``{event}``, ``{stream_id}`` (values made valid tokens: ``CHECK IN`` -> ``CHECK_IN``).
        checkpoints: The durable store of the stream's checkpoint (SQLite, PostgreSQL...),
            written after the broker acknowledged a batch. The caller closes it.
            ``None`` only in a fleet (``Fleet(..., sink=...)``: its database keeps them).
        stream: The JetStream stream the messages must land in (the broker refuses a publish
            whose subject belongs to another stream); ``None``: whichever stream has the subject.
        create_stream: Create ``stream`` when it does not exist, on the template's subjects
            (each field a ``*``).
        connection: A caller's connected ``nats.aio.client.Client`` (the caller closes it).
        ack_timeout: Seconds to wait for the broker's acks of a batch.
        reconnect_attempts: Connection attempts per server (1 s apart) before a publish fails
            as unavailable, at the start and after the connection is lost.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        subject: str = "ohip.{chain}.{module}.{event}",
        checkpoints: CheckpointStore | None = None,
        stream: str | None = None,
        create_stream: bool = False,
        connection: Client | None = None,
        ack_timeout: float = 10.0,
        reconnect_attempts: int = 30,
    ) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(_INSTALL_HINT) from exc
        self.subject = _check_template(subject)
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers or not all(isinstance(s, str) and s for s in self.servers):
            raise ConfigurationError(
                f"servers must be NATS URLs (nats://host:4222), got {servers!r}"
            )
        for server in self.servers:
            register = urlsplit(server).password
            if register:
                from ohip_stream._logging import register_secret

                register_secret(register)
        if create_stream and not stream:
            raise ConfigurationError("create_stream=True needs the stream's name: pass stream=")
        if not (isinstance(ack_timeout, (int, float)) and ack_timeout > 0):
            raise ConfigurationError(f"ack_timeout must be above 0 seconds, got {ack_timeout!r}")
        if isinstance(reconnect_attempts, bool) or not isinstance(reconnect_attempts, int):
            raise ConfigurationError(
                f"reconnect_attempts must be a whole number, got {reconnect_attempts!r}"
            )
        if reconnect_attempts < 1:
            raise ConfigurationError(
                f"reconnect_attempts must be at least 1, got {reconnect_attempts}"
            )
        self._reconnect_attempts = reconnect_attempts
        self.stream = stream
        self.where = _where(self.servers) + (f", stream {stream}" if stream else "")
        self._create_stream = create_stream
        self._ack_timeout = float(ack_timeout)
        self._owned = connection is None
        self._nc: Client | None = connection
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._inbox = ""
        self._acks_sub: Any = None
        self._tokens = itertools.count(1)
        self._waiting: dict[str, _Acks] = {}
        self._checkpoints = SinkCheckpoints(
            checkpoints if checkpoints is not None else no_store("NatsSink")
        )

    @property
    def checkpoints(self) -> SinkCheckpoints:
        """The store to give the stream (it moves after the broker's acks)."""
        return self._checkpoints

    async def open(self) -> None:
        """Connect (unless given a connection) and create the stream if asked; idempotent."""
        async with self._lock:
            if self._js is not None:
                return
            import nats

            try:
                if self._nc is None:
                    self._nc = await nats.connect(
                        servers=self.servers,
                        name="ohip-stream-sink",
                        connect_timeout=5,
                        max_reconnect_attempts=self._reconnect_attempts,
                        reconnect_time_wait=1.0,
                    )
                js = self._nc.jetstream(timeout=self._ack_timeout)
                if self._create_stream:
                    await self._ensure_stream(js)
                self._inbox = self._nc.new_inbox()
                self._acks_sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_ack)
            except Exception as exc:
                raise self._failure("connect to", exc) from exc
            self._js = js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        from nats.js.errors import NotFoundError

        assert self.stream is not None
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            wildcard = self.subject.format(**dict.fromkeys(SUBJECT_FIELDS, "*"))
            await js.add_stream(name=self.stream, subjects=[wildcard])

    def _failure(self, action: str, exc: BaseException) -> DeliveryError:
        from nats.js.errors import APIError

        detail = redact(str(exc).strip() or type(exc).__name__)
        if isinstance(exc, APIError) and not isinstance(exc, _unavailable_api_errors()):
            return DeliveryError(f"cannot {action} {self.where}: the broker refused ({detail})")
        return DeliveryUnavailableError(
            f"cannot {action} {self.where}: the broker did not answer in time or the "
            f"connection failed; check the server is up and has JetStream on ({detail})"
        )

    async def deliver(self, batch: Batch) -> None:
        """Publish every event (pipelined), then wait for all the broker's acks."""
        if self._js is None:
            await self.open()
        nc = self._nc
        assert nc is not None
        events = batch.events
        if not events:
            return
        token = str(next(self._tokens))
        reply = f"{self._inbox}.{token}"
        waiter = _Acks(len(events), asyncio.get_running_loop().create_future())
        self._waiting[token] = waiter
        template, chain, stream_id, stream = (
            self.subject,
            batch.chain_code,
            batch.stream_id,
            self.stream,
        )
        try:
            for event in events:
                headers = {"Nats-Msg-Id": event.metadata.unique_event_id}
                if stream is not None:
                    headers["Nats-Expected-Stream"] = stream
                await nc.publish(
                    subject_for(template, event, chain, stream_id),
                    event.model_dump_json(by_alias=True).encode(),
                    reply=reply,
                    headers=headers,
                )
            await asyncio.wait_for(waiter.future, self._ack_timeout)
        except asyncio.CancelledError:
            raise
        except DeliveryError:
            raise
        except asyncio.TimeoutError as exc:
            raise DeliveryUnavailableError(
                f"cannot publish to {self.where}: {waiter.left} of {len(events)} acks did not "
                f"come within {self._ack_timeout:g} s; check the server is up and has "
                "JetStream on"
            ) from exc
        except Exception as exc:
            raise self._failure("publish to", exc) from exc
        finally:
            self._waiting.pop(token, None)

    async def _on_ack(self, msg: Any) -> None:
        """One answer of the broker to a publish: counted, or the batch fails."""
        waiter = self._waiting.get(msg.subject.rpartition(".")[2])
        if waiter is None or waiter.future.done():
            return
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            waiter.future.set_exception(
                DeliveryError(
                    f"cannot publish to {self.where}: no JetStream stream holds the subjects "
                    f"of the template {self.subject!r}: create the stream or "
                    "change the template"
                )
            )
            return
        data = msg.data
        if b'"error"' in data:
            waiter.future.set_exception(self._refusal(data))
            return
        waiter.left -= 1
        if waiter.left == 0:
            waiter.future.set_result(None)

    def _refusal(self, data: bytes) -> DeliveryError:
        try:
            error = json.loads(data).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        code = error.get("code") if isinstance(error, dict) else None
        text = redact(str(error.get("description", "")) if isinstance(error, dict) else "")
        detail = f"{text or 'an error'} (code {code})"
        if code == 503:
            return DeliveryUnavailableError(
                f"cannot publish to {self.where}: the broker cannot store now: {detail}"
            )
        return DeliveryError(f"cannot publish to {self.where}: the broker refused: {detail}")

    async def aclose(self) -> None:
        """Close the sink's own connection (a caller's stays open); idempotent."""
        nc, self._nc, self._js = self._nc, None if self._owned else self._nc, None
        sub, self._acks_sub = self._acks_sub, None
        if self._owned and nc is not None and not nc.is_closed:
            await nc.close()
        elif sub is not None and nc is not None and not nc.is_closed:
            await sub.unsubscribe()

    async def __aenter__(self) -> NatsSink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"NatsSink({self.where!r}, subject={self.subject!r})"


class _Acks:
    """The acks a batch waits for: how many are still to come, and the future the last one
    completes (or the first error fails)."""

    __slots__ = ("future", "left")

    def __init__(self, count: int, future: asyncio.Future[None]) -> None:
        self.left = count
        self.future = future


def _unavailable_api_errors() -> tuple[type[Any], ...]:
    from nats.js.errors import ServerError, ServiceUnavailableError

    return (ServiceUnavailableError, ServerError)
