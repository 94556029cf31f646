"""Credentials and tokens of the emulated gateway, pure: the OAuth rules and the init check.

``POST /oauth/v1/tokens`` (protocol §8) is decided by :func:`decide_token_request` from the
request's headers and form, and ``connection_init`` (protocol §1) by :func:`check_init`; both
take the time as wall seconds on the emulator clock and never see a socket. Refusals name what
is wrong without echoing a secret.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ohip_stream.testing._eventlog import dumps

__all__ = [
    "Credentials",
    "InitRefusal",
    "OAuthRefusal",
    "Token",
    "TokenBook",
    "TokenGrant",
    "basic_credentials",
    "check_init",
    "decide_token_request",
]

_INVALID = "Unauthorised - Invalid credentials - "


@dataclass(frozen=True)
class Credentials:
    """What the emulator's OAuth endpoint and ``connection_init`` accept."""

    app_key: str
    client_id: str
    client_secret: str
    enterprise_id: str
    username: str
    password: str

    @classmethod
    def generate(cls) -> Credentials:
        """Fresh random credentials (app key: a lower-case UUID4, as Oracle's look)."""
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return cls(
            app_key=str(uuid.uuid4()),
            client_id=f"emulator_client_{secrets.token_hex(4)}",
            client_secret=secrets.token_urlsafe(24),
            enterprise_id="EMU" + "".join(secrets.choice(alphabet) for _ in range(5)),
            username=f"emulator_user_{secrets.token_hex(3)}",
            password=secrets.token_urlsafe(18),
        )

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, enterprise_id={self.enterprise_id!r})"


class Token:
    """An access token the gateway issued, with its subject and lifetime (wall seconds)."""

    __slots__ = ("expires_at", "issued_at", "subject", "value")

    def __init__(self, value: str, subject: str, issued_at: float, expires_at: float) -> None:
        self.value = value
        self.subject = subject
        self.issued_at = issued_at
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"Token(subject={self.subject!r}, expires_at={self.expires_at!r})"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenBook:
    """The tokens issued so far, by value. Iterating gives the token values."""

    def __init__(self, credentials: Credentials, ttl: float) -> None:
        self.credentials = credentials
        self.ttl = ttl
        self._signing_key = secrets.token_bytes(32)
        self._tokens: dict[str, Token] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tokens))

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, value: str) -> Token | None:
        """The token with this value, or ``None`` if the gateway never issued it."""
        return self._tokens.get(value)

    def issue(self, now: float, subject: str | None = None) -> Token:
        """A JWT-shaped access token, valid for ``ttl`` seconds from ``now``."""
        expires_at = now + self.ttl
        header = _b64url(b'{"alg":"HS256","typ":"JWT","kid":"ohip-stream-emulator"}')
        subject = subject or self.credentials.client_id
        claims = {
            "sub": subject,
            "iss": "ohip-stream-emulator",
            "aud": "OHIP",
            "iat": int(now),
            "exp": int(expires_at),
            "jti": str(uuid.uuid4()),
            "client_id": self.credentials.client_id,
            "enterprise_id": self.credentials.enterprise_id,
        }
        body = _b64url(dumps(claims).encode())
        signature = hmac.new(self._signing_key, f"{header}.{body}".encode(), "sha256").digest()
        value = f"{header}.{body}.{_b64url(signature)}"
        token = Token(value, subject, now, expires_at)
        self._tokens[value] = token
        return token

    def expire_all(self, now: float) -> None:
        """Every token issued so far expires at ``now`` at the latest."""
        for token in self._tokens.values():
            token.expires_at = min(token.expires_at, now)


# --- the token endpoint (protocol §8) -------------------------------------------------------


@dataclass(frozen=True)
class TokenGrant:
    """A token request that succeeds: the token is issued to ``subject``."""

    subject: str


@dataclass(frozen=True)
class OAuthRefusal:
    """A token request that fails: the HTTP status and the OAuth error body."""

    status: int
    error: str
    description: str


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(client id, secret)`` of an ``Authorization: Basic`` header, or ``None``."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[len("Basic ") :].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def decide_token_request(
    credentials: Credentials,
    headers: Mapping[str, str],
    form: Mapping[str, Any],
    *,
    revoked: bool,
) -> TokenGrant | OAuthRefusal:
    """The answer of ``POST /oauth/v1/tokens`` to these headers and form fields."""
    if revoked:
        return OAuthRefusal(401, "invalid_client", "The client credentials were revoked")
    client = basic_credentials(headers.get("Authorization"))
    if client != (credentials.client_id, credentials.client_secret):
        return OAuthRefusal(401, "invalid_client", "Invalid client id or client secret")
    if headers.get("x-app-key") != credentials.app_key:
        return OAuthRefusal(401, "invalid_client", "Invalid or missing x-app-key header")
    grant = form.get("grant_type")
    if grant == "client_credentials":
        return _client_credentials(credentials, headers, form)
    if grant == "password":
        if (form.get("username"), form.get("password")) != (
            credentials.username,
            credentials.password,
        ):
            return OAuthRefusal(401, "invalid_grant", "Invalid username or password")
        return TokenGrant(credentials.username)
    if grant is None:
        return OAuthRefusal(400, "invalid_request", "grant_type is required")
    return OAuthRefusal(400, "unsupported_grant_type", "Use client_credentials or password")


def _client_credentials(
    credentials: Credentials, headers: Mapping[str, str], form: Mapping[str, Any]
) -> TokenGrant | OAuthRefusal:
    if headers.get("enterpriseId") != credentials.enterprise_id:
        return OAuthRefusal(400, "invalid_request", "Invalid or missing enterpriseId header")
    if not form.get("scope"):
        return OAuthRefusal(400, "invalid_request", "client_credentials needs a scope")
    return TokenGrant(credentials.client_id)


# --- connection_init (protocol §1) ----------------------------------------------------------


@dataclass(frozen=True)
class InitRefusal:
    """A ``connection_init`` that is refused with 4401, and why."""

    reason: str
    code: int = 4401


def check_init(
    payload: Any,
    tokens: TokenBook,
    credentials: Credentials,
    key_hash: str,
    *,
    revoked: bool,
    now: float,
) -> Token | InitRefusal:
    """The token a ``connection_init`` payload authenticates with, or why it gets 4401.

    Header names are matched case-insensitively and extra keys (``enterpriseId``) are allowed.
    """
    fields = {str(k).lower(): v for k, v in payload.items()} if isinstance(payload, dict) else {}
    if revoked:
        return InitRefusal(_INVALID + "the credentials were revoked")
    authorization = fields.get("authorization")
    if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
        return InitRefusal(_INVALID + "send Authorization: Bearer <access token>")
    token = tokens.get(authorization[len("Bearer ") :].strip())
    if token is None:
        return InitRefusal(_INVALID + "Invalid Auth Token")
    if now >= token.expires_at:
        return InitRefusal("token expired")
    app_key = fields.get("x-app-key")
    if isinstance(app_key, str) and app_key.lower() == key_hash:
        # protocol §1: the raw key goes in the payload, the hash only in the URL
        return InitRefusal(
            _INVALID + "Check you are sending the application key, not the hash: "
            "send the application key, not its hash"
        )
    if app_key != credentials.app_key:
        return InitRefusal(_INVALID + "Invalid API Key")
    return token
