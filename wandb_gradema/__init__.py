"""wandb_gradema: gradient drift tracking, judged and charted in W&B, from one line.

    monitor = wandb_gradema.watch(optimizer)

hooks ``optimizer.step()``: each step's gradient norm and health feed an EMA drift tracker and
an anomaly detector; an escalation policy decides when drift is real, turns on per-layer
telemetry, raises an alert and, inside a W&B sweep, prunes the run.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch

from . import _dist
from ._validate import reject_unknown
from .detector import AnomalyDetector, AnomalyReport, Observation
from .errors import EscalationError, GrademaError, GrademaWarning, RunPruned
from .escalation import EscalationEvent, EscalationPolicy
from .monitor import GradientMonitor
from .norms import health_score, total_grad_norm
from .options import DETECTOR_OPTIONS, options_from_config
from .tracker import DriftUpdate, GradientEMATracker

__version__ = "0.1.0"

__all__ = [
    "AnomalyDetector",
    "AnomalyReport",
    "DriftUpdate",
    "EscalationError",
    "EscalationEvent",
    "EscalationPolicy",
    "GradientEMATracker",
    "GradientMonitor",
    "GrademaError",
    "GrademaWarning",
    "Observation",
    "RunPruned",
    "__version__",
    "health_score",
    "total_grad_norm",
    "watch",
]

_MONITOR_OPTIONS = tuple(
    name for name in inspect.signature(GradientMonitor.__init__).parameters if name not in ("self", "optimizer", "run")
)


def watch(optimizer: torch.optim.Optimizer, *, run: Any = None, **options: Any) -> GradientMonitor:
    """Hook ``optimizer.step()`` to track, judge and chart gradient drift; returns the monitor.

    The optimizer stays the same object (a step pre-hook, not a proxy), so LR schedulers,
    ``GradScaler``, ``state_dict()`` and checkpoints keep working. ``monitor.remove()`` (or
    ``with watch(opt): ...``) unhooks.

    Args:
        optimizer: the ``torch.optim.Optimizer`` to watch.
        run: the W&B run to log to; default ``wandb.run`` at logging time. Without a run,
            tracking and escalation still work and one warning says logging is off.
        **options: see the README's option table. The common ones:
            ``model`` (names for per-layer telemetry), ``scaler`` (a ``GradScaler``: count the
            steps it skips), ``max_norm`` (clip in the same pass; the pre-clip norm is
            tracked), ``log_every`` (steps between logged rows; escalation steps are always
            logged), ``on_escalation`` (``"auto"``, ``"warn"``, ``"prune"``, ``"raise"`` or a
            callable), ``sensitivity`` (> 1 fires on less evidence), ``patience``,
            ``cooldown_steps``, ``telemetry_steps``. Any ``AnomalyDetector`` setting
            (``z_threshold``, ``stall_steps``...) is accepted too. Options found in the run's
            config (a ``gradema`` section, e.g. from sweep parameters) apply unless given here.

    Raises:
        TypeError: ``optimizer`` is not an optimizer, or an option is unknown or mistyped.
        ValueError: an option is out of range.

    Example:
        >>> import torch, wandb_gradema
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with wandb_gradema.watch(opt, model=model) as monitor:
        ...     model(torch.randn(8, 4)).pow(2).mean().backward()
        ...     opt.step()
        >>> monitor.step
        1
    """
    reject_unknown("watch()", options, _MONITOR_OPTIONS + DETECTOR_OPTIONS)
    live_run = run if run is not None else getattr(sys.modules.get("wandb"), "run", None)
    from_config, error = _dist.broadcast_from_main(_config_options(live_run))  # rank 0's, everywhere
    if error is not None:
        raise error
    try:
        merged = {**from_config, **options}
        _build_detector(merged, explicit=options)
        return GradientMonitor(optimizer, run=run, **merged)
    except (TypeError, ValueError) as exc:
        if from_config and any(f"`{k}`" in str(exc) for k in from_config if k not in options):
            raise type(exc)(f"{str(exc).rstrip('.')} (set in wandb.config['gradema']).") from None
        raise


def _config_options(run: Any) -> tuple[dict[str, Any], Exception | None]:
    """The run config's gradema options, or the error they raise (raised once all ranks have it)."""
    try:
        return options_from_config(getattr(run, "config", None)), None
    except (TypeError, ValueError) as exc:
        return {}, exc


def _build_detector(options: dict[str, Any], *, explicit: dict[str, Any]) -> None:
    """Replace detector settings in ``options`` by an ``AnomalyDetector`` built from them."""
    settings = {k: options.pop(k) for k in DETECTOR_OPTIONS if k in options}
    if not settings or "detector" in explicit:
        return  # an explicit detector wins over settings
    options["detector"] = AnomalyDetector(sensitivity=options.pop("sensitivity", 1.0), **settings)
