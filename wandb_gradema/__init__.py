"""wandb_gradema: gradient drift tracking, judged and charted in W&B, from one line.

    monitor = wandb_gradema.watch(optimizer)

hooks ``optimizer.step()``: each step's gradient norm and health feed an EMA drift tracker and
an anomaly detector; an escalation policy decides when drift is real, turns on per-layer
telemetry, raises an alert and, inside a W&B sweep, prunes the run.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _dist
from .detector import AnomalyDetector, AnomalyReport, Observation
from .errors import EscalationError, GrademaError, GrademaWarning, RunPruned
from .escalation import EscalationEvent, EscalationPolicy
from .monitor import GradientMonitor
from .norms import health_score, total_grad_norm
from .options import DETECTOR_OPTIONS, WATCH_OPTIONS, options_from_config
from .siblings import DirectoryStore, OptunaStore, SiblingStore, WandbStore, attach_siblings
from .tracker import DriftUpdate, GradientEMATracker
from .wandb_sink import current_run
from .wrappers import inner_scaler, unwrap_optimizer

__version__ = "0.2.0"

__all__ = [
    "DirectoryStore",
    "OptunaStore",
    "SiblingStore",
    "WandbStore",
    "attach_siblings",
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


def watch(optimizer: torch.optim.Optimizer, *, run: Any = None, **options: Any) -> GradientMonitor:
    """Hook ``optimizer.step()`` to track, judge and chart gradient drift; returns the monitor.

    The optimizer stays the same object (a step pre-hook, not a proxy), so LR schedulers,
    ``GradScaler``, ``state_dict()`` and checkpoints keep working. ``monitor.remove()`` (or
    ``with watch(opt): ...``) unhooks. A framework's wrapper (Hugging Face Accelerate's
    prepared optimizer) is watched through the optimizer inside it, with its GradScaler.

    Args:
        optimizer: the ``torch.optim.Optimizer`` to watch.
        run: the W&B run to log to; default ``wandb.run`` at logging time. Without a run,
            tracking and escalation still work and one warning says logging is off.
        **options: see the README's option table. The common ones:
            ``model`` (names for per-layer telemetry), ``scaler`` (a ``GradScaler``: count the
            steps it skips), ``max_norm`` (clip in the same pass; the pre-clip norm is
            tracked), ``log_every`` (steps between logged rows; escalation steps are always
            logged), ``sync_every`` (steps between decision steps), ``on_escalation``
            (``"auto"``, ``"warn"``, ``"prune"``, ``"raise"`` or a callable),
            ``sensitivity`` (> 1 fires on less evidence), ``patience``, ``cooldown_steps``,
            ``telemetry_steps``. Any ``AnomalyDetector`` setting (``z_threshold``,
            ``stall_steps``...) is accepted too. Options found in the run's config (a
            ``gradema`` section, e.g. from sweep parameters) apply unless given here.

    Raises:
        TypeError: ``optimizer`` is not an optimizer, ``run`` is not a W&B run, or an option is
            unknown (the message names the option it most likely meant) or mistyped.
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
    from ._validate import check_run, reject_unknown

    reject_unknown("watch()", options, ("run", *WATCH_OPTIONS))
    check_run(run)
    inner = unwrap_optimizer(optimizer)
    if inner is not optimizer and options.get("scaler") is None and inner_scaler(optimizer) is not None:
        options = {**options, "scaler": inner_scaler(optimizer)}
    from_config, error = _dist.broadcast_from_main(_config_options(current_run(run)))  # rank 0's, everywhere
    if error is not None:
        raise error
    if "detector" in options:  # an explicit detector wins over detector settings from the config
        from_config = {k: v for k, v in from_config.items() if k not in DETECTOR_OPTIONS}
    try:
        return GradientMonitor(inner, run=run, **{**from_config, **options})
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
