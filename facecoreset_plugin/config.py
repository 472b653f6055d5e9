"""Typed dataclass configs: overlay keyword overrides without mutating the defaults."""

from __future__ import annotations

__all__ = ["overlay_config"]

import dataclasses
from typing import Any, TypeVar

from .errors import InputError

C = TypeVar("C")


def overlay_config(base: C, owner: str, **overrides: Any) -> C:
    """Return a copy of the dataclass ``base`` with ``overrides`` applied.

    Args:
        base: a dataclass instance holding the defaults (left untouched).
        owner: the name of what is being configured, used in error messages.
        **overrides: field values to replace.

    Raises:
        InputError: an override names no field of the config.
    """
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(
            f"{owner}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options are {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(base, **overrides)

