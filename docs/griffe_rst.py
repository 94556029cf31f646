"""A griffe extension for the API reference: the package's docstrings use a few reST idioms
(Sphinx roles, ``.. code-block::``, ``::`` literal blocks, doctest lines, ``#:`` attribute
comments). This turns them into Markdown before mkdocstrings renders them, so the docstrings
stay the single source of the reference. Used by ``mkdocs.yml`` only; not shipped.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

# Names the reference renders at ``ohip_stream.<Name>``: a role naming one of them becomes a
# link, any other role becomes inline code.
_PUBLIC = {
    "AccessToken", "AuthenticationError", "Checkpoint", "CheckpointStore", "ConfigurationError",
    "ConnectionRejectedError", "ConsumerAlreadyRunningError", "ConsumerConflictError", "Event",
    "EventDetail", "EventMetadata", "EventStream", "EventValidationError", "ForbiddenError",
    "MemoryCheckpointStore", "MessageTooLargeError", "OAuthClientCredentials", "OAuthPassword",
    "OhipError", "ProtocolError", "RateLimitedError", "SQLiteCheckpointStore", "StaticToken",
    "StreamStats", "SubscriptionError", "Timings", "TokenProvider", "TransportError",
}  # fmt: skip
_TESTING = {"Emulator", "EventFactory", "make_event", "make_detail"}

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|exc|data|obj):`~?([^`]+)`")
_CODE_BLOCK = re.compile(r"^(\s*)\.\. code-block::\s*(\w*)\s*$")
# "client_id, client_secret: the OAuth client" in an Args section: one entry per name.
_SHARED_ARG = re.compile(r"^(\s+)(\w+), (\w+): (.*)$")


def _role(match: re.Match[str]) -> str:
    raw, target = match.group(0), match.group(1).strip()
    parts = target.split(".")
    name = parts[-1]
    shown = name if "`~" in raw else target
    in_package = len(parts) == 1 or (parts[0] == "ohip_stream" and len(parts) <= 3)
    if in_package and name in _PUBLIC and parts[1:2] != ["testing"]:
        return f"[`{shown}`][ohip_stream.{name}]"
    if in_package and name in _TESTING:
        return f"[`{shown}`][ohip_stream.testing.{name}]"
    return f"`{shown}`"


def _indented_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented block that starts at ``start`` (blank lines allowed inside)."""
    block: list[str] = []
    index = start
    while index < len(lines) and not lines[index].strip():
        index += 1
    while index < len(lines) and (not lines[index].strip() or lines[index][:1] in " \t"):
        block.append(lines[index])
        index += 1
    while block and not block[-1].strip():
        block.pop()
        index -= 1
    return block, index


def convert(text: str) -> str:
    """reST idioms of this package's docstrings -> Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _CODE_BLOCK.match(line)
        literal = line.rstrip().endswith("::") and not line.strip().startswith("..")
        if directive or literal:
            block, after = _indented_block(lines, index + 1)
            if block:
                indent = directive.group(1) if directive else re.match(r"\s*", line).group(0)
                language = (directive.group(2) if directive else "") or "text"
                if literal:
                    head = line.rstrip()[:-2].rstrip()
                    if head:
                        out.append(_ROLE.sub(_role, head) + ":")
                        out.append("")
                out.append(f"{indent}```{language}")
                out.extend(indent + row for row in textwrap.dedent("\n".join(block)).split("\n"))
                out.append(f"{indent}```")
                index = after
                continue
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            while index < len(lines) and lines[index].strip():
                out.append(lines[index])
                index += 1
            out.append(f"{indent}```")
            continue
        shared = _SHARED_ARG.match(line)
        if shared:
            indent, first, second, description = shared.groups()
            out.append(f"{indent}{first}: {_ROLE.sub(_role, description)}")
            out.append(f"{indent}{second}: {_ROLE.sub(_role, description)}")
            index += 1
            continue
        out.append(_ROLE.sub(_role, line))
        index += 1
    return "\n".join(out)


class RestToMarkdown(griffe.Extension):
    """Convert docstrings, and read ``#:`` comments as attribute docstrings."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)

    def on_attribute_instance(
        self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute, **kwargs: Any
    ) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        try:
            source = attr.lines_collection[attr.filepath]  # the whole module's lines
        except Exception:
            return
        comments: list[str] = []
        row = attr.lineno - 2
        while 0 <= row < len(source) and source[row].strip().startswith("#:"):
            comments.insert(0, source[row].strip()[2:].strip())
            row -= 1
        if comments:
            attr.docstring = griffe.Docstring(
                convert(" ".join(comments)), parent=attr, lineno=attr.lineno
            )
