"""What the offline sweep runner prints about the sibling judgement, from its ended trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["sibling_lines"]


def sibling_lines(trials: Sequence[Any], budget_key: str, metric: str | None, goal: str) -> list[str]:
    """The issue-17 table for a finished sweep: what was stopped, by whom, and when.

    A pruned run's would-be end is unknown in a live sweep, so "good runs stopped" can only be
    measured in replays (``python -m benchmarks.sweep``); here: runs stopped by the sibling
    judgement and by the per-run rules, how many by half their budget, the steps saved, and
    whether the best finished run was kept.
    """
    from ..sweep.trial import gradema_value

    pruned = [t for t in trials if t.outcome == "pruned"]
    by_siblings = [t for t in pruned if str(t.note).startswith("Behind its healthy siblings")]
    early = [t for t in pruned if t.pruned_step is not None and t.budget(budget_key) and t.pruned_step < t.budget(budget_key) // 2]
    budget = sum(t.budget(budget_key) or 0 for t in trials)
    saved = sum(max((t.budget(budget_key) or 0) - (t.steps or 0), 0) for t in pruned)
    compared = [gradema_value(t.run.summary, "siblings_healthy") for t in trials if t.run is not None]
    most = max((c for c in compared if isinstance(c, (int, float))), default=0)
    rows = [
        ("stopped against healthy siblings", f"{len(by_siblings)} of {len(trials)}"),
        ("stopped by the per-run rules", f"{len(pruned) - len(by_siblings)}"),
        ("stopped by half their budget", f"{len(early)} of {len(pruned)}"),
        ("steps saved", f"{saved:,} of {budget:,} ({saved / budget:.0%})" if budget else "-"),
        ("most healthy siblings a run was compared with", str(int(most))),
    ]
    width = max(len(k) for k, _ in rows)
    return ["sweep-aware pruning:", *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
