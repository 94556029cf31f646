"""The token endpoint's answer: a token, or the error that says what to check."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ohip_stream._auth_options import TOKEN_PATH
from ohip_stream._auth_tokens import AccessToken, jwt_claims, number
from ohip_stream._exceptions import AuthenticationError, OhipError, TransportError
from ohip_stream._logging import get_logger, redact, register_secret

__all__ = ["Answer", "token_from"]

_log = get_logger("ohip_stream.auth")

# Protocol §8: 400, 401 (bad client, user, password or scope) and 403. What to check for each.
_STATUS_HINTS = {
    400: (
        "check the grant type for this environment (client credentials with an enterprise id, "
        "or password) and the enterprise id / scope"
    ),
    401: "check the client id and secret (and the username and password for the password grant)",
    403: "check the application key is registered for this environment",
    404: f"check gateway_url: the token endpoint is <gateway_url>{TOKEN_PATH}",
    405: f"check gateway_url: the token endpoint is <gateway_url>{TOKEN_PATH}",
}
_REDIRECT_HINT = (
    "check gateway_url: the token endpoint answered with a redirect, which is not followed "
    "(the credentials go to gateway_url only)"
)
_OTHER_HINT = "check gateway_url and the credentials"
# The longest piece of the server's text that goes into a message.
_SAID_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of the token endpoint, as read within the limits of the request."""

    #: Its HTTP status.
    status: int
    #: Its body, or ``None`` when it was larger than ``max_response_size``.
    body: bytes | None
    #: The host that answered, for messages.
    host: str
    #: "(attempt 1 of 4)": which attempt this was, for messages.
    attempt: str
    #: The limit the body was read under.
    max_response_size: int | None


def is_retriable_status(status: int) -> bool:
    """A server error, a timeout or a rate limit: the endpoint may answer later."""
    return status >= 500 or status in (408, 429)


def token_from(answer: Answer, issued_at: float) -> AccessToken:
    """The token in a 200 answer; else the error for the answer's status.

    Raises:
        TransportError: a 5xx, 408 or 429 (retriable).
        AuthenticationError: a refusal, or a 200 whose body is not a token.
    """
    if answer.status != 200:
        raise status_error(answer)
    body = _json_object(answer)
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise _bad_answer(answer, "without an access_token")
    register_secret(value, transient=True)
    token_type = body.get("token_type")
    if token_type is not None and str(token_type).lower() != "bearer":
        raise _bad_answer(
            answer, f"with token_type {redact(str(token_type))[:_SAID_LIMIT]!r}, expected 'Bearer'"
        )
    expires_at = _expiry(answer, body, value, issued_at)
    return AccessToken(value=value, issued_at=issued_at, expires_at=expires_at)


def status_error(answer: Answer) -> OhipError:
    """The error for an answer other than 200, with what the server said (redacted)."""
    status = answer.status
    error, description = _error_fields(answer.body)
    said = ""
    if error or description:
        said = ": " + " - ".join(part for part in (error, description) if part)
    if is_retriable_status(status):
        return TransportError(
            f"the token endpoint of {answer.host} answered HTTP {status}{said} {answer.attempt}",
            status=status,
        )
    hint = _STATUS_HINTS.get(status, _REDIRECT_HINT if 300 <= status < 400 else _OTHER_HINT)
    return AuthenticationError(
        f"the token endpoint of {answer.host} refused the request with HTTP {status}{said}; {hint}",
        status=status,
        error=error,
        error_description=description,
    )


def _bad_answer(answer: Answer, what: str) -> AuthenticationError:
    return AuthenticationError(
        f"the token endpoint of {answer.host} answered {answer.status} {what}", status=answer.status
    )


def _json_object(answer: Answer) -> Mapping[str, Any]:
    if answer.body is None:
        raise _bad_answer(
            answer,
            f"with a body larger than max_response_size={answer.max_response_size} bytes (a "
            "token answer is a few KiB): check gateway_url and any proxy in between",
        )
    try:
        body = json.loads(answer.body)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise _bad_answer(answer, "with a body that is not JSON") from None
    if not isinstance(body, Mapping):
        raise _bad_answer(answer, "with JSON that is not an object")
    return body


def _error_fields(body: bytes | None) -> tuple[str | None, str | None]:
    """``error`` and ``error_description`` of an OAuth error body, redacted; if it has them."""
    if body is None:
        return None, None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    error, description = (parsed.get(key) for key in ("error", "error_description"))
    return _said(error), _said(description)


def _said(value: object) -> str | None:
    return None if value is None else redact(str(value))[:_SAID_LIMIT]


def _expiry(answer: Answer, body: Mapping[str, Any], value: str, issued_at: float) -> float:
    """Expiry from ``expires_in`` cross-checked with the JWT ``exp`` claim."""
    candidates: list[float] = []
    raw_expires_in = body.get("expires_in")
    expires_in = number(raw_expires_in)
    if raw_expires_in is not None and (expires_in is None or expires_in <= 0):
        raise _bad_answer(
            answer,
            f"with expires_in {redact(str(raw_expires_in))[:_SAID_LIMIT]!r}, expected a "
            "positive number of seconds",
        )
    if expires_in is not None:
        candidates.append(issued_at + expires_in)
    from_claims = _expiry_from_claims(value, issued_at)
    if from_claims is not None:
        candidates.append(from_claims)
    if not candidates:
        raise _bad_answer(
            answer,
            "without expires_in, and the token has no usable exp claim: its expiry is unknown",
        )
    expires_at = min(candidates)
    _log.debug(
        "token lifetime %d s (expires_in %s, JWT exp %s)",
        round(expires_at - issued_at),
        "absent" if expires_in is None else f"{expires_in:g}",
        "absent" if from_claims is None else "usable",
    )
    return expires_at


def _expiry_from_claims(value: str, issued_at: float) -> float | None:
    claims = jwt_claims(value)
    exp = number(claims.get("exp")) if claims else None
    if claims is None or exp is None:
        return None
    iat = number(claims.get("iat"))
    if iat is not None and exp > iat:
        # The lifetime by the server's own clock, counted from our issue time: immune to a skew
        # between the two clocks.
        return issued_at + (exp - iat)
    if exp > issued_at:
        return exp
    _log.warning(
        "the token's exp claim is %d s in the past by this host's clock; check the clock "
        "(using expires_in)",
        round(issued_at - exp),
    )
    return None
