"""Token providers: where the bearer token of a stream comes from.

A stream asks its :class:`TokenProvider` for an :class:`AccessToken` before each connection
(the token goes in the ``connection_init`` message) and rotates the connection before the
token expires (tokens last 60 minutes and cannot be refreshed on an open connection).

* :class:`OAuthClientCredentials`: the client-credentials grant of OCIM environments, with an
  enterprise id, sent as the ``enterpriseId`` header.
* :class:`OAuthPassword`: the resource-owner password grant of older environments.
* :class:`StaticToken`: a token obtained elsewhere; never renewed.

The OAuth providers fetch from ``POST {gateway_url}/oauth/v1/tokens`` with httpx, reuse the
token until ``margin`` seconds before it expires, make one request however many tasks ask at
once, bound each request in time (``deadline``) and size (``max_response_size``), retry network
errors and server errors a bounded number of times, and map every failure onto
:mod:`ohip_stream`'s errors.

Who closes what: a provider holds no connection between token requests. The httpx client it
makes for a request (and its retries) is closed as soon as that request ends, so a provider used
without ``async with`` and never closed leaves nothing open. A caller's own ``http_client`` is
the caller's to close; the provider never closes it. ``aclose()`` (and leaving ``async with``)
is idempotent, and the provider stays usable after it.

Secrets (client secret, password, application key, tokens, a proxy's password) never appear in
a ``repr``, a log record or an exception message.
"""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self, Unpack

from ohip_stream._auth_oauth import TokenEndpoint
from ohip_stream._auth_options import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_RESPONSE_SIZE,
    TOKEN_PATH,
    OAuthOptions,
    Secret,
    check_enterprise_id,
    require,
    resolve_options,
)
from ohip_stream._auth_static import StaticToken
from ohip_stream._auth_tokens import AccessToken, TokenProvider
from ohip_stream._logging import register_secret

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "DEFAULT_SCOPE",
    "TOKEN_PATH",
    "AccessToken",
    "OAuthClientCredentials",
    "OAuthOptions",
    "OAuthPassword",
    "StaticToken",
    "TokenProvider",
]

#: The scope of the client-credentials grant: the scopes granted to the application.
DEFAULT_SCOPE = "urn:opc:hgbu:ws:__myscopes__"


class _OAuthProvider:
    """What the two OAuth providers share: the token endpoint's cache, renewal and lifetime.

    Private: the reference shows the public classes with these members as their own.
    """

    _endpoint: TokenEndpoint

    @property
    def margin(self) -> float:
        """Seconds before expiry when the token stops being reused (capped at half its life)."""
        return self._endpoint.options.margin

    @property
    def renewable(self) -> bool:
        """Always ``True``: the provider fetches a new token when asked."""
        return True

    @property
    def token_url(self) -> str:
        """The token endpoint: ``{gateway_url}/oauth/v1/tokens``."""
        return self._endpoint.token_url

    async def get_token(self) -> AccessToken:
        """The current token if it is fresh, else a new one from the token endpoint.

        A token is fresh until ``margin`` seconds before it expires. Concurrent callers share
        one request (and its failure).

        Raises:
            AuthenticationError: the endpoint refused the request (400, 401, 403, 404...), or
                answered 200 with a body that is not a token (or larger than
                ``max_response_size``).
            TransportError: the network failed, the answer missed the ``deadline``, or the
                endpoint answered 5xx, 408 or 429, on every attempt.
            ConfigurationError: the endpoint's TLS certificate is not trusted, or the caller's
                ``http_client`` is closed.
        """
        return await self._endpoint.get_token()

    def invalidate(self, token: AccessToken) -> None:
        """Drop ``token`` if it is still the current one; the next ``get_token`` fetches anew.

        A stale token (one already replaced) is ignored, so two connections that both saw a
        4401 cause one new fetch, not two (after a 4401 the stream fetches a new token once).
        """
        self._endpoint.invalidate(token)

    async def aclose(self) -> None:
        """Nothing stays open between requests; idempotent, and the provider stays usable."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class OAuthClientCredentials(_OAuthProvider):
    """Tokens from the client-credentials grant (OCIM environments).

    Sends ``grant_type=client_credentials&scope=<scope>`` with the ``enterpriseId`` header,
    ``Authorization: Basic`` of the client id and secret, and the raw ``x-app-key``.

    Works with or without ``async with``: the provider holds no connection between token
    requests (the httpx client it makes for a request is closed when the request ends), so
    nothing is left open if it is never closed. A caller's ``http_client`` is the caller's to
    close. ``aclose()`` is idempotent. The keyword arguments are the options both OAuth
    providers take.

    Args:
        enterprise_id: the enterprise id, 1 to 8 upper-case letters or digits.
        scope: the requested scope (default ``urn:opc:hgbu:ws:__myscopes__``).

    Keyword Args:
        gateway_url (str): the gateway's base URL (``https://<host>``); the token endpoint is
            ``{gateway_url}/oauth/v1/tokens``.
        client_id (str): the OAuth client id of the integration (no ``:``, RFC 7617).
        client_secret (str): the OAuth client secret.
        app_key (str): the application key (raw, not hashed), sent as ``x-app-key``.
        margin (float): stop reusing a token this many seconds before it expires (default 300;
            capped at half the token's lifetime); the stream rotates its connection by then.
        http_client (httpx.AsyncClient | None): a caller's own client; the provider never closes it.
            Configure TLS and proxies on it (``verify`` and ``proxy`` are then refused).
        verify (bool | str | os.PathLike | ssl.SSLContext): TLS verification of the client the
            provider makes: ``True`` (system CAs, the default), ``False``, the path of a PEM CA
            file, or an ``ssl.SSLContext``.
        proxy (str | httpx.URL | httpx.Proxy | None): the proxy of the client the provider makes (an
            ``http://``, ``https://`` or ``socks5://`` URL, or an ``httpx.Proxy``); its password
            never appears in messages, reprs or logs.
        timeout (float | httpx.Timeout): seconds allowed for each phase of a request (connect,
            write, read, pool), or an ``httpx.Timeout`` (default 10).
        deadline (float | None): seconds one request may take, from sending to the last byte of the
            answer (default 30; ``None``: no deadline); a slower answer fails the attempt with
            :class:`~ohip_stream.TransportError`.
        max_response_size (int | None): the largest answer read, in bytes (default 1 MiB; ``None``:
            no limit); a larger token answer is an :class:`~ohip_stream.AuthenticationError`.
        retries (int): how many times a network error, a timeout or a server error (5xx, 408, 429)
            is retried, with jittered exponential backoff, before giving up (default 3).
        clock (Callable[[], float]): returns the time in epoch seconds (default ``time.time``; tests
            inject one).
        sleep (Callable[[float], Awaitable[None]]): awaited between retries (default
            ``asyncio.sleep``; tests inject one).
        allow_insecure (bool): allow a plain ``http://`` gateway that is not on this host (the
            client secret and the tokens would cross the network unencrypted; a test gateway only).

    Raises:
        ConfigurationError: a missing or invalid argument; the message names it.
    """

    def __init__(
        self,
        *,
        enterprise_id: str,
        scope: str = DEFAULT_SCOPE,
        **options: Unpack[OAuthOptions],
    ) -> None:
        resolved = resolve_options(type(self).__name__, options)
        self._enterprise_id = check_enterprise_id(require("enterprise_id", enterprise_id))
        self._scope = require("scope", scope)
        self._endpoint = TokenEndpoint(
            resolved,
            grant="client_credentials",
            form=self._form,
            # Protocol §8: enterpriseId only for client-credentials environments.
            headers={"enterpriseId": self._enterprise_id},
        )

    def _form(self) -> dict[str, str]:
        # Protocol §8: client-credentials environments.
        return {"grant_type": "client_credentials", "scope": self._scope}

    @property
    def enterprise_id(self) -> str:
        """The enterprise id, sent as the ``enterpriseId`` header of each token request."""
        return self._enterprise_id

    def __repr__(self) -> str:
        return f"OAuthClientCredentials({self._endpoint.describe()})"


class OAuthPassword(_OAuthProvider):
    """Tokens from the resource-owner password grant (older environments).

    Sends ``grant_type=password&username=<username>&password=<password>``, without an
    ``enterpriseId`` header, with ``Authorization: Basic`` of the client id and secret and the
    raw ``x-app-key``.

    Works with or without ``async with``: the provider holds no connection between token
    requests (the httpx client it makes for a request is closed when the request ends), so
    nothing is left open if it is never closed. A caller's ``http_client`` is the caller's to
    close. ``aclose()`` is idempotent. The keyword arguments are the options both OAuth
    providers take.

    Args:
        username: the integration user of the environment.
        password: that user's password.

    Keyword Args:
        gateway_url (str): the gateway's base URL (``https://<host>``); the token endpoint is
            ``{gateway_url}/oauth/v1/tokens``.
        client_id (str): the OAuth client id of the integration (no ``:``, RFC 7617).
        client_secret (str): the OAuth client secret.
        app_key (str): the application key (raw, not hashed), sent as ``x-app-key``.
        margin (float): stop reusing a token this many seconds before it expires (default 300;
            capped at half the token's lifetime); the stream rotates its connection by then.
        http_client (httpx.AsyncClient | None): a caller's own client; the provider never closes it.
            Configure TLS and proxies on it (``verify`` and ``proxy`` are then refused).
        verify (bool | str | os.PathLike | ssl.SSLContext): TLS verification of the client the
            provider makes: ``True`` (system CAs, the default), ``False``, the path of a PEM CA
            file, or an ``ssl.SSLContext``.
        proxy (str | httpx.URL | httpx.Proxy | None): the proxy of the client the provider makes (an
            ``http://``, ``https://`` or ``socks5://`` URL, or an ``httpx.Proxy``); its password
            never appears in messages, reprs or logs.
        timeout (float | httpx.Timeout): seconds allowed for each phase of a request (connect,
            write, read, pool), or an ``httpx.Timeout`` (default 10).
        deadline (float | None): seconds one request may take, from sending to the last byte of the
            answer (default 30; ``None``: no deadline); a slower answer fails the attempt with
            :class:`~ohip_stream.TransportError`.
        max_response_size (int | None): the largest answer read, in bytes (default 1 MiB; ``None``:
            no limit); a larger token answer is an :class:`~ohip_stream.AuthenticationError`.
        retries (int): how many times a network error, a timeout or a server error (5xx, 408, 429)
            is retried, with jittered exponential backoff, before giving up (default 3).
        clock (Callable[[], float]): returns the time in epoch seconds (default ``time.time``; tests
            inject one).
        sleep (Callable[[float], Awaitable[None]]): awaited between retries (default
            ``asyncio.sleep``; tests inject one).
        allow_insecure (bool): allow a plain ``http://`` gateway that is not on this host (the
            client secret, the password and the tokens would cross the network unencrypted; a test
            gateway only).

    Raises:
        ConfigurationError: a missing or invalid argument; the message names it.
    """

    def __init__(self, *, username: str, password: str, **options: Unpack[OAuthOptions]) -> None:
        resolved = resolve_options(type(self).__name__, options)
        self._username = require("username", username)
        secret = require("password", password)
        register_secret(secret)
        self._password = Secret(secret)
        self._endpoint = TokenEndpoint(resolved, grant="password", form=self._form)

    def _form(self) -> dict[str, str]:
        # Protocol §8: resource-owner environments.
        return {
            "grant_type": "password",
            "username": self._username,
            "password": self._password.get(),
        }

    @property
    def enterprise_id(self) -> None:
        """Always ``None``: password-grant environments have no enterprise id."""
        return None

    def __repr__(self) -> str:
        return f"OAuthPassword({self._endpoint.describe()})"
