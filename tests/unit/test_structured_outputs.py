"""Structured outputs: response_format to a schema, and the dummy's instances of schemas."""

from __future__ import annotations

from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from sllm.backends.dummy_json import instance
from sllm.backends.structured import ANY_OBJECT, schema_of
from sllm.edge.errors import RequestError


class Address(BaseModel):
    street: str = Field(min_length=12, max_length=20)
    number: int = Field(ge=3, le=9)


class Person(BaseModel):
    name: str
    age: int
    score: float = Field(gt=0, lt=1)
    city: Literal["Paris", "Berlin"]
    tags: list[str] = Field(min_length=2, max_length=3)
    address: Address
    manager: Person | None = None
    active: bool


SCHEMAS: list[dict[str, Any]] = [
    Person.model_json_schema(),
    ANY_OBJECT,
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}},
    {"type": ["string", "null"], "maxLength": 3},
    {"allOf": [{"properties": {"a": {"const": 1}}}, {"properties": {"b": {"type": "null"}}}]},
    {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_dummys_instances_validate_and_depend_on_the_seed_alone(schema: dict[str, Any]) -> None:
    for seed in ("one", "two", "three"):
        value = instance(schema, seed)
        jsonschema.validate(value, schema)
        assert instance(schema, seed) == value
    assert len({repr(instance(Person.model_json_schema(), str(s))) for s in range(5)}) > 1


def test_response_formats_become_schemas_or_a_400_naming_the_field() -> None:
    assert schema_of(None) is None and schema_of({"type": "text"}) is None
    assert schema_of({"type": "json_object"}) == ANY_OBJECT
    wanted = {"type": "object", "properties": {"a": {"type": "integer"}}}
    given = {"type": "json_schema", "json_schema": {"name": "x", "schema": wanted, "strict": True}}
    assert schema_of(given) == wanted
    for bad in (
        {"type": "json_schema"},
        {"type": "yaml"},
        "json",
        {"type": "json_schema", "json_schema": {"schema": []}},
    ):
        with pytest.raises(RequestError) as refused:
            schema_of(bad)
        assert refused.value.param == "response_format"
