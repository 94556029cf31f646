"""What a ``subscribe`` message asks for, read against ``schema.graphql`` (pure).

:func:`read_subscribe` turns a graphql-transport-ws ``subscribe`` payload into a query to answer,
a ``newEvent`` subscription with its input and selection, or a 4400 refusal with a message
(protocol §2, §5). :func:`input_error` applies the limits of ``NewEventInput`` that the schema
carries as ``@validate`` directives. Nothing here touches a socket or a loop.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values, get_variable_values

from ohip_stream._exceptions import ConfigurationError
from ohip_stream._query import load_schema, validate_input
from ohip_stream.testing._eventlog import StoredEvent, dumps

__all__ = [
    "HELP",
    "Invalid",
    "QueryRequest",
    "Selection",
    "SubscriptionRequest",
    "answer_query",
    "input_error",
    "read_subscribe",
    "renderer",
    "subscribe_id",
]

HELP = {
    "overview": "The ohip-stream emulator: a local stand-in for the OHIP Streaming API.",
    "configuration": "Subscribe to newEvent(input: {chainCode: ...}) after connection_init.",
    "connection": {
        "help": "Send connection_init with Authorization and x-app-key, ping every 10 s.",
        "errors": "4400 bad input, 4401 bad token or key, 4409 stream in use, 4429 re-init.",
    },
    "events": {
        "payload": "EventHeader: metadata { offset uniqueEventId } moduleName eventName ...",
        "replaying": 'offset: "N" replays event N and later; offsetType: "highest" the newest.',
    },
    "slack": "n/a",
    "email": "n/a",
}


class Selection:
    """The fields a subscription selected, to shape each event like a GraphQL response."""

    def __init__(self, type_name: str, fields: list[tuple[str, str, Selection | None]]):
        self.type_name = type_name
        self.fields = fields
        self.full = False  # every field of the type, unaliased: the stored text fits as it is

    def apply(self, value: Any) -> Any:
        """``value`` (a dict, a list of them, or a scalar) with only the selected fields."""
        if isinstance(value, list):
            return [self.apply(item) for item in value]
        if not isinstance(value, dict):
            return value
        shaped: dict[str, Any] = {}
        for key, name, sub in self.fields:
            if name == "__typename":
                shaped[key] = self.type_name
                continue
            item = value.get(name)
            shaped[key] = sub.apply(item) if sub is not None and item is not None else item
        return shaped


@dataclass(frozen=True)
class Invalid:
    """A subscribe message that is closed with ``code`` and ``reason`` (4400 by default)."""

    reason: str
    code: int = 4400


@dataclass(frozen=True)
class QueryRequest:
    """A query (``connection { id status }``, ``getHelp``) to answer on the socket."""

    document: DocumentNode
    variables: dict[str, Any]
    operation_name: str | None


@dataclass(frozen=True)
class SubscriptionRequest:
    """A ``newEvent`` subscription: its input values and selection (``None``: send as stored)."""

    values: dict[str, Any]
    selection: Selection | None


@functools.lru_cache(maxsize=256)
def _parse_and_validate(query: str) -> tuple[DocumentNode | None, str]:
    """The parsed document, or ``None`` and the first syntax or validation error (cached)."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, exc.message
    errors = validate(load_schema(), document)
    if errors:
        return None, errors[0].message
    return document, ""


def _collect_fields(
    selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    found: list[FieldNode] = []
    for node in selection_set.selections:
        if isinstance(node, FieldNode):
            found.append(node)
        elif isinstance(node, InlineFragmentNode):
            found.extend(_collect_fields(node.selection_set, fragments))
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                found.extend(_collect_fields(fragment.selection_set, fragments))
    return found


def _named_type(graphql_type: Any) -> Any:
    while isinstance(graphql_type, GraphQLNonNull | GraphQLList):
        graphql_type = graphql_type.of_type
    return graphql_type


def _build_selection(
    selection_set: SelectionSetNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    object_type: GraphQLObjectType,
) -> Selection:
    entries: list[tuple[str, str, Selection | None]] = []
    full = True
    for node in _collect_fields(selection_set, fragments):
        name = node.name.value
        key = node.alias.value if node.alias is not None else name
        sub: Selection | None = None
        if node.selection_set is not None and name in object_type.fields:
            inner = _named_type(object_type.fields[name].type)
            if isinstance(inner, GraphQLObjectType):
                sub = _build_selection(node.selection_set, fragments, inner)
                full = full and sub.full
        if key != name:
            full = False
        entries.append((key, name, sub))
    names = [name for _, name, _ in entries]
    selection = Selection(object_type.name, entries)
    selection.full = (
        full
        and len(set(names)) == len(names) == len(object_type.fields)
        and set(names) == set(object_type.fields)
    )
    return selection


def subscribe_id(message: Mapping[str, Any]) -> str | None:
    """The id of a well-formed ``subscribe`` message (an id and a query), else ``None``."""
    sub_id = message.get("id")
    payload = message.get("payload")
    if (
        not isinstance(sub_id, str)
        or not sub_id
        or not isinstance(payload, dict)
        or not isinstance(payload.get("query"), str)
    ):
        return None
    return sub_id


def read_subscribe(payload: Mapping[str, Any]) -> Invalid | QueryRequest | SubscriptionRequest:
    """What a ``subscribe`` payload (with a string ``query``) asks for (protocol §2).

    A syntax or schema error, an unknown operation, or a subscription to anything but one
    ``newEvent`` field is :class:`Invalid` (4400, with the validator's message). The input's
    limits are checked apart, by :func:`input_error`, so that the caller can record the input.
    """
    document, error = _parse_and_validate(payload["query"])
    if document is None:
        return Invalid(error)  # protocol §5: syntax or schema error -> 4400
    name = payload.get("operationName")
    operation_name = name if isinstance(name, str) else None
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return Invalid("Unknown or ambiguous operation")
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        return Invalid("variables must be an object")
    if operation.operation is OperationType.QUERY:
        return QueryRequest(document, variables, operation_name)
    if operation.operation is not OperationType.SUBSCRIPTION:
        return Invalid("Only subscriptions and queries are supported")
    return _read_new_event(document, operation, variables)


def _read_new_event(
    document: DocumentNode, operation: OperationDefinitionNode, variables: dict[str, Any]
) -> Invalid | SubscriptionRequest:
    schema = load_schema()
    coerced = get_variable_values(schema, operation.variable_definitions or (), variables)
    if isinstance(coerced, list):
        return Invalid(coerced[0].message)
    fragments = {
        node.name.value: node
        for node in document.definitions
        if isinstance(node, FragmentDefinitionNode)
    }
    roots = _collect_fields(operation.selection_set, fragments)
    if len(roots) != 1 or roots[0].name.value != "newEvent":
        return Invalid("Subscribe to exactly one field: newEvent")
    field_node = roots[0]
    subscription_type = schema.subscription_type
    assert subscription_type is not None
    try:
        arguments = get_argument_values(subscription_type.fields["newEvent"], field_node, coerced)
    except GraphQLError as exc:
        return Invalid(exc.message)
    values = arguments.get("input")
    if not isinstance(values, dict):
        return Invalid("newEvent needs its input")
    header_type = schema.get_type("EventHeader")
    assert isinstance(header_type, GraphQLObjectType)
    selection = (
        _build_selection(field_node.selection_set, fragments, header_type)
        if field_node.selection_set is not None
        else None
    )
    return SubscriptionRequest(dict(values), selection)


def renderer(delta: bool, selection: Selection | None) -> Callable[[StoredEvent], str]:
    """How a subscription's events are written: as stored, as a delta, or shaped."""
    if selection is None:
        return StoredEvent.delta if delta else _as_stored

    def shaped(stored: StoredEvent) -> str:
        data = json.loads(stored.delta() if delta else stored.encoded)
        return dumps(selection.apply(data))

    return shaped


def _as_stored(stored: StoredEvent) -> str:
    return stored.encoded


def input_error(values: Mapping[str, Any]) -> str | None:
    """Why ``NewEventInput`` values break the schema's limits (a 4400 reason), or ``None``."""
    try:
        validate_input(values)
    except ConfigurationError as exc:
        return str(exc)
    return None


def answer_query(request: QueryRequest, root: Mapping[str, Any]) -> dict[str, Any]:
    """The ``next`` payload answering a query, executed over ``root`` (protocol §2, §7)."""
    result = execute_sync(
        load_schema(),
        request.document,
        root_value=root,
        variable_values=request.variables,
        operation_name=request.operation_name,
    )
    return dict(result.formatted)
