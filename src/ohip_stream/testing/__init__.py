"""Test kit: a local OHIP gateway (the emulator) and helpers for tests of integrations.

.. code-block:: python

    from ohip_stream.testing import Emulator, make_event

    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(events=[make_event("RESERVATION", "CHECK IN", hotel_id="HOTEL1")])
        ...  # point a client at emu.gateway_url with emu.env()

The server stack (aiohttp, the ``emulator`` extra) is imported only when :class:`Emulator` or
:func:`serve_foreground` is used, so :func:`make_event` and :class:`EventFactory` work without
it. The pytest plugin provides the fixtures ``ohip_emulator`` and ``ohip_emulator_factory``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ohip_stream.testing._clock import FakeClock, use_clock
from ohip_stream.testing._events import EventFactory, make_detail, make_event
from ohip_stream.testing._records import ConnectionRecord, SubscribeRejection, UpgradeRecord

if TYPE_CHECKING:
    from ohip_stream.testing._emulator import Emulator
    from ohip_stream.testing._foreground import serve_foreground

__all__ = [
    "ConnectionRecord",
    "Emulator",
    "EventFactory",
    "FakeClock",
    "SubscribeRejection",
    "UpgradeRecord",
    "make_detail",
    "make_event",
    "serve_foreground",
    "use_clock",
]

_LAZY = {
    "Emulator": "ohip_stream.testing._emulator",
    "serve_foreground": "ohip_stream.testing._foreground",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "aiohttp":
            raise ModuleNotFoundError(
                'the emulator needs aiohttp: pip install "ohip-stream[emulator]"', name=exc.name
            ) from exc
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value
