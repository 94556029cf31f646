"""The ``newEvent`` subscription document, built with gql and validated before anything is sent.

The bundled ``schema.graphql`` carries the input limits of ``NewEventInput`` as
``@validate(maxLength:, pattern:)``; Oracle's own schema hides them in scalar names, so a plain
GraphQL validator would not check them. :func:`validate_input` enforces them, and the emulator
uses the same rules, so a bad chain code or offset is refused before any I/O with a message that
names the field, the value and the rule (a real gateway closes such a subscription with 4400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gql.dsl import DSLField, DSLSchema, DSLSubscription, dsl_gql
from graphql import (
    DocumentNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    print_ast,
    validate,
)
from graphql.language import IntValueNode, StringValueNode

from ohip_stream._exceptions import ConfigurationError

__all__ = [
    "is_valid_offset",
    "offset_rule",
    "ALL_FIELDS",
    "FieldRule",
    "SubscriptionDocument",
    "build_subscription",
    "connection_status_query",
    "input_rules",
    "load_schema",
    "validate_input",
]

#: Every field of ``EventHeader`` (nested fields of ``metadata`` and ``detail`` included).
ALL_FIELDS: tuple[str, ...] = (
    "metadata",
    "moduleName",
    "eventName",
    "primaryKey",
    "timestamp",
    "hotelId",
    "publisherId",
    "actionInstanceId",
    "detail",
)
# The selection always has these: the offset and id drive resume and de-duplication.
_REQUIRED_FIELDS = ("metadata", "primaryKey")


@dataclass(frozen=True)
class FieldRule:
    """The limits of one ``NewEventInput`` field, read from the schema's ``@validate``."""

    name: str
    max_length: int | None
    pattern: str | None

    def check(self, value: object) -> None:
        """Raise :class:`ConfigurationError` naming the field, the value and the broken rule."""
        if not isinstance(value, str):
            raise ConfigurationError(
                f"NewEventInput.{self.name} must be a string, got {type(value).__name__}"
            )
        if self.max_length is not None and len(value) > self.max_length:
            raise ConfigurationError(
                f"NewEventInput.{self.name} {value!r} is {len(value)} characters long; "
                f"the limit is {self.max_length}"
            )
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise ConfigurationError(
                f"NewEventInput.{self.name} {value!r} does not match the pattern {self.pattern}"
                + _PATTERN_HINTS.get(self.name, "")
            )


_PATTERN_HINTS = {
    "chainCode": " (letters, digits, space and _ % # $ & -)",
    "offset": " (digits only, as a string, e.g. '193')",
    "offsetType": " (the only accepted value is 'highest')",
    "hotelCode": " (comma-separated hotel codes of letters, digits, space and _ % # $ & -)",
}


@cache
def load_schema() -> GraphQLSchema:
    """The bundled streaming schema (parsed once)."""
    text = resources.files("ohip_stream").joinpath("schema.graphql").read_text("utf-8")
    return build_schema(text)


@cache
def input_rules() -> Mapping[str, FieldRule]:
    """The ``@validate`` limits of every string field of ``NewEventInput``, by field name."""
    input_type = load_schema().get_type("NewEventInput")
    assert input_type is not None
    rules: dict[str, FieldRule] = {}
    for name, field in input_type.fields.items():  # type: ignore[attr-defined]
        node = field.ast_node
        for directive in (node.directives or ()) if node is not None else ():
            if directive.name.value != "validate":
                continue
            max_length: int | None = None
            pattern: str | None = None
            for argument in directive.arguments or ():
                value = argument.value
                if argument.name.value == "maxLength" and isinstance(value, IntValueNode):
                    max_length = int(value.value)
                elif argument.name.value == "pattern" and isinstance(value, StringValueNode):
                    pattern = value.value
            rules[name] = FieldRule(name, max_length, pattern)
    return rules


@cache
def offset_rule() -> Callable[[str], bool]:
    """A fast test of the schema's ``offset`` rule (ASCII digits, at most its maxLength): an
    offset the gateway sends that breaks it could never be sent back in a subscription."""
    rule = input_rules()["offset"]
    assert rule.pattern is not None
    assert rule.max_length is not None
    limit = rule.max_length
    if rule.pattern == "^[0-9]+$":
        # The same rule without a regex (the stream tests every event's offset with it).

        def digits(value: str) -> bool:
            return 0 < len(value) <= limit and value.isascii() and value.isdigit()

        return digits
    fullmatch = re.compile(rule.pattern).fullmatch

    def valid(value: str) -> bool:
        return len(value) <= limit and fullmatch(value) is not None

    return valid


def is_valid_offset(value: object) -> bool:
    """Whether ``value`` is an offset a subscription may carry (see :func:`offset_rule`)."""
    return isinstance(value, str) and offset_rule()(value)


def validate_input(values: Mapping[str, Any]) -> None:
    """Check a ``NewEventInput`` against the schema's fields and limits.

    Raises :class:`ConfigurationError` for an unknown field, a missing chain code, a value that
    breaks a ``@validate`` rule, or a ``delta`` that is not a boolean.
    """
    input_type = load_schema().get_type("NewEventInput")
    known = input_type.fields if input_type is not None else {}  # type: ignore[attr-defined]
    for name in values:
        if name not in known:
            raise ConfigurationError(
                f"NewEventInput has no field {name!r}; the fields are {', '.join(known)}"
            )
    if "chainCode" not in values or values["chainCode"] in (None, ""):
        raise ConfigurationError("NewEventInput.chainCode is required: pass the OPERA chain code")
    rules = input_rules()
    for name, value in values.items():
        if value is None:
            continue
        if name in rules:
            rules[name].check(value)
        elif name == "delta" and not isinstance(value, bool):
            raise ConfigurationError(f"NewEventInput.delta must be true or false, got {value!r}")
    if values.get("offset") is not None and values.get("offsetType") is not None:
        raise ConfigurationError(
            "NewEventInput takes offset or offsetType, not both: choose a replay offset or "
            "'highest'"
        )


@dataclass(frozen=True)
class SubscriptionDocument:
    """A validated ``subscribe`` payload: the query text and its (empty) variables."""

    query: str
    input: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        """The ``payload`` of a graphql-transport-ws ``subscribe`` message, in Oracle's form."""
        return {"variables": {}, "extensions": {}, "operationName": None, "query": self.query}


def build_subscription(
    chain_code: str,
    *,
    offset: str | None = None,
    offset_type: str | None = None,
    delta: bool = False,
    hotel_codes: Sequence[str] | str | None = None,
    fields: Iterable[str] | None = None,
) -> SubscriptionDocument:
    """Build the ``newEvent`` subscription with its input inline, as Oracle's examples send it.

    The input is checked with :func:`validate_input` and the document with graphql-core's
    validator against the bundled schema. ``fields`` narrows the selection (``metadata`` and
    ``primaryKey`` are always selected); by default every field is.
    """
    hotel_code: str | None
    if hotel_codes is None or isinstance(hotel_codes, str):
        hotel_code = hotel_codes or None
    else:
        hotel_code = ",".join(hotel_codes) or None
    values: dict[str, Any] = {"chainCode": chain_code}
    if offset is not None:
        values["offset"] = offset
    if offset_type is not None:
        values["offsetType"] = offset_type
    if delta:
        values["delta"] = True
    if hotel_code is not None:
        values["hotelCode"] = hotel_code
    validate_input(values)
    selected = _selection(fields)
    document = _document(values, selected)
    errors = validate(load_schema(), document)
    if errors:  # pragma: no cover - the input and selection were checked above
        raise ConfigurationError(f"invalid subscription document: {errors[0].message}")
    return SubscriptionDocument(query=_compact(print_ast(document)), input=values)


def _selection(fields: Iterable[str] | None) -> tuple[str, ...]:
    if fields is None:
        return ALL_FIELDS
    chosen = list(fields)
    unknown = [name for name in chosen if name not in ALL_FIELDS]
    if unknown:
        raise ConfigurationError(
            f"EventHeader has no field {unknown[0]!r}; the fields are {', '.join(ALL_FIELDS)}"
        )
    return tuple(name for name in ALL_FIELDS if name in chosen or name in _REQUIRED_FIELDS)


def _document(values: Mapping[str, Any], fields: Sequence[str]) -> DocumentNode:
    schema = load_schema()
    ds = DSLSchema(schema)
    header: Any = ds.EventHeader
    selections: list[DSLField] = []
    for name in fields:
        field = getattr(header, name)
        field_type = schema.get_type("EventHeader").fields[name].type  # type: ignore[union-attr]
        inner = _named(field_type)
        if isinstance(inner, GraphQLObjectType):
            sub: Any = getattr(ds, inner.name)
            field = field.select(*(getattr(sub, child) for child in inner.fields))
        selections.append(field)
    subscription: Any = ds.Subscription
    root = subscription.newEvent.args(input=dict(values)).select(*selections)
    request: Any = dsl_gql(DSLSubscription(root))
    document: DocumentNode = getattr(request, "document", request)
    return document


def _named(graphql_type: Any) -> Any:
    while isinstance(graphql_type, GraphQLNonNull | GraphQLList):
        graphql_type = graphql_type.of_type
    return graphql_type


def _compact(text: str) -> str:
    # One line, as Oracle's examples send it. Values cannot hold a newline (the patterns forbid
    # it), so only indentation and line ends go.
    return " ".join(line.strip() for line in text.splitlines())


def connection_status_query() -> dict[str, Any]:
    """The ``subscribe`` payload of ``query { connection { id status } }`` (standby checks)."""
    return {
        "variables": {},
        "extensions": {},
        "operationName": None,
        "query": "query { connection { id status } }",
    }
