"""Resume and de-duplication of one stream: pure, fed with offsets and unique ids.

OHIP replays INCLUSIVELY from the offset a subscription asks for (the last processed event
comes again) and delivers at least once, so a resume needs de-duplication (the protocol page,
"Offsets, replay, retention"):

* by offset: an event at or below the last offset seen was delivered already;
* by ``uniqueEventId``: the ids of the last ``window`` events (at least), in two generations
  (ids go into the young one; when it is full it becomes the old one and the previous old one
  is dropped), each id stored as at most :data:`MAX_ID_CHARS` characters (a longer id is kept
  as its digest) so that memory is bounded in bytes, not only in count.

It also tells when events were lost upstream (the first event after a resume is beyond the
offset asked for: retention or the 24-hour resume limit) and when the gateway's offsets went
BACK with events never seen (an offset reset): neither may pass in silence.
"""

from __future__ import annotations

import enum
import hashlib

from ohip_stream._query import is_valid_offset

__all__ = ["MAX_ID_CHARS", "Resume", "Verdict"]

#: Unique ids longer than this are kept as a fixed-size digest (a hostile gateway could send
#: ids of 100 KB: the window must stay small in bytes).
MAX_ID_CHARS = 64


class Verdict(enum.Enum):
    """What to do with an arriving event."""

    #: Not seen before: hand it out.
    NEW = "new"
    #: Not seen before, and the first of a subscription that skipped offsets: events were lost
    #: upstream (:attr:`Resume.lost` says how many). Hand it out; say so.
    GAP = "gap"
    #: Delivered already (a replay): drop it, count it as a duplicate.
    DUPLICATE = "duplicate"
    #: Its offset is below the last one seen and its id is new: the gateway's offsets were
    #: reset. The stream logs it, counts it and follows its ``on_offset_reset`` rule.
    RESET = "reset"


# Module names for the verdicts the hot path returns: an Enum member read off its class is a
# slow attribute lookup on Python 3.11.
_NEW, _GAP, _DUPLICATE, _RESET = Verdict.NEW, Verdict.GAP, Verdict.DUPLICATE, Verdict.RESET


def _stored(uid: str) -> str:
    if len(uid) <= MAX_ID_CHARS:
        return uid
    return hashlib.blake2b(uid.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class Resume:
    """Where a stream is in the gateway's log, and what it has seen.

    ``window`` is how many unique ids are remembered at least; ``filtered`` (a ``hotelCode``
    filter) turns gap detection off, since a filter skips offsets by design.
    """

    __slots__ = (
        "_asked",
        "_first_pending",
        "_old",
        "_young",
        "filtered",
        "last",
        "last_offset",
        "lost",
        "started",
        "window",
    )

    def __init__(self, *, window: int, filtered: bool = False) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.filtered = filtered
        #: The highest offset received (as an int; -1: none yet) and its text.
        self.last = -1
        self.last_offset: str | None = None
        #: Whether any event arrived since this object was made (explicit starts then stop
        #: applying: a reconnect resumes from what was seen).
        self.started = False
        #: Events lost upstream before the first event of the current subscription (set by
        #: that event; the caller reads it when the verdict is not NEW).
        self.lost = 0
        self._asked: int | None = None
        self._first_pending = False
        # Dicts, not sets: a dict of strings is not tracked by the garbage collector.
        self._young: dict[str, None] = {}
        self._old: dict[str, None] = {}

    # --- before a subscription ----------------------------------------------------------------

    def restore(self, offset: str | None, unique_event_id: str | None) -> None:
        """Everything at or below a checkpoint was processed: its replay is dropped."""
        if offset is not None and is_valid_offset(offset):
            self.last = int(offset)
            self.last_offset = offset
        if unique_event_id:
            self._young[_stored(unique_event_id)] = None

    def subscription_start(
        self, explicit_offset: str | None, highest: bool
    ) -> tuple[str | None, bool, int | None]:
        """The ``(offset, highest)`` to subscribe with, and the offset asked for (as an int, for
        :meth:`arm`; None when the server picks the position).

        An explicit start (``offset=`` or ``start_at_highest=``) applies until the stream has
        seen an event; then the last offset seen is sent again (inclusive replay: safe whether
        or not the server replays inclusively, as the replayed event is dropped).
        """
        if not self.started and explicit_offset is not None:
            return explicit_offset, False, int(explicit_offset)
        if self.last_offset is not None:
            return self.last_offset, False, self.last
        return None, highest and not self.started, None

    def arm(self, asked: int | None) -> None:
        """The frames from here on are a new subscription's, which asked for ``asked``: its
        first event tells whether events were lost upstream."""
        self._asked = asked
        self._first_pending = True
        self.lost = 0

    # --- per event (the hot path) -------------------------------------------------------------

    def accept(self, offset: str, uid: str) -> Verdict:
        """The verdict on an arriving event (its offset valid, as the event model makes it).
        Only the first event of a subscription can be other than NEW for a stream that just
        goes on: the hot path is one test of the verdict (events lost before it are in
        :attr:`lost`)."""
        number = int(offset)
        if self._first_pending:
            self.lost = self._first(number)
        key = uid if len(uid) <= MAX_ID_CHARS else _stored(uid)
        young = self._young
        if key in young or key in self._old:
            return _DUPLICATE
        if number > self.last:
            verdict = _GAP if self.lost else _NEW
        elif number == self.last:
            return _DUPLICATE
        else:
            verdict = _RESET
        young[key] = None
        if len(young) >= self.window:
            # the young generation is full: it becomes the old one, the old one is dropped
            self._old = young
            self._young = {}
        self.last = number
        self.last_offset = offset
        return verdict

    def take_lost(self) -> int:
        """How many events were lost upstream before the current subscription's first event,
        once (then 0)."""
        lost, self.lost = self.lost, 0
        return lost

    def accept_invalid(self, offset: str | None) -> bool:
        """Whether an invalid event is new (the dead-letter path gets each one once): one
        whose offset is readable and at or below the last offset seen is a replay."""
        if offset is None or not is_valid_offset(offset):
            if self._first_pending:
                self._first_pending = False
                self.started = True
            return True
        number = int(offset)
        if self._first_pending:
            self._first(number)
        if number <= self.last:
            return False
        self.last = number
        self.last_offset = offset
        return True

    def _first(self, number: int) -> int:
        # The first event after a subscribe must be the offset asked for (or the one after it);
        # anything beyond means events were lost upstream.
        self._first_pending = False
        self.started = True
        asked = self._asked
        if asked is None or self.filtered or number <= asked + 1:
            return 0
        return number - asked - 1

    def __repr__(self) -> str:
        return f"Resume(last_offset={self.last_offset!r}, ids={len(self._young) + len(self._old)})"
