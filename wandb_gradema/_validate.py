"""Argument checks shared by every public constructor: one message format everywhere."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

#: Names people reach for that mean one of our options (difflib cannot see these).
ALIASES = {
    "clip": "max_norm",
    "clip_norm": "max_norm",
    "grad_clip": "max_norm",
    "clip_grad_norm": "max_norm",
    "max_grad_norm": "max_norm",
    "gradient_clip_val": "max_norm",
    "gradient_clipping": "max_norm",
    "wandb_run": "run",
    "logger": "run",
    "net": "model",
    "module": "model",
    "grad_scaler": "scaler",
    "amp_scaler": "scaler",
    "action": "on_escalation",
    "on_anomaly": "on_escalation",
    "log_freq": "log_every",
    "log_interval": "log_every",
    "prefix": "name",
}


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
    if not isinstance(value, str):
        allowed = ", ".join(repr(c) for c in choices)
        raise TypeError(f"`{name}` must be one of {allowed}; got {type(value).__name__} {value!r}.")
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return str(value)


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known option ``name`` was most likely meant to be (a typo or a common alias), if any."""
    known = tuple(known)
    alias = ALIASES.get(name.lower())
    if alias in known:
        return alias
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def reject_unknown(where: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raise a TypeError naming every unknown keyword with the option it most likely meant.

    Why not list them all: ``watch()`` takes 40-odd options, and a list that long hides the one
    the user meant. Unknown names with no near miss point to the README's option table.
    """
    known = tuple(known)
    unknown = sorted(k for k in given if k not in known)
    if not unknown:
        return
    parts = []
    for key in unknown:
        guess = suggest(key, known)
        parts.append(f"`{key}` (did you mean `{guess}`?)" if guess else f"`{key}`")
    hint = "" if all(suggest(k, known) for k in unknown) else (
        " The options are listed in the README's option table and in wandb_gradema.WATCH_OPTIONS."
    )
    raise TypeError(f"{where} got unknown option(s) {', '.join(parts)}.{hint}")


def check_run(run: Any) -> None:
    """Raise a TypeError unless ``run`` is None or a W&B run (what ``wandb.init()`` returns).

    Why: a string here (a run *name*) used to be accepted and then failed on every log call,
    so a whole run logged nothing.
    """
    if run is None or (callable(getattr(run, "log", None)) and hasattr(run, "summary")):
        return
    hint = ""
    if isinstance(run, str):
        hint = (
            f" To name the run, pass it to wandb.init(name={run!r}); to tell several watched optimizers "
            f"apart, use watch(opt, name=...)."
        )
    raise TypeError(
        f"`run` must be a W&B run (what wandb.init() returns) or None (log to wandb.run), "
        f"got {type(run).__name__} {run!r}.{hint}"
    )


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
