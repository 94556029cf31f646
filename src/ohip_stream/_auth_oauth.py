"""What both OAuth grants share: the request, reuse, single flight, retries, limits, errors.

One :class:`TokenEndpoint` serves one provider. A fetch (one attempt and its retries) runs on
an httpx client made for it and closed when it ends, unless the caller gave its own client: the
provider holds no connection between fetches, so a provider that is never closed leaves
nothing open (tokens are fetched about once an hour; a kept connection would only idle).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from ohip_stream._auth_answer import Answer, token_from
from ohip_stream._auth_options import TOKEN_PATH, ResolvedOptions
from ohip_stream._auth_tokens import AccessToken
from ohip_stream._compat import timeout
from ohip_stream._exceptions import ConfigurationError, OhipError, TransportError
from ohip_stream._logging import get_logger, install_redaction, redact

__all__ = ["TokenEndpoint"]

_log = get_logger("ohip_stream.auth")


class TokenEndpoint:
    """Fetches tokens of one grant from ``POST {gateway_url}/oauth/v1/tokens``.

    ``form`` gives the grant's form fields at each request (so that a password stays wrapped
    in its owner until then); ``headers`` are the grant's own headers.
    """

    def __init__(
        self,
        options: ResolvedOptions,
        *,
        grant: str,
        form: Callable[[], dict[str, str]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        install_redaction()
        self._options = options
        self._grant = grant
        self._form = form
        self._headers = {
            # Protocol §8: the RAW application key (never its hash).
            "x-app-key": options.app_key.get(),
            "Accept": "application/json",
            **(headers or {}),
        }
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        # Single flight: callers queued behind a fetch that failed get its error rather than
        # sending one more request each (a wrong password must not be tried 100 times).
        self._fetches = 0
        self._last_error: OhipError | None = None

    @property
    def options(self) -> ResolvedOptions:
        return self._options

    @property
    def token_url(self) -> str:
        return self._options.gateway_url + TOKEN_PATH

    def describe(self) -> str:
        """``gateway=..., client_id=..., grant=...`` (and the proxy without its password)."""
        text = (
            f"gateway={self._options.host!r}, client_id={self._options.client_id!r}, "
            f"grant={self._grant!r}"
        )
        if self._options.proxy_shown is not None:
            text += f", proxy={self._options.proxy_shown!r}"
        return text

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.describe()})"

    async def get_token(self) -> AccessToken:
        """The current token if it is fresh, else one fetched (one fetch for all callers)."""
        token = self._fresh_token()
        if token is not None:
            return token
        fetches_seen = self._fetches
        async with self._lock:
            # Re-check: another task may have fetched while this one waited for the lock.
            token = self._fresh_token()
            if token is not None:
                return token
            if self._fetches != fetches_seen and self._last_error is not None:
                raise self._last_error
            try:
                token = await self._fetch()
            except OhipError as exc:
                self._fetches += 1
                self._last_error = exc
                raise
            except BaseException:
                # Cancelled (or a bug): the next waiter tries again itself.
                self._fetches += 1
                self._last_error = None
                raise
            self._fetches += 1
            self._last_error = None
            self._token = token
            return token

    def invalidate(self, token: AccessToken) -> None:
        """Drop ``token`` if it is still the current one (a stale one is ignored)."""
        if self._token is not None and self._token == token:
            self._token = None
            _log.debug("token invalidated (%s, %s)", self._grant, self._options.host)

    def _fresh_token(self) -> AccessToken | None:
        token = self._token
        if token is None:
            return None
        refresh_at = token.refresh_at(self._options.margin)
        if refresh_at is not None and self._options.clock() >= refresh_at:
            return None
        return token

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        """The caller's client, or one made for this fetch and closed when it ends."""
        external = self._options.http_client
        if external is not None:
            if external.is_closed:
                raise ConfigurationError(
                    "the http_client given to the token provider is closed: keep it open while "
                    "the provider is in use"
                )
            yield external
            return
        async with httpx.AsyncClient(
            timeout=self._options.timeout,
            verify=self._options.verify,
            proxy=self._options.proxy,
            # A redirect would carry the client secret to wherever it points.
            follow_redirects=False,
        ) as client:
            yield client

    async def _fetch(self) -> AccessToken:
        attempts = self._options.retries + 1
        attempt_number = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            # Jittered exponential backoff, so many clients do not retry in step.
            wait=wait_random_exponential(multiplier=0.5, max=10.0),
            retry=retry_if_exception(_is_retriable),
            sleep=self._options.sleep,
            reraise=True,
            before_sleep=_log_retry,
        )
        async with self._client() as client:

            async def attempt() -> AccessToken:
                nonlocal attempt_number
                attempt_number += 1
                return await self._request_once(client, f"(attempt {attempt_number} of {attempts})")

            token: AccessToken = await retrying(attempt)
        _log.info(
            "token fetched (expires in %d s) from %s for client %s (grant %s)",
            round((token.expires_at or token.issued_at) - token.issued_at),
            self._options.host,
            self._options.client_id,
            self._grant,
        )
        return token

    async def _request_once(self, client: httpx.AsyncClient, attempt: str) -> AccessToken:
        _log.debug(
            "requesting a token from %s (grant %s) %s", self._options.host, self._grant, attempt
        )
        issued_at = self._options.clock()
        answer = await self._post(client, attempt)
        return token_from(answer, issued_at)

    async def _post(self, client: httpx.AsyncClient, attempt: str) -> Answer:
        """POST the grant and read the answer, within ``deadline`` and ``max_response_size``."""
        options = self._options
        try:
            async with timeout(options.deadline):
                status, body = await self._exchange(client)
        except TimeoutError:
            # A server trickling its answer must not hold get_token() for longer than this.
            raise TransportError(
                f"the token endpoint of {options.host} did not answer in full within "
                f"deadline={options.deadline:g} s {attempt}"
            ) from None
        except httpx.RequestError as exc:  # network, timeouts, undecodable bodies
            raise self._network_error(exc, attempt) from exc
        return Answer(
            status=status,
            body=body,
            host=options.host,
            attempt=attempt,
            max_response_size=options.max_response_size,
        )

    async def _exchange(self, client: httpx.AsyncClient) -> tuple[int, bytes | None]:
        options = self._options
        async with client.stream(
            "POST",
            self.token_url,
            data=self._form(),
            headers=self._headers,
            # Protocol §8: Basic base64(client_id:client_secret).
            auth=httpx.BasicAuth(options.client_id, options.client_secret.get()),
            timeout=options.timeout,
        ) as response:
            return response.status_code, await _read_capped(response, options.max_response_size)

    def _network_error(self, exc: httpx.RequestError, attempt: str) -> OhipError:
        host = self._options.host
        if _is_certificate_error(exc):
            return ConfigurationError(
                f"the TLS certificate of {host} is not trusted: pass verify= with the CA file "
                "(PEM) that signed it, or an ssl.SSLContext"
            )
        through = ""
        if self._options.proxy_shown is not None:
            through = f" through the proxy {self._options.proxy_shown}"
        return TransportError(
            f"token request to {host}{through} failed: {type(exc).__name__}: "
            f"{redact(str(exc)) or 'no detail'} {attempt}"
        )


async def _read_capped(response: httpx.Response, limit: int | None) -> bytes | None:
    """The (decoded) body, or ``None`` once it is larger than ``limit`` bytes."""
    if limit is None:
        return await response.aread()
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, OhipError) and exc.retriable


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    _log.warning("%s; retrying in %.1f s", error, wait)


def _is_certificate_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed TLS certificate verification."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False
