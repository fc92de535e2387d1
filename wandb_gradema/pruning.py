"""Pruning inside a run: the sweep metric a pruned run leaves behind (search hygiene).

W&B's bayes search scores a *failed* run by imputation (``metric.impute``, default ``worst``):
the worst finite value of the metric among the sweep's terminal runs, or **0.0 when no run has
one**. For a minimised loss 0.0 is the best possible score, so a sweep whose first runs are
pruned before logging a finite metric would pull the search towards the configs that diverge.
``SweepMetricPenalty`` makes a pruned run leave a finite, bounded value behind: by default the
first finite value the run logged (the untrained model's score: "no better than not training"),
or a fixed ``sweep_penalty``. It never makes a run look better than what it logged: a worse
finite value already logged is kept.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from ._validate import check_choice, check_float
from .errors import warn

__all__ = ["SweepGoal", "SweepMetricPenalty", "make_penalty", "pruned_metric_value"]

SweepGoal = Literal["minimize", "maximize"]
_GOALS = ("minimize", "maximize")


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def pruned_metric_value(
    *, first: float | None, current: Any, penalty: float | None, goal: SweepGoal
) -> float | None:
    """The sweep metric value a pruned run records, or None when there is nothing to go on.

    The base is ``penalty`` when given, else ``first`` (the first finite value the run logged),
    else the value at prune time if finite. The result is the worse (per ``goal``) of the base
    and the value at prune time: a pruned run never looks better than its base, and keeps a
    worse finite value it logged itself (that value is in its history anyway).

    Example:
        >>> pruned_metric_value(first=2.3, current=0.4, penalty=None, goal="minimize")
        2.3
        >>> pruned_metric_value(first=2.3, current=float("nan"), penalty=None, goal="minimize")
        2.3
        >>> pruned_metric_value(first=None, current=None, penalty=None, goal="minimize") is None
        True
    """
    now = _finite(current)
    base = penalty if penalty is not None else first if first is not None else now
    if base is None:
        return None
    if now is None:
        return base
    return max(base, now) if goal == "minimize" else min(base, now)


class SweepMetricPenalty:
    """Remembers a run's first finite sweep-metric value; writes the penalty when it is pruned.

    Args:
        metric: the sweep's ``metric.name``, as the training code logs it.
        goal: the sweep's ``metric.goal``.
        penalty: a fixed base value (e.g. ``ln(10)`` for a 10-class cross-entropy, ``0.0`` for an
            accuracy); None uses the first finite value the run logged.

    The first value is read from the run's summary on the monitor's logging steps (one local
    call each) until one is seen.
    """

    def __init__(self, metric: str, goal: SweepGoal = "minimize", penalty: float | None = None) -> None:
        if not isinstance(metric, str) or not metric:
            raise TypeError(f"`sweep_metric` must be a non-empty string or None, got {metric!r}.")
        goal = check_choice("sweep_goal", goal, _GOALS)  # type: ignore[assignment]
        penalty = check_float("sweep_penalty", penalty, allow_none=True)
        self.metric = metric
        self.goal: SweepGoal = goal
        self.penalty = penalty
        self.first: float | None = None

    def observe(self, run: Any) -> None:
        """Read the metric from ``run``'s summary once, if no finite value was seen yet."""
        if self.first is not None or run is None:
            return
        try:
            self.first = _finite(run.summary.get(self.metric))
        except Exception:  # noqa: BLE001 - a summary that cannot be read tells us nothing
            return

    def record(self, sink: Any) -> float | None:
        """Write the pruned run's metric value into its summary through ``sink``; returns it.

        ``sink`` is the monitor's ``WandbSink``. Also writes ``<prefix>/sweep_metric_at_prune``
        (what the summary held, as text when not finite) and ``<prefix>/sweep_penalty`` (what
        was written). Warns, and writes nothing, when there is no value to write.
        """
        run = sink.run
        if run is None:
            return None
        self.observe(run)
        try:
            current = run.summary.get(self.metric)
        except Exception:  # noqa: BLE001 - W&B must never stop the prune
            current = None
        value = pruned_metric_value(first=self.first, current=current, penalty=self.penalty, goal=self.goal)
        if value is None:
            warn(
                f"wandb_gradema: the run was pruned before logging a finite `{self.metric}`; the "
                "sweep will impute its score (bayes: 0.0 when no run has a finite value, the best "
                "possible loss). Pass sweep_penalty=... to record a bounded penalty instead."
            )
            return None
        at_prune = _finite(current)
        sink.update_summary(
            {
                sink.key("sweep_metric_at_prune"): at_prune if at_prune is not None else str(current),
                sink.key("sweep_penalty"): value,
                self.metric: value,
            }
        )
        return value


def make_penalty(metric: str | None, goal: Any, penalty: Any) -> SweepMetricPenalty | None:
    """Validate the three ``watch()`` options; a ``SweepMetricPenalty``, or None without a metric.

    Raises:
        TypeError, ValueError: an option is mistyped or out of range (named in the message).
    """
    if metric is None:
        check_choice("sweep_goal", goal, _GOALS)
        if penalty is not None:
            raise ValueError("`sweep_penalty` needs `sweep_metric`: name the metric it stands in for.")
        return None
    return SweepMetricPenalty(metric, goal, penalty)
