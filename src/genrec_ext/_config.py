"""Helpers every settings dataclass shares: construction from a YAML/JSON mapping and argument checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


#: the history cap wherever none is given: the paper's 50 items (Scientific's tuned recipe passes 20)
DEFAULT_MAX_HISTORY = 50


def from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)`` for a dataclass ``cls``; an unknown key is a ``ValueError`` naming it and the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return cls(**dict(values))


def check(conditions: Iterable[tuple[bool, str]], prefix: str = "") -> None:
    """Raise ``ValueError(prefix + message)`` for the first ``(ok, message)`` that is not ok."""
    for ok, message in conditions:
        if not ok:
            raise ValueError(prefix + message)
