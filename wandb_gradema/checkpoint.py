"""The monitor's checkpoint format: its version, its keys, and riding inside the optimizer's.

``GradientMonitor.state_dict()`` is a dict of plain Python values with ``format_version``.
This module checks a loaded state before anything is restored (a newer format is named as
such, an older one is brought up to date), and owns the optimizer state-dict hooks that carry
the monitor state inside ``optimizer.state_dict()`` under ``STATE_KEY``.

The usual resume order loads the optimizer before ``watch()``: torch's ``load_state_dict``
keeps only ``state`` and ``param_groups``, so the monitor's entry would be lost. ``remember_loads``
wraps ``torch.optim.Optimizer.load_state_dict`` once (at import) to set that entry aside for an
optimizer no monitor watches; ``watch()`` takes it back (``loaded_state``) and resumes.
"""

from __future__ import annotations

import functools
import json
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._validate import check_state_keys
from .errors import warn
from .escalation import EscalationEvent

__all__ = [
    "FORMAT_VERSION",
    "STATE_KEY",
    "STATE_KEYS",
    "DCPStateful",
    "OptimizerStateHooks",
    "HOOK_MARK",
    "event_from_state",
    "is_watched",
    "loaded_state",
    "remember_loads",
    "upgrade",
]

#: Marks the monitor's step hook on an optimizer (one monitor per optimizer).
HOOK_MARK = "_gradema_hook"
#: What the last ``load_state_dict`` gave an unwatched optimizer: the monitor's state, or None
#: when the checkpoint carried none. Weak keys: an optimizer's entry goes with it.
_LOADED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

#: The format ``state_dict()`` writes. 2: the decision schedule (``ticks``), steps processed but
#: not yet decided, internal-error count, the ``confirmed`` flag of events and the policy's
#: cooldown after a confirmed one, and the detector's statistics by rule family. 3: the
#: detector's statistics of its second version (rule families agreeing on the same steps). 4:
#: the loss statistics follow early blow-ups (the level before one is the start), and a run of
#: non-finite steps is one incident (``nonfinite``: where it began, when the weights followed).
FORMAT_VERSION = 4
#: The key under which the monitor state rides inside ``optimizer.state_dict()``.
STATE_KEY = "gradema"
STATE_KEYS = (
    "format_version",
    "step",
    "ticks",
    "skip_streak",
    "cadence",
    "tracker",
    "detector",
    "policy",
    "aggregator",
    "nonfinite",
    "events",
    "undecided_events",
    "undecided_rows",
    "internal_errors",
)


def upgrade(state: Mapping[str, Any], *, owner: str = "GradientMonitor") -> tuple[dict[str, Any], bool]:
    """``state`` in the current format, and whether the detector's statistics must restart.

    Raises:
        TypeError: ``state`` is not a dict.
        ValueError: it was written by a newer version of wandb_gradema (upgrade to read it).
        KeyError: keys are missing or unknown for its format (named).
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner}.load_state_dict expects a dict, got {type(state).__name__}.")
    version = state.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{owner} state has no valid format_version (got {version!r}); was it saved by wandb_gradema?")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{owner} state has format_version {version}, written by a newer wandb_gradema; this version "
            f"reads formats up to {FORMAT_VERSION}. Upgrade wandb_gradema to load it."
        )
    state = dict(state)
    restart_detector = False
    if version == 1:
        check_state_keys(
            owner,
            state,
            ("format_version", "step", "skip_streak", "next_log", "tracker", "detector", "policy", "aggregator", "events"),
        )
        state["ticks"] = state["step"]
        state["cadence"] = {"next_log": state.pop("next_log")}
        state["events"] = [{**e, "confirmed": e.get("confirmed", False)} for e in state["events"]]
        state["policy"] = {"confirmed_quiet_until": -1, **state["policy"]}
        state.update(undecided_events=[], undecided_rows=[], internal_errors=0, format_version=2)
        version = 2
    if version == 2:  # the detector's statistics changed with format 3; nothing else did
        state["format_version"] = version = 3
        restart_detector = True
    if version == 3:  # the loss statistics changed with format 4, and non-finite runs are followed
        state["nonfinite"] = {"since": -1, "source": "", "params_since": -1, "params_told": False, "unrecorded": []}
        state["format_version"] = FORMAT_VERSION
        restart_detector = True
    check_state_keys(owner, state, STATE_KEYS)
    return state, restart_detector


class OptimizerStateHooks:
    """Carries a state inside ``optimizer.state_dict()`` and takes it back on load.

    Args:
        optimizer: the optimizer whose state-dict hooks are registered.
        save: returns the state to store (called by the optimizer's ``state_dict()``).
        load: restores a stored state (called by the optimizer's ``load_state_dict()``).

    Only weak references to the callbacks' owner are kept. ``torch.distributed.checkpoint``'s
    ``get_optimizer_state_dict`` rebuilds the dict from ``state`` and ``param_groups`` alone,
    which drops the entry: a warning says so, once, with what to do instead.
    """

    def __init__(
        self,
        optimizer: Any,
        save: Callable[[], dict[str, Any]],
        load: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self._save = weakref.WeakMethod(save)
        self._load = weakref.WeakMethod(load)
        self._warned = False
        self.handles = [
            optimizer.register_state_dict_post_hook(self._save_into),
            optimizer.register_load_state_dict_pre_hook(self._load_from),
        ]

    def remove(self) -> None:
        """Take both hooks off."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _save_into(self, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
        save = self._save()
        if save is None:
            return state
        if not self._warned and _called_from_dcp():
            self._warned = True
            warn(
                "wandb_gradema: torch.distributed.checkpoint's get_optimizer_state_dict keeps only "
                "'state' and 'param_groups', so the monitor's state is not in the optimizer's "
                "checkpoint. Save it beside: dcp.save({..., 'gradema': monitor.stateful()}) (and the "
                "same in dcp.load), or torch.save(monitor.state_dict(), ...)."
            )
        state[STATE_KEY] = save()
        return state

    def _load_from(self, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
        load = self._load()
        if load is None or STATE_KEY not in state:
            return state
        state = dict(state)
        load(state.pop(STATE_KEY))
        return state


class DCPStateful:
    """The monitor as one opaque entry of a ``torch.distributed.checkpoint`` state dict.

    Why: DCP plans a load from the structure of the target's ``state_dict()``, and the
    monitor's state has lists whose length changes (events, steps not yet decided); as one
    JSON string it always has the same structure.

    Example::

        dcp.save({"model": ..., "optim": ..., "gradema": monitor.stateful()}, checkpoint_id=path)
        dcp.load({"model": ..., "optim": ..., "gradema": monitor.stateful()}, checkpoint_id=path)
    """

    def __init__(self, state_dict: Callable[[], dict[str, Any]], load_state_dict: Callable[[Any], None]) -> None:
        self._state_dict = state_dict
        self._load_state_dict = load_state_dict

    def state_dict(self) -> dict[str, Any]:
        """``{"gradema": <the monitor's state as JSON>}``."""
        return {STATE_KEY: json.dumps(self._state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the monitor from what ``state_dict()`` wrote."""
        self._load_state_dict(json.loads(state[STATE_KEY]))


def _called_from_dcp() -> bool:
    """True when the optimizer's ``state_dict()`` was called by DCP's state-dict helpers."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_code.co_filename.replace("\\", "/").endswith("distributed/checkpoint/state_dict.py"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def event_from_state(data: Mapping[str, Any]) -> EscalationEvent:
    """An ``EscalationEvent`` from its ``asdict`` form (tuples come back as lists)."""
    return EscalationEvent(
        **{**data, "reasons": tuple(data["reasons"]), "anomaly_types": tuple(data["anomaly_types"])}
    )


def is_watched(optimizer: Any) -> bool:
    """True when a GradientMonitor's step hook is on ``optimizer``."""
    hooks = getattr(optimizer, "_optimizer_step_pre_hooks", {})
    return any(getattr(h, HOOK_MARK, False) for h in hooks.values())


def loaded_state(optimizer: Any) -> tuple[bool, Any]:
    """``(loaded, state)``: whether a checkpoint was loaded into the unwatched ``optimizer``,
    and the monitor state it carried (None if none). Taken once: a second call says ``(False, None)``."""
    try:
        state = _LOADED.pop(optimizer)
    except (KeyError, TypeError):
        return False, None
    return True, state


def remember_loads() -> None:
    """Wrap ``torch.optim.Optimizer.load_state_dict`` so an unwatched optimizer keeps our entry aside.

    Why a class-level wrap: the optimizer is built and loaded before ``watch()`` exists for it,
    so no instance hook can be in place. The wrap only reads the dict; it never changes what
    torch loads, and a failure of its own bookkeeping never reaches the caller. Idempotent.
    """
    import torch

    original = torch.optim.Optimizer.load_state_dict
    if getattr(original, "_gradema_remembers", False):
        return

    @functools.wraps(original)
    def load_state_dict(self: Any, state_dict: Any) -> None:
        entry = state_dict.get(STATE_KEY) if isinstance(state_dict, Mapping) else None
        original(self, state_dict)
        try:
            if not is_watched(self):
                _LOADED[self] = entry
        except Exception:  # noqa: BLE001 - bookkeeping never breaks a load
            pass

    load_state_dict._gradema_remembers = True  # type: ignore[attr-defined]
    torch.optim.Optimizer.load_state_dict = load_state_dict  # type: ignore[method-assign]
