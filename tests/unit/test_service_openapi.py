"""The JSON Schema generator of the OpenAPI documents (``trapdoor.service.openapi``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import jsonschema_rs
import pytest

from trapdoor.service.openapi import (
    ADMIN,
    FRAME,
    Binary,
    Constraint,
    Operation,
    SchemaSet,
    open_object,
    operation,
)

Digest = Annotated[str, Constraint(pattern="^[0-9a-f]{64}$")]


class Leaf(TypedDict):
    """A leaf.

    Only the first paragraph becomes the description."""

    digest: Digest
    note: NotRequired[str | None]


@open_object
class Extensible(TypedDict):
    kind: Literal["a", "b"]


class Tree(TypedDict):
    """A recursive type."""

    leaves: list[Leaf]
    children: list[Tree]


@dataclass(frozen=True)
class Record:
    """A frozen dataclass: a field with a default is optional."""

    count: Annotated[int, Constraint(minimum=1, maximum=9)]
    ratio: float
    flags: tuple[bool, ...]
    extra: Mapping[str, Any] | None = None
    tags: Sequence[str] = field(default_factory=list)


def _validate(schemas: SchemaSet, schema: dict[str, Any], value: Any) -> bool:
    root = {**schema, "components": {"schemas": schemas.components}}
    return bool(jsonschema_rs.Draft202012Validator(root).is_valid(value))


def test_scalars_containers_unions_literals_and_constraints() -> None:
    schemas = SchemaSet()
    assert schemas.schema(bool) == {"type": "boolean"}
    assert schemas.schema(int | None) == {"type": ["integer", "null"]}
    assert schemas.schema(Any) == {}
    assert schemas.schema(dict[str, float]) == {
        "type": "object",
        "additionalProperties": {"type": "number"},
    }
    assert schemas.schema(Mapping[str, Any]) == {"type": "object"}
    assert schemas.schema(tuple[str, ...]) == {"type": "array", "items": {"type": "string"}}
    assert schemas.schema(Literal[32, 64]) == {"enum": [32, 64], "type": "integer"}
    assert schemas.schema(Digest | None) == {
        "anyOf": [{"type": "string", "pattern": "^[0-9a-f]{64}$"}, {"type": "null"}]
    }
    named = Constraint(min_length=1, exclusive_minimum=0, min_items=2, enum=("x", "y"))
    assert named.keywords() == {
        "minLength": 1,
        "exclusiveMinimum": 0,
        "minItems": 2,
        "enum": ["x", "y"],
    }


def test_typed_dicts_are_closed_components_with_their_required_keys() -> None:
    schemas = SchemaSet()
    assert schemas.schema(Tree) == {"$ref": "#/components/schemas/Tree"}
    leaf = schemas.components["Leaf"]
    assert leaf["required"] == ["digest"] and leaf["additionalProperties"] is False
    assert leaf["description"] == "A leaf."
    assert schemas.components["Tree"]["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Tree"},
    }
    tree = schemas.schema(Tree)
    good = {
        "leaves": [{"digest": "a" * 64, "note": None}],
        "children": [{"leaves": [], "children": []}],
    }
    assert _validate(schemas, tree, good)
    assert not _validate(schemas, tree, {**good, "more": 1})
    assert not _validate(schemas, tree, {"leaves": [{"digest": "A" * 64}], "children": []})
    assert not _validate(schemas, tree, {"leaves": []})
    schemas.schema(Extensible)
    assert "additionalProperties" not in schemas.components["Extensible"]


def test_dataclass_fields_with_defaults_are_optional() -> None:
    schemas = SchemaSet()
    record = schemas.schema(Record)
    component = schemas.components["Record"]
    assert component["required"] == ["count", "ratio", "flags"]
    assert component["properties"]["count"] == {"type": "integer", "minimum": 1, "maximum": 9}
    assert _validate(schemas, record, {"count": 3, "ratio": 0.5, "flags": [True]})
    assert not _validate(schemas, record, {"count": 10, "ratio": 0.5, "flags": []})
    assert not _validate(schemas, record, {"count": 3, "ratio": 0.5, "flags": [1]})


def test_types_without_a_json_form_and_name_clashes_are_refused() -> None:
    schemas = SchemaSet()
    for tp in (bytes, dict[int, str], tuple[int, str], set[int]):
        with pytest.raises(TypeError):
            schemas.schema(tp)
    schemas.schema(Leaf)

    class Leaf2(TypedDict):
        other: int

    Leaf2.__name__ = "Leaf"
    with pytest.raises(ValueError, match="two types are named Leaf"):
        schemas.schema(Leaf2)


def test_an_operation_documents_bodies_errors_and_security() -> None:
    schemas = SchemaSet()
    declared = Operation(
        request=(FRAME, Leaf), responses={201: Leaf, 200: Binary("text/plain")}, errors=(409,)
    )
    op = operation(declared, schemas, path_parameters=True)
    assert op["requestBody"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/Leaf"}},
    }
    assert list(op["responses"]) == ["200", "201", "400", "404", "409", "413", "415", "default"]
    assert op["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string", "format": "binary"}}
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    assert op["responses"]["409"]["content"] == error
    assert op["security"] == []
    guarded = operation(
        Operation(responses={200: Leaf}, security=(ADMIN,)), schemas, path_parameters=False
    )
    assert "requestBody" not in guarded
    assert {"401", "403"} <= set(guarded["responses"]) and "404" not in guarded["responses"]
    assert guarded["security"] == [{ADMIN: []}]
