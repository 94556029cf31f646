"""Small shims for the Python versions the project supports (3.10 and later)."""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType
from typing import Any

__all__ = ["timeout"]


class _Timeout:
    """``asyncio.timeout`` for Python 3.10: cancels the task after ``delay`` seconds and turns
    that cancellation into ``TimeoutError``."""

    def __init__(self, delay: float | None) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._fired = False

    async def __aenter__(self) -> _Timeout:
        self._task = asyncio.current_task()
        if self._delay is not None:
            self._handle = asyncio.get_running_loop().call_later(self._delay, self._fire)
        return self

    def _fire(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._handle is not None:
            self._handle.cancel()
        if self._fired and exc_type is asyncio.CancelledError:
            raise TimeoutError from None
        return False


if sys.version_info >= (3, 11):
    timeout = asyncio.timeout
else:  # pragma: no cover - exercised on Python 3.10 only
    timeout = _Timeout
