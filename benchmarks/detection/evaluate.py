"""Score a detector on labelled traces with the shared README's metrics, and print tables.

- divergence recall: fired strictly before ``t_div`` (all diverged runs, and those with
  ``t_div >= LATE``); "caught": fired at any step;
- lead time: ``t_div`` - fire step over diverged runs caught early (median, 10th percentile);
- collapse recall: fired at any step of a collapsed run;
- false-positive rate: fired at any step of a healthy run;
- compute saved: share of the failing (diverged + collapsed) runs' steps after the fire step,
  and the same share for healthy runs (compute wrongly killed).

Ambiguous runs are counted and excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .detectors import Detector
from .trace import Trace

LATE = 30  # t_div from which an early warning is possible at all


@dataclass(frozen=True)
class Metrics:
    """One detector's scores on one set of traces (rates in [0, 1], NaN when undefined)."""

    n_healthy: int
    n_diverged: int
    n_diverged_late: int
    n_collapsed: int
    n_ambiguous: int
    recall_before: float
    recall_before_late: float
    caught: float
    lead_median: float
    lead_p10: float
    collapse_recall: float
    false_positive: float
    compute_saved: float
    healthy_killed: float


def _rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def _saved(runs: Sequence[tuple[Trace, int | None]]) -> float:
    """Share of the runs' steps skipped by stopping right after the fire step."""
    total = sum(t.steps for t, _ in runs)
    skipped = sum(t.steps - fire - 1 for t, fire in runs if fire is not None)
    return skipped / total if total else float("nan")


def evaluate(traces: Sequence[Trace], detector: Detector) -> Metrics:
    """Run ``detector`` on every labelled trace and score it."""
    fired = [(t, detector(t)) for t in traces]
    by = {
        label: [(t, f) for t, f in fired if t.label == label]
        for label in ("healthy", "diverged", "collapsed")
    }
    div = [(t.t_div, f) for t, f in by["diverged"] if t.t_div is not None]  # (t_div, fire)
    early = [t_div - f for t_div, f in div if f is not None and f < t_div]  # lead times
    late = [(t_div, f) for t_div, f in div if t_div >= LATE]
    return Metrics(
        n_healthy=len(by["healthy"]),
        n_diverged=len(div),
        n_diverged_late=len(late),
        n_collapsed=len(by["collapsed"]),
        n_ambiguous=sum(t.label == "ambiguous" for t in traces),
        recall_before=_rate([f is not None and f < t_div for t_div, f in div]),
        recall_before_late=_rate([f is not None and f < t_div for t_div, f in late]),
        caught=_rate([f is not None for _, f in div]),
        lead_median=float(np.median(early)) if early else float("nan"),
        lead_p10=float(np.percentile(early, 10)) if early else float("nan"),
        collapse_recall=_rate([f is not None for _, f in by["collapsed"]]),
        false_positive=_rate([f is not None for _, f in by["healthy"]]),
        compute_saved=_saved(by["diverged"] + by["collapsed"]),
        healthy_killed=_saved(by["healthy"]),
    )


COLUMNS = (
    ("caught before t_div", "recall_before", "%"),
    ("(t_div>=30)", "recall_before_late", "%"),
    ("caught at all", "caught", "%"),
    ("median lead", "lead_median", "n"),
    ("p10 lead", "lead_p10", "n"),
    ("collapse recall", "collapse_recall", "%"),
    ("false positives", "false_positive", "%"),
    ("compute saved", "compute_saved", "%"),
    ("healthy killed", "healthy_killed", "%"),
)


def _cell(value: float, kind: str) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:.0%}" if kind == "%" else f"{value:.0f}"


def counts_line(split: str, m: Metrics) -> str:
    """One line with the split's class counts."""
    return (
        f"{split}: healthy {m.n_healthy}, diverged {m.n_diverged} ({m.n_diverged_late} with "
        f"t_div >= {LATE}), collapsed {m.n_collapsed}, ambiguous {m.n_ambiguous} (excluded)"
    )


def format_table(results: dict[str, Metrics]) -> str:
    """A Markdown table: one row per detector, one column per metric."""
    header = ["detector", *(c[0] for c in COLUMNS)]
    rows = [
        [name, *(_cell(getattr(m, attr), kind) for _, attr, kind in COLUMNS)] for name, m in results.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
