"""JSON Schema for the services' OpenAPI documents, generated from the views' typed bodies.

Each view declares the types of its request body and of its answers
(:func:`trapdoor.service.web.documented`); :class:`SchemaSet` turns them into JSON Schema
of the OpenAPI 3.1 dialect (JSON Schema 2020-12), and :func:`operation` into the
operation object. Frozen dataclasses and ``TypedDict``s (``NotRequired`` keys) become named
components, closed unless marked :func:`open_object`, since a field a type does not name is
one a client must not rely on; ``str``, ``int``, ``float``, ``bool``, ``None``,
``list``/``tuple[X, ...]``/``Sequence``, ``dict``/``Mapping`` with ``str`` keys, ``X | Y``
and ``Literal`` map as JSON Schema has them; ``Annotated[T, Constraint(...)]`` adds the few
constraints that matter (lengths, a pattern, bounds, an enum). The types are what the
services answer: a test validates real answers against the documents.

Our own code, not pydantic: pydantic is not a core dependency and must not become one (the
participant node's install is kept lean), the message types are plain dataclasses and
``TypedDict``s that need no runtime validation library, and the mapping is this short.
Pure: no Flask.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

__all__ = [
    "ADMIN",
    "FRAME",
    "SECURITY_SCHEMES",
    "TOKEN",
    "Binary",
    "Constraint",
    "Operation",
    "SchemaSet",
    "open_object",
    "operation",
]

_T = TypeVar("_T")
REF = "#/components/schemas/"
_OPEN = "__openapi_open__"
_SCALARS: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
}
_ARRAYS = (list, tuple, Sequence)
_OBJECTS = (dict, Mapping)
#: The two kinds of bearer token, by their scheme names in ``components/securitySchemes``.
ADMIN = "adminToken"
TOKEN = "kgcToken"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    ADMIN: {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator: this service's own admin token.",
    },
    TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An enrolled subject: a KGC-issued EdDSA JWT for this service's "
        "audience (a participant's, or the parameter server's at the KGC).",
    },
}


@dataclass(frozen=True)
class Constraint:
    """JSON Schema keywords that ``Annotated[T, Constraint(...)]`` adds to ``T``'s schema."""

    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    min_items: int | None = None
    #: the allowed values, from the constant the code checks against (no second copy)
    enum: tuple[Any, ...] | None = None
    description: str | None = None

    def keywords(self) -> dict[str, Any]:
        """The set fields as JSON Schema keywords (``min_length`` is ``minLength``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                head, *rest = f.name.split("_")
                out[head + "".join(word.title() for word in rest)] = (
                    list(value) if isinstance(value, tuple) else value
                )
        return out


@dataclass(frozen=True)
class Binary:
    """A body of raw bytes (a vector frame), documented by its media type only."""

    media_type: str = "application/octet-stream"


#: A vector frame (``trapdoor.crypto.wire``): uploads, stored frames, bcp release requests.
FRAME = Binary()


def open_object(cls: _T) -> _T:
    """Mark a ``TypedDict`` or dataclass whose objects may carry fields it does not name
    (free-form metrics, a model spec whose fields depend on its kind)."""
    setattr(cls, _OPEN, True)
    return cls


class SchemaSet:
    """JSON Schemas of Python types; named types are collected in :attr:`components`."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._types: dict[str, Any] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        """The schema of ``tp``: a ``$ref`` for a dataclass or a ``TypedDict``."""
        origin, args = get_origin(tp), get_args(tp)
        if tp is Any or tp is object:
            return {}
        if origin is Annotated:
            schema = dict(self.schema(args[0]))
            for meta in tp.__metadata__:
                if isinstance(meta, Constraint):
                    schema.update(meta.keywords())
            return schema
        if isinstance(tp, type) and tp in _SCALARS:
            return {"type": _SCALARS[tp]}
        if origin is Literal:
            kinds = {_SCALARS[type(value)] for value in args}
            return {"enum": list(args), **({"type": kinds.pop()} if len(kinds) == 1 else {})}
        if origin in (Union, types.UnionType):
            options = [self.schema(arg) for arg in args]
            if all(list(option) == ["type"] for option in options):
                return {"type": [option["type"] for option in options]}
            return {"anyOf": options}
        if tp in _ARRAYS or origin in _ARRAYS:
            if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
                raise TypeError(f"only tuple[X, ...] has a JSON schema, not {tp!r}")
            return {"type": "array", **({"items": self.schema(args[0])} if args else {})}
        if tp in _OBJECTS or origin in _OBJECTS:
            if args and args[0] is not str:
                raise TypeError(f"JSON object keys are strings, not {args[0]!r}")
            values = self.schema(args[1]) if args else {}
            return {"type": "object", **({"additionalProperties": values} if values else {})}
        if is_typeddict(tp) or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return self._named(tp)
        raise TypeError(f"no JSON schema for {tp!r}")

    def _named(self, tp: type) -> dict[str, Any]:
        name = tp.__name__
        known = self._types.setdefault(name, tp)
        if known is not tp:
            raise ValueError(f"two types are named {name}: {known!r} and {tp!r}")
        if name not in self.components:
            self.components[name] = {}  # claimed first: a type may contain itself
            self.components[name] = self._object(tp)
        return {"$ref": REF + name}

    def _object(self, tp: type) -> dict[str, Any]:
        hints = get_type_hints(tp, include_extras=True)
        keys: dict[str, tuple[Any, bool]]
        if is_typeddict(tp):  # __required_keys__ is wrong under postponed annotations
            keys = {
                name: _key(hint, getattr(tp, "__total__", True)) for name, hint in hints.items()
            }
        else:
            missing = dataclasses.MISSING
            keys = {
                f.name: (hints[f.name], f.default is missing and f.default_factory is missing)
                for f in dataclasses.fields(tp)
            }
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: self.schema(hint) for name, (hint, _) in keys.items()},
        }
        required = [name for name, (_, needed) in keys.items() if needed]
        if required:
            schema["required"] = required
        if not getattr(tp, _OPEN, False):
            schema["additionalProperties"] = False
        if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "("):  # not a dataclass's
            schema["description"] = " ".join(tp.__doc__.split("\n\n")[0].split())
        return schema


def _key(hint: Any, total: bool) -> tuple[Any, bool]:
    """A ``TypedDict`` key's type and whether it is required."""
    origin = get_origin(hint)
    if origin is NotRequired or origin is Required:
        return get_args(hint)[0], origin is Required
    return hint, total


@dataclass(frozen=True)
class Operation:
    """What a view declares for its OpenAPI operation (:func:`trapdoor.service.web.documented`).

    ``request`` is the JSON body's type, a :class:`Binary`, or a tuple of those (one per
    media type); ``responses`` maps each success status to the answer's type (or a
    :class:`Binary`); ``errors`` adds statuses to those the operation's shape implies;
    ``security`` names the schemes of :data:`SECURITY_SCHEMES` that may call it (any one).
    """

    request: Any = None
    responses: Mapping[int, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    security: tuple[str, ...] = ()


def _content(body: Any, schemas: SchemaSet) -> dict[str, Any]:
    """The ``content`` map of a body: a media type per alternative."""
    content: dict[str, Any] = {}
    for alternative in body if isinstance(body, tuple) else (body,):
        if isinstance(alternative, Binary):
            binary = {"type": "string", "format": "binary"}
            content[alternative.media_type] = {"schema": binary}
        else:
            content["application/json"] = {"schema": schemas.schema(alternative)}
    return content


def operation(declared: Operation, schemas: SchemaSet, *, path_parameters: bool) -> dict[str, Any]:
    """``requestBody``, ``responses`` and ``security`` of one operation.

    Error statuses follow from its shape (a body can be malformed, too large or of another
    media type; a caller can lack credentials; a path can name nothing) plus the declared
    ones; each answers ``{"error", "message"}`` (``components/schemas/Error``).
    """
    out: dict[str, Any] = {}
    errors = set(declared.errors)
    if declared.request is not None:
        out["requestBody"] = {"required": True, "content": _content(declared.request, schemas)}
        errors |= {400, 413, 415}
    if declared.security:
        errors |= {401, 403}
    if path_parameters:
        errors.add(404)
    error = {"application/json": {"schema": {"$ref": REF + "Error"}}}
    responses: dict[str, Any] = {
        str(status): {"description": HTTPStatus(status).phrase, "content": _content(body, schemas)}
        for status, body in sorted(declared.responses.items())
    }
    for status in sorted(errors):
        responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": error}
    responses["default"] = {"description": "any other refusal", "content": error}
    out["responses"] = responses
    out["security"] = [{scheme: []} for scheme in declared.security]
    return out
