"""The pytest plugin of ohip-stream (registered through the ``pytest11`` entry point).

It imports the emulator's server stack only when a test uses one of its fixtures, so that
projects without the ``emulator`` extra are not affected.

* ``ohip_emulator``: a started :class:`~ohip_stream.testing.Emulator` with default settings,
  stopped after the test. A plain fixture: it works in sync tests and with pytest-asyncio.
* ``ohip_emulator_factory``: a callable ``make(**kwargs) -> Emulator`` that starts emulators
  with the given settings; all are stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ohip_stream.testing._emulator import Emulator

__all__ = ["ohip_emulator", "ohip_emulator_factory"]


@pytest.fixture
def ohip_emulator_factory() -> Iterator[Callable[..., Emulator]]:
    """Make started emulators with keyword arguments; every one is stopped at teardown."""
    from ohip_stream.testing._emulator import Emulator

    made: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        emulator = Emulator(**kwargs)
        made.append(emulator)
        emulator.start()
        return emulator

    try:
        yield make
    finally:
        for emulator in reversed(made):
            emulator.stop()


@pytest.fixture
def ohip_emulator() -> Iterator[Emulator]:
    """A started emulator with default settings, stopped after the test."""
    from ohip_stream.testing._emulator import Emulator

    emulator = Emulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
