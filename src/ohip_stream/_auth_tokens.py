"""The token a provider hands out, the protocol of providers, and reading a token's claims."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ohip_stream._logging import REDACTED

__all__ = ["AccessToken", "TokenProvider", "jwt_claims", "number"]


@dataclass(frozen=True, slots=True, repr=False)
class AccessToken:
    """A bearer token and when it stops being valid.

    ``issued_at`` and ``expires_at`` are epoch seconds by the provider's clock;
    ``expires_at=None`` means the token never expires. The ``repr`` never shows the value.
    """

    #: The bearer token, as sent in ``Authorization: Bearer <value>``.
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

    A provider may also have a read-only ``renewable: bool`` attribute: ``False`` when it can
    never hand out a token other than the one it has (as :class:`StaticToken`). The stream
    reads it with ``getattr(auth, "renewable", True)``: it rotates its connection before the
    token expires only when the provider can renew it; a token it cannot renew is used until
    its expiry. The attribute is optional, so it is not a member of this protocol: providers
    written without it still satisfy the protocol, and count as renewable.
    """

    @property
    def enterprise_id(self) -> str | None:
        """The enterprise id the tokens are for, when the environment has one."""
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


def jwt_claims(token: str) -> dict[str, Any] | None:
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


def number(value: object) -> float | None:
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
