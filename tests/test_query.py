from __future__ import annotations

import pytest
from graphql import parse, validate

from ohip_stream import ConfigurationError
from ohip_stream._models import OFFSET_PATTERN
from ohip_stream._query import (
    build_subscription,
    connection_status_query,
    input_rules,
    load_schema,
    validate_input,
)


def test_rules_come_from_the_schema_directives() -> None:
    rules = input_rules()
    assert rules["chainCode"].max_length == 20
    assert rules["offset"].pattern == "^[0-9]+$"
    assert rules["offsetType"].pattern == "^(highest)$"
    assert rules["hotelCode"].max_length == 50
    assert "delta" not in rules


def test_the_event_models_offset_rule_is_the_schemas() -> None:
    # Events' offsets are checked by the model (in one pass with the rest of the event); the
    # rule must be the one a subscription's offset argument has in the schema.
    rule = input_rules()["offset"]
    assert rule.pattern == "^[0-9]+$"
    assert f"^[0-9]{{1,{rule.max_length}}}$" == OFFSET_PATTERN


def test_document_is_valid_against_the_schema_and_inlines_the_input() -> None:
    doc = build_subscription("OHIPCN", offset="193", delta=True, hotel_codes=["H1", "H2"])
    assert validate(load_schema(), parse(doc.query)) == []
    assert 'chainCode: "OHIPCN"' in doc.query
    assert 'offset: "193"' in doc.query
    assert "delta: true" in doc.query
    assert 'hotelCode: "H1,H2"' in doc.query
    assert "\n" not in doc.query
    payload = doc.payload()
    assert payload == {
        "variables": {},
        "extensions": {},
        "operationName": None,
        "query": doc.query,
    }


def test_selection_always_has_offset_unique_id_and_primary_key() -> None:
    doc = build_subscription("OHIPCN", fields=["eventName"])
    assert "metadata { offset uniqueEventId }" in doc.query
    assert "primaryKey" in doc.query
    assert "eventName" in doc.query
    assert "detail" not in doc.query


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"chain_code": "A!"}, ["chainCode", "'A!'", "pattern"]),
        ({"chain_code": "C" * 21}, ["chainCode", "limit is 20"]),
        ({"chain_code": "OHIPCN", "offset": "12a"}, ["offset", "'12a'", "digits"]),
        ({"chain_code": "OHIPCN", "offset": "1" * 21}, ["offset", "limit is 20"]),
        ({"chain_code": "OHIPCN", "offset_type": "lowest"}, ["offsetType", "highest"]),
        ({"chain_code": "OHIPCN", "hotel_codes": "H1;H2"}, ["hotelCode", "pattern"]),
        ({"chain_code": ""}, ["chainCode", "required"]),
        ({"chain_code": "OHIPCN", "offset": "1", "offset_type": "highest"}, ["not both"]),
        ({"chain_code": "OHIPCN", "fields": ["nope"]}, ["no field 'nope'"]),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_rule(
    kwargs: dict[str, object], names: list[str]
) -> None:
    chain = kwargs.pop("chain_code")
    with pytest.raises(ConfigurationError) as caught:
        build_subscription(chain, **kwargs)  # type: ignore[arg-type]
    for name in names:
        assert name in str(caught.value)


def test_offset_up_to_twenty_digits_is_accepted() -> None:
    build_subscription("OHIPCN", offset="9" * 20)


def test_validate_input_rejects_unknown_fields_and_bad_delta() -> None:
    with pytest.raises(ConfigurationError, match="no field 'chain'"):
        validate_input({"chain": "X"})
    with pytest.raises(ConfigurationError, match="delta"):
        validate_input({"chainCode": "X", "delta": "yes"})
    with pytest.raises(ConfigurationError, match="must be a string"):
        validate_input({"chainCode": 5})


def test_connection_status_query_is_valid() -> None:
    payload = connection_status_query()
    assert validate(load_schema(), parse(payload["query"])) == []
