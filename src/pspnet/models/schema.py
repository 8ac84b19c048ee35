"""The model's fields, defaults and bounds, declared once on :class:`~pspnet.models.pspnet.PSPNetConfig`.

Each field of ``PSPNetConfig`` is declared with :func:`spec` (its default, help text and bounds);
its kind comes from the type annotation. :func:`describe` turns that declaration into one
:class:`FieldSpec` per field, and everything that checks a model's fields uses those:
``PSPNetConfig`` itself, the check of a weight file's untrusted config metadata
(:func:`pspnet.models.weights.check_config_dict`), the ``model`` section of a run config
(:mod:`pspnet.config`) and the choices of ``pspnet convert``. A new bound is one edit here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldSpec", "spec", "describe", "problems"]

_KIND_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
               str: ("a string", "strings")}


@dataclass(frozen=True)
class FieldSpec:
    """One config field: what it holds, its default, what is allowed and what it means.

    ``kind`` is the type of the value, or of each item when ``sequence``; ``choices`` are the only
    values allowed; ``range`` bounds the value (every item of a sequence) inclusively, except the
    upper end when ``open_above``; ``length`` bounds the number of items of a sequence; ``nullable``
    fields accept None, which stands for the original release's choice.
    """

    help: str
    choices: tuple[Any, ...] | None = None
    range: tuple[float, float] | None = None
    open_above: bool = False
    length: tuple[int, int] | None = None
    # filled in from the dataclass field by describe()
    name: str = ""
    kind: type = object
    default: Any = None
    sequence: bool = False
    nullable: bool = False

    def type_words(self) -> str:
        one, many = _KIND_WORDS[self.kind]
        words = f"a list of {many}" if self.sequence else one
        return words + (" or null" if self.nullable else "")

    def range_words(self) -> str:
        lo, hi = self.range  # type: ignore[misc]
        return f"[{lo}, {hi}{')' if self.open_above else ']'}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed for this field, naming the field, the value and what is allowed;
        None when it is allowed. Types are strict (``True`` is no integer, ``"3"`` no number)."""
        if value is None and self.nullable:
            return None
        if self.sequence:
            ok = isinstance(value, (list, tuple)) and all(_is_kind(v, self.kind) for v in value)
        else:
            ok = _is_kind(value, self.kind)
        if not ok:
            return f"{self.name}={value!r} has the wrong type (expected {self.type_words()})"
        if self.choices is not None and value not in self.choices:
            allowed = (" or ".join(map(repr, self.choices)) if len(self.choices) == 2
                       else f"one of {list(self.choices)}")
            return f"{self.name} must be {allowed}, got {value!r}"
        items = list(value) if self.sequence else [value]
        if self.length is not None and not self.length[0] <= len(items) <= self.length[1]:
            return f"{self.name}={list(value)!r} must have {self.length[0]} to {self.length[1]} items"
        if self.range is not None:
            lo, hi = self.range
            if any(not (lo <= v < hi if self.open_above else lo <= v <= hi) for v in items):
                each = ": every item in " if self.sequence else " "
                return f"{self.name}={value!r} is outside the allowed range{each}{self.range_words()}"
        return None


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def spec(default: Any, help: str, *, choices: tuple[Any, ...] | None = None,
         range: tuple[float, float] | None = None, open_above: bool = False,
         length: tuple[int, int] | None = None) -> Any:
    """A dataclass field with its default and :class:`FieldSpec` (help text and bounds) as metadata."""
    bounds = FieldSpec(help=help, choices=choices, range=range, open_above=open_above, length=length)
    return dataclasses.field(default=default, metadata={"spec": bounds})


def describe(cls: type) -> dict[str, FieldSpec]:
    """Every field of a dataclass declared with :func:`spec`, its kind read from its annotation:
    ``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]`` (a sequence), each maybe ``| None``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        nullable = type(None) in args
        if nullable:
            (tp,) = [a for a in args if a is not type(None)]
        sequence = typing.get_origin(tp) is tuple
        kind = typing.get_args(tp)[0] if sequence else tp
        out[f.name] = dataclasses.replace(f.metadata["spec"], name=f.name, kind=kind, default=f.default,
                                          sequence=sequence, nullable=nullable)
    return out


def problems(schema: Mapping[str, FieldSpec], values: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``values`` (unknown keys, wrong types, values out of bounds), one line each."""
    found = []
    for key, value in values.items():
        if key not in schema:
            found.append(f"unknown key {key!r}")
        elif (why := schema[key].problem(value)) is not None:
            found.append(why)
    return found
