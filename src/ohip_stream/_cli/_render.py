"""How events look on a terminal (``demo``, ``tail``): one line each, module-coloured, with the
changed elements."""

from __future__ import annotations

import time

from rich.text import Text

from ohip_stream._models import Event

__all__ = ["HEADER", "event_line"]

_MODULE_STYLES = {
    "RESERVATION": "bright_cyan",
    "PROFILE": "bright_magenta",
    "HOUSEKEEPING": "bright_green",
    "BLOCK": "bright_yellow",
    "CASHIERING": "bright_blue",
}


def _changes(event: Event, limit: int = 3) -> Text:
    text = Text()
    changed = event.changed_elements()
    for i, element in enumerate(changed[:limit]):
        if i:
            text.append(", ", style="dim")
        text.append(element.element_name, style="bold")
        old = element.old_text or ""
        if old:
            text.append(f" {old}", style="red")
        text.append(" -> ", style="dim")
        text.append(element.new_text or "''", style="green")
    if len(changed) > limit:
        text.append(f" (+{len(changed) - limit} more)", style="dim")
    return text


def event_line(event: Event, width: int) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(time.strftime("%H:%M:%S"), style="dim")
    line.append(f" {event.metadata.offset:>6} ", style="cyan")
    module = event.module_name
    line.append(f"{module:<12.12} ", style=_MODULE_STYLES.get(module, "white"))
    line.append(f"{event.event_name:<20.20} ", style="bold")
    line.append(f"{(event.hotel_id or 'chain'):<7.7} ", style="magenta")
    line.append(f"{event.primary_key:<9.9}", style="dim")
    changes = _changes(event)
    if not changes:
        changes = Text("(no change)", style="dim")
    if width >= _INLINE_WIDTH:
        line.append(" ")
        line.append_text(changes)
    else:
        line.append("\n" + " " * 16)
        line.append_text(changes)
    return line


# Below this many columns the changes go on a line of their own.
_INLINE_WIDTH = 120

HEADER = Text(
    f"{'time':<8} {'offset':>6} {'module':<12} {'event':<20} {'hotel':<7} {'key':<9} changes",
    style="bold underline",
    no_wrap=True,
    overflow="ellipsis",
)
