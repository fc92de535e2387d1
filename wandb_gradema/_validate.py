"""Argument checks shared by every public constructor: one message format everywhere."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_int(name: str, value: Any, *, minimum: int = 0, allow_none: bool = False) -> Any:
    """Return ``value`` if it is an int >= ``minimum`` (or None when allowed); raise otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        # Sweep configs and YAML sometimes carry 10.0 for 10: accept integral floats.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}.")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """Return ``float(value)`` if it is a finite real in the given range; raise otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    bad = not math.isfinite(value)
    if low is not None and (value < low or (low_open and value == low)):
        bad = True
    if high is not None and (value > high or (high_open and value == high)):
        bad = True
    if bad:
        raise ValueError(f"`{name}` must be in {interval}, got {value:g}.")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; raise naming them all otherwise."""
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return str(value)


def reject_unknown(where: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raise a TypeError naming every unknown keyword and listing the valid ones."""
    known_set = set(known)
    unknown = sorted(k for k in given if k not in known_set)
    if unknown:
        names = ", ".join(f"`{k}`" for k in unknown)
        valid = ", ".join(sorted(known_set))
        raise TypeError(f"{where} got unknown option(s) {names}. Valid options: {valid}.")


def check_state_keys(owner: str, state: Any, expected: Iterable[str]) -> None:
    """Raise if a state dict lacks keys or carries unknown ones, naming them."""
    if not isinstance(state, dict):
        raise TypeError(f"{owner}.load_state_dict expects a dict, got {type(state).__name__}.")
    expected = tuple(expected)
    missing = [k for k in expected if k not in state]
    unknown = [k for k in state if k not in expected]
    if missing or unknown:
        raise KeyError(
            f"{owner}.load_state_dict: missing keys {missing}, unexpected keys {unknown}."
        )
