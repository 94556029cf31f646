"""A token obtained elsewhere: :class:`StaticToken`."""

from __future__ import annotations

import re
import time
from types import TracebackType

from ohip_stream._auth_options import Clock, check_enterprise_id, require
from ohip_stream._auth_tokens import AccessToken, jwt_claims, number
from ohip_stream._exceptions import AuthenticationError, ConfigurationError
from ohip_stream._logging import install_redaction, register_secret

__all__ = ["StaticToken"]

# What users paste along with a token: the scheme of the Authorization header.
_BEARER_PREFIX = re.compile(r"^bearer(?:\s+|$)", re.IGNORECASE)


class StaticToken:
    """A bearer token obtained elsewhere; the provider cannot renew it.

    If the value is a JWT, its expiry comes from the ``exp`` claim and its issue time from
    ``iat`` (read, not verified); otherwise it never expires and was issued now. Once expired,
    :meth:`get_token` raises :class:`~ohip_stream.AuthenticationError`: supply a new token.

    Because it cannot be renewed (``renewable`` is ``False``), a stream uses the token until
    its expiry: it does not rotate its connection earlier (``Timings.rotate_after`` does not
    apply), since a new connection would only present the same token again. A token without
    an expiry never forces a rotation.

    Args:
        token: the bearer token (a leading ``Bearer`` is removed).
        enterprise_id: the enterprise id the token is for, if any (1 to 8 upper-case letters
            or digits).
        clock: returns the time in epoch seconds (default ``time.time``; tests inject one).

    Raises:
        ConfigurationError: an empty token or an invalid enterprise id.
    """

    def __init__(
        self, token: str, *, enterprise_id: str | None = None, clock: Clock = time.time
    ) -> None:
        install_redaction()
        value = _BEARER_PREFIX.sub("", require("token", token).strip(), count=1)
        if not value:
            raise ConfigurationError("token is required: pass the bearer token")
        register_secret(value)
        if enterprise_id is not None:
            check_enterprise_id(enterprise_id)
        self._enterprise_id = enterprise_id
        self._clock = clock
        now = clock()
        claims = jwt_claims(value) or {}
        iat = number(claims.get("iat"))
        exp = number(claims.get("exp"))
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

    @property
    def renewable(self) -> bool:
        """Always ``False``: this provider only ever has the one token it was given."""
        return False

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
        """Nothing to release; idempotent."""

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
