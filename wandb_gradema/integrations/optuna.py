"""Optuna: a gradient drift escalation prunes the trial, as it prunes a run in a W&B sweep.

    def objective(trial):
        ...
        with watch_trial(trial, optimizer, model=model):
            train()   # an escalation raises optuna.TrialPruned from optimizer.step()

Needs ``pip install "wandb_gradema[optuna]"``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

from .. import watch
from ..errors import warn
from ..escalation import EscalationEvent
from ..monitor import GradientMonitor
from ..wandb_sink import PRUNED_TAG
from ._common import check_options
from ._imports import OptionalImport

with OptionalImport("optuna", extra="optuna") as _imports:
    import optuna
    from optuna.pruners import BasePruner

if TYPE_CHECKING:
    import optuna
    from optuna.pruners import BasePruner

__all__ = ["TRIAL_ATTR", "GradientDriftPruner", "watch_trial"]

#: The trial user attribute an escalation writes: ``{"step", "reason", "types"}``.
TRIAL_ATTR = "gradema_pruned"

_Pruner: type = BasePruner if _imports.available else object


def watch_trial(
    trial: optuna.Trial,
    optimizer: torch.optim.Optimizer,
    *,
    raise_pruned: bool = True,
    fail_run: bool = True,
    siblings: bool = True,
    **options: Any,
) -> GradientMonitor:
    """``wandb_gradema.watch()`` for one Optuna trial: an escalation prunes the trial.

    The same monitor and detector as ``watch()``; only the action differs. On the first
    escalation it records ``{"step", "reason", "types"}`` in the trial's user attribute
    ``TRIAL_ATTR`` (the study shows why; ``GradientDriftPruner`` reads it), marks the W&B run
    pruned (``gradema/pruned``, ``gradema/pruned_step``, ``gradema/prune_reason`` in the summary,
    the ``gradema:pruned`` tag) and makes the run end *failed* when it is finished, which
    optuna-integration's ``WeightsAndBiasesCallback(as_multirun=True)`` does after the trial.
    Then it raises ``optuna.TrialPruned`` from ``optimizer.step()`` (the step's update is
    skipped), or, with ``raise_pruned=False``, lets the loop run on until its own
    ``trial.should_prune()`` check, answered by a ``GradientDriftPruner``.

    ``optuna.TrialPruned`` is an ``Exception``: a broad ``except Exception`` in the training loop
    would swallow it.

    Args:
        trial: the trial being evaluated.
        optimizer: the optimizer to watch.
        raise_pruned: raise ``optuna.TrialPruned`` at once (default), or only record.
        fail_run: make the W&B run end failed. Set False when one run is shared by the whole
            study (``WeightsAndBiasesCallback(as_multirun=False)``).
        siblings: judge the trial against the study's healthy finished trials too
            (``wandb_gradema.siblings``): its compact record rides in the trial's user attribute
            ``gradema_sibling`` (the study's own storage); the siblings are read once, here.
        **options: any ``watch()`` option (``run``, ``model``, ``sensitivity``...) except
            ``on_escalation``.

    Returns:
        The ``GradientMonitor``; use it as a context manager or call ``remove()`` at the end.

    Raises:
        ImportError: ``optuna`` is not installed.
        TypeError, ValueError: a bad argument or option (as ``watch()``).
    """
    _imports.check("watch_trial()")
    if not callable(getattr(trial, "set_user_attr", None)):
        raise TypeError(f"`trial` must be an optuna.Trial, got {type(trial).__name__}.")
    for name, value in (("raise_pruned", raise_pruned), ("fail_run", fail_run), ("siblings", siblings)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}.")
    check_options("watch_trial()", options, {"on_escalation": "an escalation prunes the trial"})
    pruning = _PruneTrial(trial, raise_pruned=raise_pruned, fail_run=fail_run)
    pruning.monitor = watch(optimizer, on_escalation=pruning, **options)
    study = getattr(trial, "study", None)
    if siblings and study is not None:
        from ..siblings import OptunaStore, SweepPeers

        params = {k: v for k, v in trial.params.items() if isinstance(v, (int, float, str, bool))}
        peers = SweepPeers(OptunaStore(study, trial), str(trial.number), params, background=False)
        pruning.monitor.decisions.peers = peers
    return pruning.monitor


class GradientDriftPruner(_Pruner):
    """An Optuna pruner: prunes trials whose gradients drifted, else asks ``pruner``.

    Why: with ``watch_trial(..., raise_pruned=False)`` the training loop keeps its usual
    ``trial.report(...)`` / ``if trial.should_prune(): raise optuna.TrialPruned()`` pattern, and
    the study's pruner decides; this one says yes once the trial's monitor escalated (the
    ``TRIAL_ATTR`` user attribute), and defers to the wrapped pruner otherwise.

    Args:
        pruner: the pruner to ask for trials that did not escalate (e.g. ``MedianPruner()``);
            None prunes only on escalation.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(pruner=GradientDriftPruner(optuna.pruners.MedianPruner()))
    """

    def __init__(self, pruner: BasePruner | None = None) -> None:
        _imports.check("GradientDriftPruner")
        if pruner is not None and not isinstance(pruner, BasePruner):
            raise TypeError(
                f"`pruner` must be an optuna.pruners.BasePruner or None, got {type(pruner).__name__}."
            )
        self._pruner = pruner

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.user_attrs.get(TRIAL_ATTR) is not None:
            return True
        return self._pruner.prune(study, trial) if self._pruner is not None else False


class _PruneTrial:
    """The monitor's ``on_escalation``: record on the trial and the run, then prune."""

    def __init__(self, trial: optuna.Trial, *, raise_pruned: bool, fail_run: bool) -> None:
        self.trial = trial
        self.raise_pruned = raise_pruned
        self.fail_run = fail_run
        self.monitor: GradientMonitor | None = None

    def __call__(self, event: EscalationEvent) -> None:
        monitor = self.monitor
        if monitor is None:  # set right after watch() returns, before any step can escalate
            return
        if not event.confirmed:  # a prune is irreversible: the same bar as in a W&B sweep
            warn(f"wandb_gradema: gradient drift escalated at step {event.step} (trial not pruned: "
                 f"the evidence is below the prune bar so far): {event.reason}")
            return
        step = monitor.step - 1  # the step in flight, as a pruned W&B run reports it
        if self.trial.user_attrs.get(TRIAL_ATTR) is None:
            self.trial.set_user_attr(
                TRIAL_ATTR, {"step": step, "reason": event.reason, "types": list(event.anomaly_types)}
            )
            self._mark_run(monitor, step, event)
            peers = monitor.decisions.peers
            if peers is not None:  # the trial's sibling record: pruned, while it can still be written
                peers.finish("pruned", None, event.anomaly_types[0] if event.anomaly_types else "")
        if self.raise_pruned:
            raise optuna.TrialPruned(f"Trial pruned at step {step}: {event.reason}")

    def _mark_run(self, monitor: GradientMonitor, step: int, event: EscalationEvent) -> None:
        sink = monitor.sink
        sink.mark_pruned(step, event, alert=monitor.alerts, what="Trial")
        run = sink.run
        if run is not None and self.fail_run:
            _fail_when_finished(run)


def _fail_when_finished(run: Any) -> None:
    """Make ``run.finish()`` (and ``wandb.finish()``) end the run failed, exit code 1.

    Why: W&B has no "mark failed" call short of finishing, and finishing at once would make
    ``WeightsAndBiasesCallback`` (which finishes ``wandb.run`` after each trial, or starts a new
    run when there is none) log the pruned trial into a fresh, "finished" run. This instance
    patch leaves the run open until its owner finishes it, with a non-zero exit code (and puts
    back the ``gradema:pruned`` tag, which that callback overwrites).
    A run that is never finished explicitly exits with the process's status instead.
    """
    finish = run.finish
    if getattr(finish, "_gradema_fails", False):
        return

    @functools.wraps(finish)
    def finish_failed(*args: Any, **kwargs: Any) -> Any:
        try:
            tags = tuple(run.tags or ())
            if PRUNED_TAG not in tags:  # WeightsAndBiasesCallback replaces the tags just before
                run.tags = (*tags, PRUNED_TAG)
        except Exception:  # noqa: BLE001 - a tag must never keep the run from finishing
            pass
        if args:
            args = (args[0] or 1, *args[1:])
        else:
            kwargs["exit_code"] = kwargs.get("exit_code") or 1
        return finish(*args, **kwargs)

    finish_failed._gradema_fails = True  # type: ignore[attr-defined]
    run.finish = finish_failed
