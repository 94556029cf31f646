"""The upgrade budget: at most ``count`` WebSocket upgrades per ``window`` seconds per key.

Protocol §1 and §10: the gateway answers HTTP 429 past 150 upgrades in 2 minutes from one
application key, across every stream, process and host that uses the key. The client must never
reach that limit with its own retries, so every stream of one key in this process shares one
:class:`UpgradeBudget` (:func:`shared_budget`), and the guard persists the upgrades of the key
beside its lock files so that a restarted process counts what the previous one did
(:func:`parse_upgrades` and :func:`format_upgrades` are the file's format). A caller may cap
the wait for the budget (``Timings.max_rate_limited_wait``, :func:`rate_limited_wait`).

Pure: no I/O, no event loop, no clock. Times are the caller's seconds.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from collections import deque
from collections.abc import Iterable

from ohip_stream._exceptions import ConfigurationError, RateLimitedError
from ohip_stream._timings import Timings

__all__ = [
    "UpgradeBudget",
    "format_upgrades",
    "key_id",
    "parse_upgrades",
    "rate_limited_wait",
    "shared_budget",
]


class UpgradeBudget:
    """Sliding window: at most ``count`` upgrades per ``window`` seconds.

    Protocol §1: HTTP 429 past 150 upgrades in 2 minutes; the client must never reach it with
    its own retries. Times are the caller's monotonic seconds.
    """

    def __init__(self, count: int, window: float) -> None:
        """``count`` upgrades (at least 1) per ``window`` seconds (positive)."""
        if count < 1 or not window > 0:
            raise ConfigurationError(
                f"an upgrade budget is a positive count per positive window; got {count!r} per "
                f"{window!r} s: pass Timings(upgrade_budget=(count, seconds)) with both above 0"
            )
        self.count = count
        self.window = window
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        # An upgrade at t counts until t + window.
        while self._times and self._times[0] + self.window <= now:
            self._times.popleft()

    def wait_time(self, now: float) -> float:
        """0 if an upgrade may happen at ``now``, else seconds until the oldest leaves the
        window."""
        self._expire(now)
        if len(self._times) < self.count:
            return 0.0
        return self._times[-self.count] + self.window - now

    def record(self, now: float) -> None:
        """Count an upgrade made at ``now``."""
        self._expire(now)
        self._times.append(now)

    def __len__(self) -> int:
        """Upgrades inside the window as of the last call."""
        return len(self._times)

    def __repr__(self) -> str:
        return f"UpgradeBudget(count={self.count}, window={self.window:g}, used={len(self)})"


def key_id(app_key: str) -> str:
    """A short non-reversible digest of the application key (stripped): safe to print and to
    use as a file name. Never the key itself, never its SHA-256 (which the gateway URL
    carries)."""
    # A domain prefix keeps this digest apart from the key's plain SHA-256 (protocol §1).
    digest = hashlib.sha256(b"ohip-stream upgrade budget\x1f" + app_key.strip().encode("utf-8"))
    return digest.hexdigest()[:16]


# Oracle counts upgrades per application key (protocol §1), and one key may stream several
# chains at once: the streams of one key in this process share one budget while any of them
# holds it (weak values: the budget goes with its last stream).
_budgets: weakref.WeakValueDictionary[tuple[str, int, float], UpgradeBudget] = (
    weakref.WeakValueDictionary()
)
_budgets_lock = threading.Lock()


def shared_budget(app_key: str, count: int, window: float) -> tuple[UpgradeBudget, bool]:
    """The budget of ``app_key`` in this process, and whether it was made just now.

    When the bool is True the caller loads the upgrades an earlier process persisted for the
    key (once per process and key: later streams share the budget that already counts them).
    The registry is keyed by :func:`key_id`, never by the key.
    """
    key = (key_id(app_key), count, window)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is not None:
            return budget, False
        budget = UpgradeBudget(count, window)
        _budgets[key] = budget
        return budget, True


def parse_upgrades(text: str, window: float, now: float) -> list[float]:
    """The upgrade times in ``text`` (one number a line) inside ``(now - window, now]``, sorted.

    Lines that are not finite numbers are skipped: the file is best effort, and a torn write or
    a hand edit must not stop a stream.
    """
    times: list[float] = []
    for line in text.split():
        try:
            at = float(line)
        except ValueError:
            continue
        if math.isfinite(at) and now - window < at <= now:
            times.append(at)
    return sorted(times)


def format_upgrades(times: Iterable[float]) -> str:
    """The file form of ``times``: one fixed-point number a line."""
    return "".join(f"{at:.6f}\n" for at in times)


def rate_limited_wait(wait: float, timings: Timings) -> None:
    """Raise :class:`RateLimitedError` if waiting ``wait`` seconds for the upgrade budget would
    pass ``timings.max_rate_limited_wait``; return otherwise (``None``: any wait is allowed).

    The stream calls it before it sleeps for the budget: the client stays under the gateway's
    upgrade limit by waiting (protocol §1), unless the caller set a limit on that wait.
    """
    limit = timings.max_rate_limited_wait
    if limit is None or not wait > limit:
        return
    count, window = timings.upgrade_budget
    raise RateLimitedError(
        f"the upgrade budget of this application key ({count} upgrades per {window:g} s) is "
        f"used up: the next upgrade needs a wait of {wait:.3g} s, longer than "
        f"Timings.max_rate_limited_wait ({limit:g} s); retry later, raise "
        "max_rate_limited_wait, or look for other consumers of this key",
        retry_after=wait,
    )
