"""Token providers: where the bearer token of a stream comes from.

A stream asks its :class:`TokenProvider` for an :class:`AccessToken` before each connection
(protocol §2: the token goes in ``connection_init``) and rotates the connection before the token
expires (protocol §4: tokens last 60 minutes and cannot be refreshed in-band).

* :class:`OAuthClientCredentials`: the client-credentials grant of OCIM environments, with an
  enterprise id (protocol §8).
* :class:`OAuthPassword`: the resource-owner password grant of older environments (protocol §8).
* :class:`StaticToken`: a token obtained elsewhere; never refreshed.

The OAuth providers fetch from ``POST {gateway_url}/oauth/v1/tokens`` with httpx, reuse the
token until ``margin`` seconds before it expires, make one request however many tasks ask at
once, retry network errors and server errors a bounded number of times, and map every failure
onto :mod:`ohip_stream`'s errors. They work with or without ``async with``: the httpx client is
made on first use and :meth:`~OAuthClientCredentials.aclose` closes it.

Secrets (client secret, password, application key, tokens) never appear in a ``repr``, a log
record or an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import math
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from ohip_stream._exceptions import (
    AuthenticationError,
    ConfigurationError,
    OhipError,
    TransportError,
)
from ohip_stream._logging import REDACTED, get_logger, install_redaction, redact, register_secret

__all__ = [
    "DEFAULT_SCOPE",
    "TOKEN_PATH",
    "AccessToken",
    "OAuthClientCredentials",
    "OAuthPassword",
    "StaticToken",
    "TokenProvider",
]

_log = get_logger("ohip_stream._auth")

#: The token endpoint, relative to the gateway URL (protocol §8).
TOKEN_PATH = "/oauth/v1/tokens"
#: The scope of the client-credentials grant (protocol §8).
DEFAULT_SCOPE = "urn:opc:hgbu:ws:__myscopes__"

# Protocol §8: the enterpriseId header is 1 to 8 upper-case letters or digits.
_ENTERPRISE_ID = re.compile(r"^[A-Z0-9]{1,8}$")
# What users paste along with a token: the scheme of the Authorization header.
_BEARER_PREFIX = re.compile(r"^bearer(?:\s+|$)", re.IGNORECASE)

# Statuses worth another try: the server or something in front of it is overloaded or broken.
_RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# Protocol §8: 400, 401 (bad client, user, password or scope) and 403. What to check for each.
_STATUS_HINTS = {
    400: (
        "check the grant type for this environment (client credentials with an enterprise id, "
        "or password) and the enterprise id / scope"
    ),
    401: ("check the client id and secret (and the username and password for the password grant)"),
    403: "check the application key is registered for this environment",
    404: f"check gateway_url: the token endpoint is <gateway_url>{TOKEN_PATH}",
    405: f"check gateway_url: the token endpoint is <gateway_url>{TOKEN_PATH}",
}

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Verify = bool | str | os.PathLike[str] | ssl.SSLContext
Proxy = str | httpx.URL | httpx.Proxy | None


# --------------------------------------------------------------------------------------------
# The token


@dataclass(frozen=True, slots=True, repr=False)
class AccessToken:
    """A bearer token and when it stops being valid.

    ``issued_at`` and ``expires_at`` are epoch seconds by the provider's clock;
    ``expires_at=None`` means the token never expires. The ``repr`` never shows the value.
    """

    #: The bearer token, as sent in ``Authorization: Bearer <value>`` (protocol §2).
    value: str
    #: When the token was issued (epoch seconds).
    issued_at: float
    #: When the token expires (epoch seconds), or ``None`` if it never does.
    expires_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"AccessToken(value={REDACTED}, issued_at={self.issued_at!r}, "
            f"expires_at={self.expires_at!r})"
        )

    __str__ = __repr__

    @property
    def lifetime(self) -> float | None:
        """Seconds from issue to expiry, or ``None`` if the token never expires."""
        if self.expires_at is None:
            return None
        return self.expires_at - self.issued_at

    def expires_in(self, now: float) -> float | None:
        """Seconds from ``now`` to expiry (negative once expired), or ``None`` if never."""
        if self.expires_at is None:
            return None
        return self.expires_at - now

    def is_expired(self, now: float) -> bool:
        """Whether the token has expired at ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def refresh_at(self, margin: float) -> float | None:
        """When to stop using this token: ``margin`` seconds before expiry, or ``None`` if never.

        The margin is capped at half the token's lifetime, so a token that lives shorter than
        twice the margin is still used for half its life rather than refreshed at once.
        """
        lifetime = self.lifetime
        if self.expires_at is None or lifetime is None:
            return None
        return self.expires_at - min(max(margin, 0.0), max(lifetime, 0.0) / 2)


@runtime_checkable
class TokenProvider(Protocol):
    """Where a stream gets its bearer tokens.

    Implement this to bring tokens from elsewhere (a vault, a sidecar). ``get_token`` may be
    called from many tasks at once and should return the current token while it is fresh.
    """

    @property
    def enterprise_id(self) -> str | None:
        """The enterprise id the tokens are for, when the environment has one (protocol §8)."""
        ...

    @property
    def margin(self) -> float:
        """Seconds before expiry at which a token is no longer handed out.

        The stream rotates its connection by the token's expiry minus this margin (see
        :meth:`AccessToken.refresh_at`).
        """
        ...

    async def get_token(self) -> AccessToken:
        """The current token, fetching a new one when there is none or it is about to expire."""
        ...

    def invalidate(self, token: AccessToken) -> None:
        """Drop ``token`` if it is still the current one, so the next ``get_token`` fetches."""
        ...

    async def aclose(self) -> None:
        """Release what the provider holds (its HTTP client). Idempotent."""
        ...


# --------------------------------------------------------------------------------------------
# Helpers


class _Secret:
    """A string that does not show itself in ``repr`` (or in tracebacks that print locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWS-compact token, read and not verified; ``None`` if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: object) -> float | None:
    """``value`` as a finite float, if it is a number (or a numeric string); else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def _require(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is required: pass a non-empty string as {name}=")
    return value


def _check_enterprise_id(value: str) -> str:
    # Protocol §8: enterpriseId matches ^[A-Z0-9]{1,8}$.
    if not _ENTERPRISE_ID.fullmatch(value):
        raise ConfigurationError(
            "enterprise_id must be 1 to 8 upper-case letters or digits (^[A-Z0-9]{1,8}$), "
            f"got {value!r}"
        )
    return value


def _refuse_plain_http(gateway_url: str, allow_insecure: bool) -> None:
    parts = urlsplit(gateway_url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or allow_insecure or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigurationError(
        f"gateway_url uses plain http for {host}: the client secret and the tokens would cross "
        "the network unencrypted. Use https, or pass allow_insecure=True for a test gateway"
    )


def _normalize_gateway(gateway_url: object) -> tuple[str, str]:
    """The gateway URL without a trailing slash, and its host (for reprs and messages)."""
    url = _require("gateway_url", gateway_url).strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(
            f"gateway_url is not a valid URL ({exc}): pass the gateway's base URL, "
            "https://<host>[:<port>]"
        ) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(
            "gateway_url must be an http(s) URL such as https://<host>, the gateway's base URL "
            f"(the token endpoint is <gateway_url>{TOKEN_PATH}); got a URL with scheme "
            f"{parts.scheme or 'none'!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            "gateway_url must not have a query or fragment: pass the gateway's base URL"
        )
    if parts.username or parts.password:
        raise ConfigurationError(
            "gateway_url must not carry credentials: pass client_id= and client_secret="
        )
    try:
        httpx.URL(url + TOKEN_PATH)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ConfigurationError(
            f"gateway_url is not a valid URL ({exc}): pass the gateway's base URL, "
            "https://<host>[:<port>]"
        ) from None
    return url.rstrip("/"), parts.hostname


def _check_proxy(proxy: Proxy) -> Proxy:
    """``proxy`` after checking httpx can use it; its password is registered as a secret."""
    if proxy is None:
        return None
    try:
        parsed = proxy if isinstance(proxy, httpx.Proxy) else httpx.Proxy(proxy)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ConfigurationError(
            "proxy must be an http://, https:// or socks5:// URL (or an httpx.Proxy)"
        ) from None
    if parsed.auth is not None:
        register_secret(parsed.auth[1])
    return proxy


def _ssl_context(verify: Verify) -> bool | ssl.SSLContext:
    """What httpx takes as ``verify=``: a CA file path becomes an SSL context."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    if isinstance(verify, str | os.PathLike):
        path = os.fspath(verify)
        try:
            return ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"verify={path!r} is not a readable PEM CA file: pass the path of the CA "
                "bundle that signed the gateway's certificate"
            ) from exc
    raise ConfigurationError(
        "verify must be True, False, a CA file path or an ssl.SSLContext, "
        f"got {type(verify).__name__}"
    )


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


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, OhipError) and exc.retriable


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """``error`` and ``error_description`` of an OAuth error body, redacted; if it has them."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    fields = []
    for key in ("error", "error_description"):
        value = body.get(key)
        fields.append(redact(str(value))[:500] if value is not None else None)
    return fields[0], fields[1]


# --------------------------------------------------------------------------------------------
# OAuth providers


class _OAuthProvider:
    """What the two OAuth grants share: the request, reuse, single flight, retries, errors."""

    _grant: str = ""

    def __init__(
        self,
        *,
        gateway_url: str,
        client_id: str,
        client_secret: str,
        app_key: str,
        margin: float,
        http_client: httpx.AsyncClient | None,
        verify: Verify,
        proxy: Proxy,
        timeout: float | httpx.Timeout,
        retries: int,
        clock: Clock,
        sleep: Sleep,
        allow_insecure: bool = False,
    ) -> None:
        install_redaction()
        self._gateway_url, self._host = _normalize_gateway(gateway_url)
        _refuse_plain_http(self._gateway_url, allow_insecure)
        self._client_id = _require("client_id", client_id)
        if ":" in client_id:
            # RFC 7617: the user-id of Basic credentials cannot contain a colon.
            raise ConfigurationError("client_id must not contain ':'")
        secret = _require("client_secret", client_secret)
        key = _require("app_key", app_key)
        register_secret(secret, key)
        self._client_secret = _Secret(secret)
        self._app_key = _Secret(key)
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")
        register_secret(basic)
        self._basic = _Secret(basic)

        margin_value = _number(margin)
        if margin_value is None or margin_value < 0:
            raise ConfigurationError("margin must be a number of seconds >= 0")
        self._margin = margin_value
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError("retries must be an int >= 0 (0: a single attempt)")
        self._retries = retries
        if isinstance(timeout, httpx.Timeout):
            self._timeout = timeout
        else:
            seconds = _number(timeout)
            if seconds is None or seconds <= 0:
                raise ConfigurationError("timeout must be a number of seconds > 0")
            self._timeout = httpx.Timeout(seconds)

        if http_client is not None and (verify is not True or proxy is not None):
            raise ConfigurationError(
                "verify= and proxy= configure the client the provider makes; with http_client= "
                "configure them on your own httpx.AsyncClient instead"
            )
        self._verify = _ssl_context(verify) if http_client is None else True
        self._proxy = _check_proxy(proxy)
        self._external_client = http_client
        self._own_client: httpx.AsyncClient | None = None

        self._clock = clock
        self._sleep = sleep
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        # Single flight: callers queued behind a fetch that failed get its error rather than
        # sending one more request each (a wrong password must not be tried 100 times).
        self._fetches = 0
        self._last_error: OhipError | None = None

    # -- public surface ----------------------------------------------------------------------

    @property
    def enterprise_id(self) -> str | None:
        """The enterprise id the tokens are for (``None`` for the password grant)."""
        return None

    @property
    def margin(self) -> float:
        """Seconds before expiry when the token stops being reused (capped at half its life)."""
        return self._margin

    @property
    def token_url(self) -> str:
        """The token endpoint: ``{gateway_url}/oauth/v1/tokens`` (protocol §8)."""
        return self._gateway_url + TOKEN_PATH

    async def get_token(self) -> AccessToken:
        """The current token if it is fresh, else a new one from the token endpoint.

        A token is fresh until ``margin`` seconds before it expires (the margin capped at half
        its lifetime). Concurrent callers share one request.

        Raises:
            AuthenticationError: the endpoint refused the credentials (400, 401, 403), kept
                failing with server errors, or answered with a body that is not a token.
            TransportError: the network failed on every attempt.
            ConfigurationError: the endpoint's TLS certificate is not trusted.
        """
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
        """Drop ``token`` if it is still the current one; the next ``get_token`` fetches anew.

        A stale token (one already replaced) is ignored, so two connections that both saw a
        4401 cause one new fetch, not two (protocol §5: 4401, fetch a new token once).
        """
        if self._token is not None and self._token == token:
            self._token = None
            _log.debug("token invalidated (%s, %s)", self._grant, self._host)

    async def aclose(self) -> None:
        """Close the HTTP client the provider made (never a caller's ``http_client``).

        Idempotent. A later ``get_token`` makes a new client.
        """
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> _OAuthProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(gateway={self._host!r}, client_id={self._client_id!r}, "
            f"grant={self._grant!r})"
        )

    # -- internals ---------------------------------------------------------------------------

    def _form(self) -> dict[str, str]:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        # Protocol §8: Basic base64(client_id:client_secret) and the RAW application key.
        return {
            "Authorization": f"Basic {self._basic.get()}",
            "x-app-key": self._app_key.get(),
            "Accept": "application/json",
        }

    def _fresh_token(self) -> AccessToken | None:
        token = self._token
        if token is None:
            return None
        refresh_at = token.refresh_at(self._margin)
        if refresh_at is not None and self._clock() >= refresh_at:
            return None
        return token

    def _client(self) -> httpx.AsyncClient:
        if self._external_client is not None:
            return self._external_client
        if self._own_client is None:
            self._own_client = httpx.AsyncClient(
                timeout=self._timeout,
                verify=self._verify,
                proxy=self._proxy,
                follow_redirects=False,
            )
        return self._own_client

    async def _fetch(self) -> AccessToken:
        attempts = self._retries + 1
        attempt_number = 0

        async def attempt() -> AccessToken:
            nonlocal attempt_number
            attempt_number += 1
            return await self._request_once(attempt_number, attempts)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            # Jittered exponential backoff, so many clients do not retry in step.
            wait=wait_random_exponential(multiplier=0.5, max=10.0),
            retry=retry_if_exception(_is_retriable),
            sleep=self._sleep,
            reraise=True,
            before_sleep=self._log_retry,
        )
        token: AccessToken = await retrying(attempt)
        return token

    def _log_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        _log.warning("%s; retrying in %.1f s", error, wait)

    async def _request_once(self, attempt: int, attempts: int) -> AccessToken:
        _log.debug(
            "requesting a token from %s (grant %s, attempt %d of %d)",
            self._host,
            self._grant,
            attempt,
            attempts,
        )
        started = self._clock()
        client = self._client()
        if client.is_closed:
            raise ConfigurationError(
                "the http_client given to the token provider is closed: keep it open while the "
                "provider is in use"
            )
        try:
            response = await client.post(
                self.token_url, data=self._form(), headers=self._headers(), timeout=self._timeout
            )
        except httpx.RequestError as exc:  # network, timeouts, undecodable bodies
            if _is_certificate_error(exc):
                raise ConfigurationError(
                    f"the TLS certificate of {self._host} is not trusted: pass verify= with "
                    "the CA file (PEM) that signed it, or an ssl.SSLContext"
                ) from exc
            suffix = f" (attempt {attempt} of {attempts})"
            raise TransportError(
                f"token request to {self._host} failed: {type(exc).__name__}: "
                f"{redact(str(exc)) or 'no detail'}{suffix}"
            ) from exc
        return self._token_from(response, started, attempt, attempts)

    def _token_from(
        self, response: httpx.Response, started: float, attempt: int, attempts: int
    ) -> AccessToken:
        status = response.status_code
        if status != 200:
            raise self._status_error(response, attempt, attempts)
        try:
            body = response.json()
        except ValueError:
            raise AuthenticationError(
                f"the token endpoint of {self._host} answered 200 with a body that is not JSON",
                status=status,
            ) from None
        if not isinstance(body, Mapping):
            raise AuthenticationError(
                f"the token endpoint of {self._host} answered 200 with JSON that is not an object",
                status=status,
            )
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthenticationError(
                f"the token endpoint of {self._host} answered 200 without an access_token",
                status=status,
            )
        register_secret(value, transient=True)
        token_type = body.get("token_type")
        if token_type is not None and str(token_type).lower() != "bearer":
            raise AuthenticationError(
                f"the token endpoint of {self._host} answered with token_type "
                f"{redact(str(token_type))!r}, expected 'Bearer'",
                status=status,
            )
        expires_at = self._expiry(body, value, started)
        token = AccessToken(value=value, issued_at=started, expires_at=expires_at)
        _log.info(
            "token fetched (expires in %d s) from %s for client %s (grant %s)",
            round(expires_at - started),
            self._host,
            self._client_id,
            self._grant,
        )
        return token

    def _expiry(self, body: Mapping[str, Any], value: str, issued_at: float) -> float:
        """Expiry from ``expires_in`` cross-checked with the JWT ``exp`` claim (protocol §8)."""
        candidates: list[float] = []
        raw_expires_in = body.get("expires_in")
        expires_in = _number(raw_expires_in)
        if raw_expires_in is not None and (expires_in is None or expires_in <= 0):
            raise AuthenticationError(
                f"the token endpoint of {self._host} answered with expires_in "
                f"{redact(str(raw_expires_in))!r}, expected a positive number of seconds",
                status=200,
            )
        if expires_in is not None:
            candidates.append(issued_at + expires_in)

        claims = _jwt_claims(value)
        exp = _number(claims.get("exp")) if claims else None
        if claims is not None and exp is not None:
            iat = _number(claims.get("iat"))
            if iat is not None and exp > iat:
                # Lifetime by the server's own clock, counted from our issue time: immune to a
                # skew between the two clocks.
                candidates.append(issued_at + (exp - iat))
            elif exp > issued_at:
                candidates.append(exp)
            else:
                _log.warning(
                    "the token's exp claim is %d s in the past by this host's clock; check the "
                    "clock (using expires_in)",
                    round(issued_at - exp),
                )
        if not candidates:
            raise AuthenticationError(
                f"the token endpoint of {self._host} answered without expires_in and the "
                "token has no usable exp claim: its expiry is unknown",
                status=200,
            )
        expires_at = min(candidates)
        _log.debug(
            "token lifetime %d s (expires_in %s, JWT exp %s)",
            round(expires_at - issued_at),
            "absent" if expires_in is None else f"{expires_in:g}",
            "absent" if exp is None else "present",
        )
        return expires_at

    def _status_error(self, response: httpx.Response, attempt: int, attempts: int) -> OhipError:
        status = response.status_code
        error, description = _error_fields(response)
        said = ""
        if error or description:
            said = ": " + " - ".join(part for part in (error, description) if part)
        if status in _RETRIABLE_STATUSES:
            exc = AuthenticationError(
                f"the token endpoint of {self._host} answered HTTP {status}{said} "
                f"(attempt {attempt} of {attempts})",
                status=status,
                error=error,
                error_description=description,
            )
            exc.retriable = True
            return exc
        hint = _STATUS_HINTS.get(status, "check gateway_url and the credentials")
        return AuthenticationError(
            f"the token endpoint of {self._host} refused the request with HTTP {status}{said}; "
            f"{hint}",
            status=status,
            error=error,
            error_description=description,
        )


class OAuthClientCredentials(_OAuthProvider):
    """Tokens from the client-credentials grant (OCIM environments, protocol §8).

    Sends ``grant_type=client_credentials&scope=<scope>`` with the ``enterpriseId`` header.

    Args:
        gateway_url: the gateway's base URL (``https://<host>``); the token endpoint is
            ``{gateway_url}/oauth/v1/tokens``.
        client_id, client_secret: the OAuth client of the integration.
        app_key: the application key (raw, not hashed), sent as ``x-app-key``.
        enterprise_id: the enterprise id, 1 to 8 upper-case letters or digits.
        scope: the requested scope.
        margin: stop reusing a token this many seconds before it expires (capped at half the
            token's lifetime); the stream rotates its connection by then.
        http_client: a caller's own ``httpx.AsyncClient``; the provider never closes it.
        verify: for the client the provider makes: ``True`` (system CAs), ``False``, the path
            of a PEM CA file, or an ``ssl.SSLContext``.
        proxy: for the client the provider makes: the proxy URL.
        timeout: seconds allowed for each phase of each token request (or an ``httpx.Timeout``).
        retries: how many times a network error or a server error (5xx, 408, 429) is retried,
            with jittered exponential backoff, before giving up.
        clock: returns the time in epoch seconds (tests inject a fake one).
        sleep: awaited between retries (tests inject one that returns at once).
        allow_insecure: allow a plain ``http://`` gateway that is not on this host (the client
            secret and the tokens would cross the network unencrypted; a test gateway only).
    """

    _grant = "client_credentials"

    def __init__(
        self,
        *,
        gateway_url: str,
        client_id: str,
        client_secret: str,
        app_key: str,
        enterprise_id: str,
        scope: str = DEFAULT_SCOPE,
        margin: float = 300.0,
        http_client: httpx.AsyncClient | None = None,
        verify: Verify = True,
        proxy: Proxy = None,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        allow_insecure: bool = False,
    ) -> None:
        self._enterprise_id = _check_enterprise_id(_require("enterprise_id", enterprise_id))
        self._scope = _require("scope", scope)
        super().__init__(
            gateway_url=gateway_url,
            client_id=client_id,
            client_secret=client_secret,
            app_key=app_key,
            margin=margin,
            http_client=http_client,
            verify=verify,
            proxy=proxy,
            timeout=timeout,
            retries=retries,
            clock=clock,
            sleep=sleep,
            allow_insecure=allow_insecure,
        )

    @property
    def enterprise_id(self) -> str:
        """The enterprise id, sent as the ``enterpriseId`` header (protocol §8)."""
        return self._enterprise_id

    async def __aenter__(self) -> OAuthClientCredentials:
        return self

    def _form(self) -> dict[str, str]:
        # Protocol §8: client-credentials environments.
        return {"grant_type": "client_credentials", "scope": self._scope}

    def _headers(self) -> dict[str, str]:
        # Protocol §8: enterpriseId only for client-credentials environments.
        return {**super()._headers(), "enterpriseId": self._enterprise_id}


class OAuthPassword(_OAuthProvider):
    """Tokens from the resource-owner password grant (older environments, protocol §8).

    Sends ``grant_type=password&username=<username>&password=<password>``, without an
    ``enterpriseId`` header. The other arguments are those of :class:`OAuthClientCredentials`.

    Args:
        username, password: the integration user of the environment.
    """

    _grant = "password"

    def __init__(
        self,
        *,
        gateway_url: str,
        client_id: str,
        client_secret: str,
        app_key: str,
        username: str,
        password: str,
        margin: float = 300.0,
        http_client: httpx.AsyncClient | None = None,
        verify: Verify = True,
        proxy: Proxy = None,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        allow_insecure: bool = False,
    ) -> None:
        self._username = _require("username", username)
        secret = _require("password", password)
        register_secret(secret)
        self._password = _Secret(secret)
        super().__init__(
            gateway_url=gateway_url,
            client_id=client_id,
            client_secret=client_secret,
            app_key=app_key,
            margin=margin,
            http_client=http_client,
            verify=verify,
            proxy=proxy,
            timeout=timeout,
            retries=retries,
            clock=clock,
            sleep=sleep,
            allow_insecure=allow_insecure,
        )

    async def __aenter__(self) -> OAuthPassword:
        return self

    def _form(self) -> dict[str, str]:
        # Protocol §8: resource-owner environments.
        return {
            "grant_type": "password",
            "username": self._username,
            "password": self._password.get(),
        }


# --------------------------------------------------------------------------------------------
# A token from elsewhere


class StaticToken:
    """A bearer token obtained elsewhere; never refreshed.

    If the value is a JWT, its expiry comes from the ``exp`` claim and its issue time from
    ``iat`` (read, not verified); otherwise it never expires and was issued now. Once expired,
    :meth:`get_token` raises :class:`AuthenticationError`: supply a new token.

    Args:
        token: the bearer token (a leading ``Bearer `` is removed).
        enterprise_id: the enterprise id the token is for, if any.
        clock: returns the time in epoch seconds.
    """

    def __init__(
        self, token: str, *, enterprise_id: str | None = None, clock: Clock = time.time
    ) -> None:
        install_redaction()
        value = _BEARER_PREFIX.sub("", _require("token", token).strip(), count=1)
        if not value:
            raise ConfigurationError("token is required: pass the bearer token")
        register_secret(value)
        if enterprise_id is not None:
            _check_enterprise_id(enterprise_id)
        self._enterprise_id = enterprise_id
        self._clock = clock
        now = clock()
        claims = _jwt_claims(value) or {}
        iat = _number(claims.get("iat"))
        exp = _number(claims.get("exp"))
        self._token = AccessToken(
            value=value, issued_at=iat if iat is not None else now, expires_at=exp
        )

    @property
    def enterprise_id(self) -> str | None:
        """The enterprise id given at construction, if any."""
        return self._enterprise_id

    @property
    def margin(self) -> float:
        """Always 0: a static token is used until it expires."""
        return 0.0

    async def get_token(self) -> AccessToken:
        """The token.

        Raises:
            AuthenticationError: the token has expired (by its ``exp`` claim).
        """
        if self._token.is_expired(self._clock()):
            raise AuthenticationError(
                "the static token has expired (by its exp claim): supply a new token"
            )
        return self._token

    def invalidate(self, token: AccessToken) -> None:
        """Nothing to do: a static token cannot be replaced."""

    async def aclose(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"StaticToken(expires_at={self._token.expires_at!r})"
