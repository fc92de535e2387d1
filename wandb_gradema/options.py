"""Options from ``wandb.config``: a sweep can tune or fix the monitor's settings.

A ``gradema`` section in the run config (``config["gradema"] = {"sensitivity": 2}``, which is
what nested sweep parameters produce) or dotted keys (``config["gradema.sensitivity"]``) set
options; arguments given to ``watch()`` win over both.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ._validate import reject_unknown
from .detector import AnomalyDetector

__all__ = ["CONFIG_SECTION", "DETECTOR_OPTIONS", "CONFIGURABLE", "options_from_config"]

CONFIG_SECTION = "gradema"

#: watch() options a run config may set (objects such as ``model`` or ``scaler`` cannot).
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
)

#: AnomalyDetector settings a run config may set; they build the monitor's detector.
DETECTOR_OPTIONS = tuple(
    n for n in inspect.signature(AnomalyDetector.__init__).parameters if n not in ("self", "sensitivity")
)


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
    reject_unknown(f"wandb.config[{CONFIG_SECTION!r}]", found, CONFIGURABLE + DETECTOR_OPTIONS)
    return found
