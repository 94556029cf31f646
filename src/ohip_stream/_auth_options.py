"""The options both OAuth grants take, checked once: one type for the keyword arguments
(:class:`OAuthOptions`) and their validated form (:class:`ResolvedOptions`)."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx
from typing_extensions import Required, TypedDict

from ohip_stream._auth_tokens import number
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import REDACTED, register_secret
from ohip_stream._net import parse_gateway, refuse_plain_http, tls_context

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "TOKEN_PATH",
    "Clock",
    "OAuthOptions",
    "Proxy",
    "ResolvedOptions",
    "Secret",
    "Sleep",
    "Verify",
    "check_enterprise_id",
    "check_proxy",
    "require",
    "resolve_options",
]

#: The token endpoint, relative to the gateway URL.
TOKEN_PATH = "/oauth/v1/tokens"
#: Seconds one token request may take, from sending to the last byte of the answer.
DEFAULT_DEADLINE = 30.0
#: The largest token endpoint answer read (a token answer is a few KiB).
DEFAULT_MAX_RESPONSE_SIZE = 1024 * 1024

# Protocol §8: the enterpriseId header is 1 to 8 upper-case letters or digits.
_ENTERPRISE_ID = re.compile(r"^[A-Z0-9]{1,8}$")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Verify = bool | str | os.PathLike[str] | ssl.SSLContext
Proxy = str | httpx.URL | httpx.Proxy | None


class OAuthOptions(TypedDict, total=False):
    """The keyword arguments :class:`OAuthClientCredentials` and :class:`OAuthPassword` share.

    Each is documented in the docstrings of those classes.
    """

    gateway_url: Required[str]
    client_id: Required[str]
    client_secret: Required[str]
    app_key: Required[str]
    margin: float
    http_client: httpx.AsyncClient | None
    verify: Verify
    proxy: Proxy
    timeout: float | httpx.Timeout
    deadline: float | None
    max_response_size: int | None
    retries: int
    clock: Clock
    sleep: Sleep
    allow_insecure: bool


_REQUIRED = ("gateway_url", "client_id", "client_secret", "app_key")
_KNOWN = frozenset(OAuthOptions.__annotations__)


class Secret:
    """A string that does not show itself in ``repr`` (or in tracebacks that print locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED


@dataclass(frozen=True, slots=True)
class ResolvedOptions:
    """:class:`OAuthOptions` checked, with defaults filled in and secrets wrapped."""

    #: The gateway's base URL, without a trailing slash.
    gateway_url: str
    #: The gateway's host name, for messages and reprs.
    host: str
    client_id: str
    client_secret: Secret
    app_key: Secret
    margin: float
    http_client: httpx.AsyncClient | None
    verify: bool | ssl.SSLContext
    proxy: Proxy
    #: The proxy URL without its user and password (``None`` without a proxy).
    proxy_shown: str | None
    timeout: httpx.Timeout
    deadline: float | None
    max_response_size: int | None
    retries: int
    clock: Clock
    sleep: Sleep


def resolve_options(owner: str, options: OAuthOptions) -> ResolvedOptions:
    """Check ``options`` (the keyword arguments given to ``owner``); fill in the defaults.

    Raises:
        TypeError: an argument ``owner`` does not take.
        ConfigurationError: a missing or invalid value; the message names it.
    """
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise TypeError(
            f"{owner}() got an unexpected keyword argument {unknown[0]!r}; "
            f"the options it takes: {', '.join(sorted(_KNOWN))}"
        )
    # Secrets first: a message about any other option must not be the one that shows them.
    client_id, secret, key = (require(name, options.get(name)) for name in _REQUIRED[1:])
    register_secret(secret, key)
    if ":" in client_id:
        # RFC 7617: the user-id of Basic credentials cannot contain a colon.
        raise ConfigurationError("client_id must not contain ':' (RFC 7617 Basic credentials)")
    proxy, proxy_shown = check_proxy(options.get("proxy"))
    gateway_url, host = _gateway(
        options.get("gateway_url"), options.get("allow_insecure", False) is True
    )
    http_client = options.get("http_client")
    clock = options.get("clock", time.time)
    sleep = options.get("sleep", asyncio.sleep)
    _check_callable("clock", clock)
    _check_callable("sleep", sleep)
    return ResolvedOptions(
        gateway_url=gateway_url,
        host=host,
        client_id=client_id,
        client_secret=Secret(secret),
        app_key=Secret(key),
        margin=_seconds("margin", options.get("margin", 300.0), allow_zero=True),
        http_client=_check_client(http_client, options),
        verify=_ssl_context(options.get("verify", True)) if http_client is None else True,
        proxy=proxy,
        proxy_shown=proxy_shown,
        timeout=_timeout(options.get("timeout", 10.0)),
        deadline=_optional_seconds("deadline", options.get("deadline", DEFAULT_DEADLINE)),
        max_response_size=_size(options.get("max_response_size", DEFAULT_MAX_RESPONSE_SIZE)),
        retries=_retries(options.get("retries", 3)),
        clock=clock,
        sleep=sleep,
    )


def require(name: str, value: object) -> str:
    """``value`` if it is a non-empty string; else a :class:`ConfigurationError` naming it."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is required: pass a non-empty string as {name}=")
    return value


def check_enterprise_id(value: str) -> str:
    """``value`` if it is a valid enterprise id: 1 to 8 upper-case letters or digits."""
    if not _ENTERPRISE_ID.fullmatch(value):
        raise ConfigurationError(
            "enterprise_id must be 1 to 8 upper-case letters or digits (^[A-Z0-9]{1,8}$), "
            f"got {value!r}"
        )
    return value


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    seconds = number(value)
    if seconds is None or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return seconds


def _optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value)


def _timeout(value: object) -> httpx.Timeout:
    if isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(_seconds("timeout", value))


def _size(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"max_response_size must be a number of bytes >= 1 (or None: no limit), got {value!r}"
        )
    return value


def _retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"retries must be an int >= 0 (0: a single attempt), got {value!r}"
        )
    return value


def _check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise ConfigurationError(f"{name} must be callable, got {type(value).__name__}")


def _check_client(
    http_client: httpx.AsyncClient | None, options: OAuthOptions
) -> httpx.AsyncClient | None:
    if http_client is None:
        return None
    if not isinstance(http_client, httpx.AsyncClient):
        raise ConfigurationError(
            f"http_client must be an httpx.AsyncClient, got {type(http_client).__name__}"
        )
    if options.get("verify", True) is not True or options.get("proxy") is not None:
        raise ConfigurationError(
            "verify= and proxy= configure the client the provider makes; with http_client= "
            "configure them on your own httpx.AsyncClient instead"
        )
    return http_client


def _gateway(gateway_url: object, allow_insecure: bool) -> tuple[str, str]:
    """The gateway URL without a trailing slash and its host, checked by the one gateway
    parser; plain http only to this machine (or when allowed)."""
    gateway = parse_gateway(gateway_url)
    if urlsplit(gateway.url).scheme not in ("https", "http"):
        raise ConfigurationError(
            "gateway_url must be an http(s) URL such as https://<host>, the gateway's base URL "
            f"(the token endpoint is <gateway_url>{TOKEN_PATH})"
        )
    refuse_plain_http(gateway, allow_insecure=allow_insecure, what="the client secret and tokens")
    try:
        httpx.URL(gateway.url + TOKEN_PATH)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ConfigurationError(
            f"gateway_url is not a valid URL ({exc}): pass the gateway's base URL, "
            "https://<host>[:<port>]"
        ) from None
    return gateway.url, urlsplit(gateway.url).hostname or gateway.host


def check_proxy(proxy: object) -> tuple[Proxy, str | None]:
    """``proxy`` after checking httpx can use it, and its URL without user and password (to
    show in messages and reprs).

    The password is registered as a secret before anything else, so that no message or log
    line shows it, even one about a proxy URL httpx refuses. The stream's own ``proxy=`` (for
    the WebSocket) can use this too.

    Raises:
        ConfigurationError: not an http://, https:// or socks5:// URL (nor an httpx.Proxy).
    """
    if proxy is None:
        return None, None
    register_secret(*_proxy_passwords(proxy))
    try:
        parsed = proxy if isinstance(proxy, httpx.Proxy) else httpx.Proxy(proxy)  # type: ignore[arg-type]
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ConfigurationError(
            "proxy must be an http://, https:// or socks5:// URL such as "
            "http://proxy.example:3128 (or an httpx.Proxy)"
        ) from None
    if parsed.auth is not None:
        register_secret(parsed.auth[1])
    # httpx.Proxy keeps the user and password apart from its url.
    return proxy, str(parsed.url)  # type: ignore[return-value]


def _proxy_passwords(proxy: object) -> list[str | None]:
    """The password in ``proxy``, as written (percent-encoded) and decoded."""
    if isinstance(proxy, httpx.Proxy):
        return [proxy.auth[1] if proxy.auth is not None else None]
    if isinstance(proxy, httpx.URL):
        return [proxy.password, proxy.userinfo.decode("ascii", "replace").partition(":")[2]]
    if isinstance(proxy, str):
        try:
            raw = urlsplit(proxy.strip()).password
        except ValueError:
            return []
        return [raw, unquote(raw) if raw else None]
    return []


def _ssl_context(verify: object) -> bool | ssl.SSLContext:
    """What httpx takes as ``verify=``: a CA file path becomes an SSL context, and so does
    ``True`` (the system's trust store), made once here rather than by every client made for
    a fetch (loading the trust store costs milliseconds)."""
    if verify is True:
        return tls_context(None, name="verify=")
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    if isinstance(verify, str | os.PathLike):
        return tls_context(verify, name="verify=")
    raise ConfigurationError(
        "verify must be True, False, a CA file path or an ssl.SSLContext, "
        f"got {type(verify).__name__}"
    )
