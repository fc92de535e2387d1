"""What the offline sweep runner prints: progress lines, the final table, the compute saved.

Pure functions of the trials: no I/O beyond returning strings and dicts, so the table can be
tested on recorded trials.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .trial import Trial, flatten_params

__all__ = ["SweepTotals", "fmt", "progress_line", "result_rows", "summary_table", "totals"]

_WHY_WIDTH = 48


def fmt(value: Any) -> str:
    """A compact cell: floats with 3 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    if isinstance(value, int) and abs(value) >= 1_000_000:
        return f"{value:.3g}"
    return str(value)


def _short(text: str, width: int = _WHY_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _steps(trial: Trial, budget_key: str) -> str:
    budget = trial.budget(budget_key)
    return f"{fmt(trial.steps)}/{fmt(budget)}"


@dataclass(frozen=True)
class SweepTotals:
    """Counts over a sweep: outcomes, optimizer steps run, and steps pruning did not spend."""

    runs: int
    outcomes: dict[str, int]
    steps_run: int
    steps_budget: int
    steps_saved: int

    @property
    def saved_share(self) -> float:
        return self.steps_saved / self.steps_budget if self.steps_budget else 0.0


def totals(trials: Sequence[Trial], budget_key: str) -> SweepTotals:
    """Outcome counts; steps run and budgeted over runs whose both are known; steps saved =
    budget minus steps run, summed over pruned runs."""
    outcomes: dict[str, int] = {}
    run = budget = saved = 0
    for t in trials:
        outcomes[t.outcome or "running"] = outcomes.get(t.outcome or "running", 0) + 1
        steps, limit = t.steps, t.budget(budget_key)
        if steps is None or limit is None:
            continue
        run += steps
        budget += limit
        if t.outcome == "pruned":
            saved += max(limit - steps, 0)
    return SweepTotals(len(trials), outcomes, run, budget, saved)


def progress_line(
    trial: Trial, total: int, columns: Sequence[str], metric: str | None, goal: str, budget_key: str
) -> str:
    """One line when a run starts (its searched parameters) or ends (outcome, why, best
    metric, steps, seconds)."""
    head = f"[{trial.number:>{len(str(total))}}/{total}] {trial.run_id}"
    if trial.outcome is None:
        flat = flatten_params(trial.params)
        params = " ".join(f"{k}={fmt(flat.get(k))}" for k in columns)
        return f"{head} start     {params}"
    parts = [f"{head} {trial.outcome:<9}"]
    if trial.outcome == "pruned":
        parts.append(f"at step {trial.pruned_step}: {_short(trial.note, 70)}")
    elif trial.note:
        parts.append(_short(trial.note, 70))
    if metric is not None:
        parts.append(f"best {metric} {fmt(trial.best(metric, goal))}")
    parts.append(f"steps {_steps(trial, budget_key)}")
    parts.append(f"{trial.seconds:.1f}s")
    return "  ".join(parts)


def result_rows(
    trials: Sequence[Trial], columns: Sequence[str], metric: str | None, goal: str, budget_key: str
) -> list[dict[str, Any]]:
    """One plain dict per trial: what the table shows, also written to ``results.json``."""
    rows = []
    for t in trials:
        flat = flatten_params(t.params)
        rows.append(
            {
                "number": t.number,
                "run_id": t.run_id,
                "params": {c: flat.get(c) for c in columns},
                "outcome": t.outcome,
                "wandb_state": t.wandb_state,
                "exit_code": t.exit_code,
                "pruned_step": t.pruned_step,
                "note": t.note,
                "best": t.best(metric, goal),
                "last": t.last(metric),
                "steps": t.steps,
                "budget": t.budget(budget_key),
                "seconds": round(t.seconds, 2),
                "path": str(t.run.path) if t.run is not None else None,
            }
        )
    return rows


def summary_table(
    trials: Sequence[Trial], columns: Sequence[str], metric: str | None, goal: str, budget_key: str
) -> str:
    """The end-of-sweep table, its totals and the best finished run, as text."""
    header = ["#", "run", *columns, "state", "pruned@", "why", f"best {metric or 'metric'}", "last", "steps"]
    body = []
    for t in trials:
        flat = flatten_params(t.params)
        body.append(
            [
                str(t.number),
                t.run_id,
                *(fmt(flat.get(c)) for c in columns),
                t.outcome or "running",
                fmt(t.pruned_step),
                _short(t.note),
                fmt(t.best(metric, goal)),
                fmt(t.last(metric)),
                _steps(t, budget_key),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))

    tot = totals(trials, budget_key)
    counts = ", ".join(f"{n} {name}" for name, n in sorted(tot.outcomes.items(), key=lambda kv: -kv[1]))
    lines.append("")
    lines.append(f"{tot.runs} runs: {counts}")
    lines.append(
        f"optimizer steps run: {tot.steps_run:,} of {tot.steps_budget:,} budgeted; pruning saved "
        f"{tot.steps_saved:,} steps ({tot.saved_share:.0%} of the budget)"
    )
    would = [(t, int(m.group(1))) for t in trials if t.outcome == "finished"
             for m in [re.match(r"would prune at step (\d+)", t.note)] if m]
    if would:
        spared = sum(max((t.budget(budget_key) or 0) - (step + 1), 0) for t, step in would)
        lines.append(
            f"with pruning on, {len(would)} finished run(s) would have stopped at a prune-grade escalation "
            f"(see 'why'): {spared:,} steps saved"
        )
    best = _best_finished(trials, metric, goal)
    if best is not None:
        params = " ".join(f"{c}={fmt(flatten_params(best.params).get(c))}" for c in columns)
        lines.append(f"best finished run: {best.run_id}  {params}  {metric} {fmt(best.best(metric, goal))}")
    elif metric is not None:
        lines.append(f"no finished run logged a finite {metric}")
    return "\n".join(lines)


def _best_finished(trials: Sequence[Trial], metric: str | None, goal: str) -> Trial | None:
    """The finished run with the best metric value (what the search counts), or None."""
    sign = 1.0 if goal == "minimize" else -1.0
    scored: list[tuple[float, int, Trial]] = []
    for t in trials:
        value = t.best(metric, goal) if t.outcome == "finished" else None
        if value is not None:
            scored.append((sign * value, t.number, t))
    return min(scored)[2] if scored else None
