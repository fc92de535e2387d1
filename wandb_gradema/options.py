"""The options of ``watch()``: one table, checked in one place, and read from ``wandb.config``.

``WatchOptions`` holds every monitor option with its default and validates them all before
anything is hooked. A ``gradema`` section in the run config (``config["gradema"] =
{"sensitivity": 2}``, which is what nested sweep parameters produce) or dotted keys
(``config["gradema.sensitivity"]``) set options too; arguments given to ``watch()`` win.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from ._validate import check_choice, check_float, check_int, reject_unknown
from .detector import AnomalyDetector
from .escalation import EscalationEvent

__all__ = [
    "CONFIGURABLE",
    "CONFIG_SECTION",
    "DETECTOR_OPTIONS",
    "OnEscalation",
    "WATCH_OPTIONS",
    "WatchOptions",
    "options_from_config",
]

OnEscalation = Literal["auto", "warn", "prune", "raise"] | Callable[[EscalationEvent], Any]
ACTIONS = ("auto", "warn", "prune", "raise")
SWEEP_GOALS = ("minimize", "maximize")
CONFIG_SECTION = "gradema"


@dataclass(frozen=True)
class WatchOptions:
    """Every ``watch()`` option (the README's option table), validated on construction.

    Raises:
        TypeError: an option has the wrong type.
        ValueError: an option is out of range (the message names it and what is allowed).
    """

    model: torch.nn.Module | None = None
    scaler: Any = None
    max_norm: float | None = None
    log_every: int | None = None
    sync_every: int | None = None
    on_escalation: OnEscalation = "auto"
    alerts: bool = True
    name: str | None = None
    ema_decay: float = 0.99
    eps: float = 1e-8
    sensitivity: float = 1.0
    patience: int = 3
    cooldown_steps: int = 100
    telemetry_steps: int = 50
    max_skipped_steps: int = 25
    detector: AnomalyDetector | None = None
    save_with_optimizer: bool = True
    sharded: bool | None = None
    sweep_metric: str | None = None
    sweep_goal: Literal["minimize", "maximize"] = "minimize"
    sweep_penalty: float | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module or None, got {type(self.model).__name__}.")
        if self.scaler is not None and not callable(getattr(self.scaler, "step", None)):
            raise TypeError(f"`scaler` must be a torch.amp.GradScaler or None, got {type(self.scaler).__name__}.")
        check = object.__setattr__  # frozen: store the normalised values
        check(self, "max_norm", check_float("max_norm", self.max_norm, low=0.0, low_open=True, allow_none=True))
        check(self, "log_every", check_int("log_every", self.log_every, minimum=1, allow_none=True))
        check(self, "sync_every", check_int("sync_every", self.sync_every, minimum=1, allow_none=True))
        if not callable(self.on_escalation):
            check_choice("on_escalation", self.on_escalation, ACTIONS)
        for flag in ("alerts", "save_with_optimizer"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"`{flag}` must be a bool, got {type(getattr(self, flag)).__name__}.")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"`name` must be a string or None, got {type(self.name).__name__} {self.name!r}.")
        if self.name is not None and (not self.name or "/" in self.name):
            raise ValueError(f"`name` must be a non-empty string without '/', got {self.name!r}.")
        check(self, "ema_decay", check_float("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True))
        check(self, "eps", check_float("eps", self.eps, low=0.0, low_open=True))
        check(self, "sensitivity", check_float("sensitivity", self.sensitivity, low=0.0, low_open=True))
        for count, low in (("patience", 1), ("cooldown_steps", 0), ("telemetry_steps", 0), ("max_skipped_steps", 1)):
            check(self, count, check_int(count, getattr(self, count), minimum=low))
        if self.sharded is not None and not isinstance(self.sharded, bool):
            raise TypeError(f"`sharded` must be a bool or None, got {type(self.sharded).__name__}.")
        if self.detector is not None and not isinstance(self.detector, AnomalyDetector):
            raise TypeError(f"`detector` must be an AnomalyDetector or None, got {type(self.detector).__name__}.")
        if self.detector is not None and self.sensitivity != 1.0:
            raise ValueError("Pass `sensitivity` to the AnomalyDetector you give as `detector`, not to watch().")
        if self.sweep_metric is not None and (not isinstance(self.sweep_metric, str) or not self.sweep_metric):
            raise TypeError(f"`sweep_metric` must be a non-empty string or None, got {self.sweep_metric!r}.")
        check_choice("sweep_goal", self.sweep_goal, SWEEP_GOALS)
        check(self, "sweep_penalty", check_float("sweep_penalty", self.sweep_penalty, allow_none=True))
        if self.sweep_metric is None and self.sweep_penalty is not None:
            raise ValueError("`sweep_penalty` needs `sweep_metric`: name the metric it stands in for.")


#: AnomalyDetector settings ``watch()`` and a run config accept by name; they build its detector.
DETECTOR_OPTIONS = tuple(
    n for n in inspect.signature(AnomalyDetector.__init__).parameters if n not in ("self", "sensitivity")
)

#: Every keyword ``watch()`` accepts besides ``run``.
WATCH_OPTIONS = tuple(f.name for f in fields(WatchOptions)) + DETECTOR_OPTIONS

#: Options a run config may set (objects such as ``model`` or ``scaler`` cannot come from YAML).
CONFIGURABLE = (
    "log_every",
    "sync_every",
    "on_escalation",
    "alerts",
    "max_norm",
    "ema_decay",
    "eps",
    "sensitivity",
    "patience",
    "cooldown_steps",
    "telemetry_steps",
    "max_skipped_steps",
    "sweep_metric",
    "sweep_goal",
    "sweep_penalty",
    *DETECTOR_OPTIONS,
)


def build_options(options: Mapping[str, Any], *, explicit: Mapping[str, Any] | None = None) -> WatchOptions:
    """``WatchOptions`` from ``watch()`` keywords; detector settings build the detector.

    An explicit ``detector`` wins over detector settings (those from a run config are dropped).

    Raises:
        TypeError: an option is unknown or mistyped.
        ValueError: an option is out of range.
    """
    reject_unknown("watch()", options, WATCH_OPTIONS)
    explicit = options if explicit is None else explicit
    monitor = {k: v for k, v in options.items() if k not in DETECTOR_OPTIONS}
    settings = {k: v for k, v in options.items() if k in DETECTOR_OPTIONS}
    if settings and "detector" not in explicit:
        sensitivity = monitor.pop("sensitivity", 1.0)
        monitor["detector"] = AnomalyDetector(sensitivity=sensitivity, **settings)
    return WatchOptions(**monitor)


def options_from_config(config: Any) -> dict[str, Any]:
    """The gradema options found in a W&B run config (empty when there are none).

    Raises:
        TypeError: the section is not a mapping, or names an unknown option.
    """
    if config is None:
        return {}
    try:
        items = dict(config.items()) if hasattr(config, "items") else {}
    except Exception:  # noqa: BLE001 - a config that cannot be read carries no options
        return {}
    found: dict[str, Any] = {}
    section = items.get(CONFIG_SECTION)
    if section is not None:
        if not isinstance(section, Mapping):
            raise TypeError(
                f"wandb.config[{CONFIG_SECTION!r}] must be a mapping of gradema options, "
                f"got {type(section).__name__}."
            )
        found.update(section)
    for key, value in items.items():
        for sep in (".", "/"):
            if key.startswith(CONFIG_SECTION + sep):
                found[key[len(CONFIG_SECTION) + 1 :]] = value
    reject_unknown(f"wandb.config[{CONFIG_SECTION!r}]", found, CONFIGURABLE)
    return found
