"""A service's settings, read from its own environment variables (``TRAPDOOR_KGC_*``, ...).

Each service declares one frozen dataclass of typed fields
(:class:`trapdoor.kgc.settings.KgcSettings`, :class:`trapdoor.ps.settings.PsSettings`,
:class:`trapdoor.participant.settings.NodeSettings`); :meth:`ServiceSettings.from_env`
reads ``PREFIX + FIELD`` for each field and converts the text by the field's type. So a
service never reads another's variables, the defaults live in one place, and a bad value
stops the service at start with the variable's name.

An empty variable counts as unset (``FOO= cmd`` is how a shell unsets one for a command).
Secrets are fields declared with :func:`secret`: kept out of ``repr``, and, being strings,
never quoted in an error.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = ["ServiceSettings", "SettingsError", "at_least", "secret", "tcp_port"]


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take; the message names it."""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


#: The field types a setting may have (each also as ``T | None``), and what each expects.
_CONVERTERS: dict[type, tuple[Callable[[str], Any], str]] = {
    str: (str, "text"),
    int: (int, "an integer"),
    float: (float, "a number"),
    bool: (_to_bool, "one of 1/0, true/false, yes/no, on/off"),
    Path: (Path, "a path"),
}


def _value_type(hint: Any) -> type:
    """``int`` for ``int`` and for ``int | None``: the type the text converts to."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            hint = inner[0]
    if hint not in _CONVERTERS:
        raise TypeError(f"a setting cannot be of type {hint!r}")
    return typing.cast(type, hint)


def secret() -> Any:
    """A secret text field (token, passphrase): unset by default, never in ``repr``."""
    return dataclasses.field(default=None, repr=False)


def tcp_port(default: int) -> Any:
    """A TCP port field; 0 lets the operating system pick a free port."""
    return dataclasses.field(default=default, metadata={"min": 0, "max": 65535})


def at_least(low: int, default: int | Callable[[], int]) -> Any:
    """An integer field that must be ``>= low``; ``default`` may be a factory."""
    if callable(default):
        return dataclasses.field(default_factory=default, metadata={"min": low})
    return dataclasses.field(default=default, metadata={"min": low})


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """Base of the per-service settings: subclasses set :attr:`PREFIX` and declare fields."""

    PREFIX: ClassVar[str] = "TRAPDOOR_"

    @classmethod
    def variable(cls, field_name: str) -> str:
        """The environment variable of a field: ``PREFIX`` + its name in capitals."""
        return cls.PREFIX + field_name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from ``environ`` (default: ``os.environ``); unset fields keep defaults.

        Raises :class:`SettingsError`, naming the variable, on a value of the wrong type
        or out of range.
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = cls.variable(field.name)
            text = env.get(name, "")
            if text == "":
                continue
            convert, expected = _CONVERTERS[_value_type(hints[field.name])]
            try:
                values[field.name] = convert(text)
            except ValueError:
                # only non-text fields can fail, so no secret is ever quoted here
                raise SettingsError(f"{name} must be {expected}, not {text!r}") from None
        return cls(**values)

    def __post_init__(self) -> None:
        """Check the bounds of :func:`tcp_port` and :func:`at_least` fields."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low, high = field.metadata.get("min"), field.metadata.get("max")
            if value is None or (low is None and high is None):
                continue
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f">= {low}"
                raise SettingsError(f"{self.variable(field.name)} must be {bounds}, not {value}")
