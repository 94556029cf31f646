"""Every wait and limit of a stream, in seconds, with Oracle's figures as defaults."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ohip_stream._exceptions import ConfigurationError, describe_problems
from ohip_stream._logging import get_logger

__all__ = ["ORACLE_MINIMUMS", "Timings"]

_log = get_logger("ohip_stream.timings")

# Values below these break or risk breaking Oracle's rules: allowed (tests compress time), but
# logged at WARNING. (ping_interval has a maximum instead: 15 s.)
ORACLE_MINIMUMS: dict[str, float] = {
    "complete_gap": 10.0,  # protocol §4: at least 10 s between complete and the next subscribe
    "lockout": 120.0,  # protocol §5: 4409 lockout, unpublished; 120 s is the safe default
    "drop_wait": 4.0,  # protocol §5: wait at least 4 s after 1006
    "rotate_after": 3000.0,  # protocol §4: renew every 50 minutes, not more often
}

MAX_PING_INTERVAL = 15.0

# The fields that are a positive number of seconds (ping_interval has its own rule).
_POSITIVE_SECONDS = (
    "rotate_after",
    "complete_gap",
    "lockout",
    "drop_wait",
    "backoff_min",
    "backoff_max",
    "liveness_timeout",
    "drain_timeout",
    "init_timeout",
)  # protocol §4: a ping at least every 15 s


class Timings(BaseModel):
    """Timings of a stream (float seconds).

    ``ping_interval`` above 15 is refused; every other field must be positive (or None where
    None is allowed); values below Oracle's figures are accepted (tests compress time) and
    logged at WARNING.

    ``max_rate_limited_wait`` caps the waits the gateway's upgrade limit imposes (protocol §1:
    HTTP 429 past 150 upgrades in 2 minutes per application key): when a 429's ``Retry-After``
    (capped at one hour, and never less than the ``upgrade_budget`` window) or the wait for the
    client's own upgrade budget would be longer, the stream raises ``RateLimitedError`` instead
    of waiting. ``None`` (the default) waits as long as it takes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Client ``ping`` every this many seconds (Oracle: at least every 15 s; its playground: 10).
    ping_interval: float = 10.0
    #: Rotate the connection this long after the token was issued (Oracle: every 50 minutes).
    rotate_after: float = 3000.0
    #: Wait between the end of a drained connection and the next subscribe (Oracle: 10 s).
    complete_gap: float = 10.0
    #: Wait after a 4409 before trying again (unpublished; 120 s, plus jitter).
    lockout: float = 120.0
    #: Wait after an abrupt drop (1006) before reconnecting (Oracle: at least 4 s).
    drop_wait: float = 4.0
    #: Smallest backoff between reconnect attempts.
    backoff_min: float = 1.0
    #: Largest backoff between reconnect attempts.
    backoff_max: float = 60.0
    #: Without a pong or an event for this long (while waiting on the socket) the link is dead.
    liveness_timeout: float = 180.0
    #: How long to wait for the server to close after our ``complete`` before closing with 1000.
    drain_timeout: float = 30.0
    #: How long to wait for ``connection_ack`` (Oracle closes after 5 s without an init).
    init_timeout: float = 5.0
    #: At most this many upgrades per window of seconds (Oracle: 429 past 150 in 2 minutes).
    upgrade_budget: tuple[int, float] = (150, 120.0)
    #: Give up with ConsumerConflictError after this many 4409 lockouts in a row (None: never).
    max_lockouts: int | None = None
    #: Raise RateLimitedError rather than wait longer than this for an HTTP 429 or the upgrade
    #: budget (None: wait as long as it takes).
    max_rate_limited_wait: float | None = None

    @field_validator("ping_interval")
    @classmethod
    def _ping_at_most_15(cls, value: float) -> float:
        if not 0 < value <= MAX_PING_INTERVAL:  # NaN compares false: refused too
            raise ValueError(
                f"ping_interval must be above 0 and at most {MAX_PING_INTERVAL:g} seconds "
                f"(Oracle closes connections that do not ping); got {value:g}"
            )
        return value

    @field_validator(*_POSITIVE_SECONDS)
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"must be a positive number of seconds, got {value!r}")
        return value

    @field_validator("upgrade_budget")
    @classmethod
    def _budget(cls, value: tuple[int, float]) -> tuple[int, float]:
        count, window = value
        if count < 1 or not window > 0:
            raise ValueError(
                f"upgrade_budget is (count, window seconds), both positive; got {value!r}"
            )
        return value

    @field_validator("max_lockouts")
    @classmethod
    def _lockouts(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"max_lockouts must be at least 1 or None, got {value!r}")
        return value

    @field_validator("max_rate_limited_wait")
    @classmethod
    def _rate_limited_wait(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:  # NaN compares false: refused too
            raise ValueError(
                f"max_rate_limited_wait must be a positive number of seconds or None (wait as "
                f"long as it takes), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Timings:
        if self.backoff_min > self.backoff_max:
            raise ValueError(
                f"backoff_min ({self.backoff_min:g}) must not exceed backoff_max "
                f"({self.backoff_max:g})"
            )
        if self.liveness_timeout <= self.ping_interval:
            raise ValueError(
                f"liveness_timeout ({self.liveness_timeout:g}) must exceed ping_interval "
                f"({self.ping_interval:g}): a pong needs time to come back"
            )
        below = [
            f"{name}={getattr(self, name):g} (Oracle: {minimum:g})"
            for name, minimum in ORACLE_MINIMUMS.items()
            if getattr(self, name) < minimum
        ]
        if below:
            _log.warning(
                "timings below Oracle's figures, fine for tests, risky on a real gateway: %s",
                ", ".join(below),
            )
        return self

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = describe_problems(exc.errors(), root="Timings")
            raise ConfigurationError(f"invalid Timings: {problems}") from None

    @classmethod
    def compressed(cls, factor: float = 0.001, **overrides: Any) -> Timings:
        """Oracle's defaults multiplied by ``factor`` (for tests and the demo), then overrides."""
        base = cls()
        values: dict[str, Any] = {
            name: getattr(base, name) * factor for name in ("ping_interval", *_POSITIVE_SECONDS)
        }
        values.update(overrides)
        return cls(**values)
