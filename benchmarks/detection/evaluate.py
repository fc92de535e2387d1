"""Score a detector on labelled traces with the shared README's metrics, and print tables.

- divergence recall: fired strictly before ``t_div`` (all diverged runs, and those with
  ``t_div >= LATE``); "caught": fired at any step;
- lead time: ``t_div`` - fire step over diverged runs caught early (median, 10th percentile);
- collapse recall: fired at any step of a collapsed run;
- false-positive rate: fired at any step of a healthy run;
- compute saved: share of the failing (diverged + collapsed) runs' steps after the fire step,
  and the same share for healthy runs (compute wrongly killed).

A detector fires twice over: its first escalation and its first prune (the first *confirmed*
escalation, the only kind the monitor prunes on). Every metric is computed for both
(``Metrics.escalate``, ``Metrics.prune``); a reference rule that only fires prunes where it
fires. Ambiguous runs are counted and excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .detectors import Detector, Firing, fire
from .trace import Trace

LATE = 30  # t_div from which an early warning is possible at all


@dataclass(frozen=True)
class Scores:
    """One action's scores (escalate or prune) on one set of traces (rates in [0, 1], NaN when
    undefined)."""

    recall_before: float
    recall_before_late: float
    caught: float
    lead_median: float
    lead_p10: float
    collapse_recall: float
    false_positive: float
    compute_saved: float
    healthy_killed: float


@dataclass(frozen=True)
class Metrics:
    """One detector's scores on one set of traces: class counts, then per action."""

    n_healthy: int
    n_diverged: int
    n_diverged_late: int
    n_collapsed: int
    n_ambiguous: int
    escalate: Scores
    prune: Scores


def _rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def _saved(runs: Sequence[tuple[Trace, int | None]]) -> float:
    """Share of the runs' steps skipped by stopping right after the fire step."""
    total = sum(t.steps for t, _ in runs)
    skipped = sum(t.steps - fire - 1 for t, fire in runs if fire is not None)
    return skipped / total if total else float("nan")


def _scores(fired: Sequence[tuple[Trace, int | None]]) -> Scores:
    by = {
        label: [(t, f) for t, f in fired if t.label == label] for label in ("healthy", "diverged", "collapsed")
    }
    div = [(t.t_div, f) for t, f in by["diverged"] if t.t_div is not None]  # (t_div, fire)
    early = [t_div - f for t_div, f in div if f is not None and f < t_div]  # lead times
    late = [(t_div, f) for t_div, f in div if t_div >= LATE]
    return Scores(
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


def evaluate(traces: Sequence[Trace], detector: Detector) -> Metrics:
    """Run ``detector`` on every labelled trace and score its escalations and prunes."""
    return score(traces, [fire(detector, t) for t in traces])


def score(traces: Sequence[Trace], firings: Sequence[Firing]) -> Metrics:
    """Score precomputed firings (one per trace, in order)."""
    labels = [t.label for t in traces]
    div = [t for t in traces if t.label == "diverged" and t.t_div is not None]
    return Metrics(
        n_healthy=labels.count("healthy"),
        n_diverged=len(div),
        n_diverged_late=sum(t.t_div >= LATE for t in div if t.t_div is not None),
        n_collapsed=labels.count("collapsed"),
        n_ambiguous=labels.count("ambiguous"),
        escalate=_scores([(t, f.escalated) for t, f in zip(traces, firings)]),
        prune=_scores([(t, f.pruned) for t, f in zip(traces, firings)]),
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


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_table(results: dict[str, Metrics], *, prunes: bool = True) -> str:
    """A Markdown table: one row per detector and action, one column per metric.

    Each detector gets an "escalated" row and, when ``prunes`` and its prunes differ from its
    escalations anywhere, a "pruned" row.
    """
    header = ["detector", *(c[0] for c in COLUMNS)]
    rows = []
    for name, m in results.items():
        rows.append([name, *(_cell(getattr(m.escalate, attr), kind) for _, attr, kind in COLUMNS)])
        if prunes and m.prune != m.escalate:
            rows.append([f"{name}, pruned", *(_cell(getattr(m.prune, attr), kind) for _, attr, kind in COLUMNS)])
    return _markdown(header, rows)


def _lead(diverged: list[tuple[int, Firing]], kind: str) -> str:
    """Median lead (t_div - fire step) over the runs caught before t_div, by ``kind`` of firing."""
    leads = [td - getattr(f, kind) for td, f in diverged if getattr(f, kind) is not None and getattr(f, kind) < td]
    return f"{np.median(leads):.0f}" if leads else "–"


FAMILY_COLUMNS = (
    "family (h/d/c)", "healthy escalated", "of which unexplained", "healthy pruned", "diverged caught", "caught early (t_div>=30)",
    "diverged pruned", "pruned early (t_div>=30)", "median lead esc / prune", "collapse esc / prune",
)  # fmt: skip


def format_families(traces: Sequence[Trace], firings: Sequence[Firing]) -> str:
    """A Markdown table with one row per scenario family: escalations and prunes side by side.

    Rates are "k/n" counts (a family holds a handful of runs); "–" where the family has none.
    A healthy run's escalation is *unexplained* when it would escalate without the excursion
    rules too (``Firing.unexplained``): one escalated only on a blow-up of its own loss or
    gradient norm (5x its start, 10x its norms, 3 steps in a row) was told what happened.
    """
    families: dict[str, list[int]] = {}
    for i, t in enumerate(traces):
        families.setdefault(t.family, []).append(i)

    def frac(hits: list[bool]) -> str:
        return f"{sum(hits)}/{len(hits)}" if hits else "–"

    rows = []
    for family, idx in families.items():
        runs = [(traces[i], firings[i]) for i in idx]
        h = [f for t, f in runs if t.label == "healthy"]
        d = [(t.t_div, f) for t, f in runs if t.label == "diverged" and t.t_div is not None]
        c = [f for t, f in runs if t.label == "collapsed"]
        late = [(td, f) for td, f in d if td >= LATE]


        rows.append([
            f"{family} ({len(h)}/{len(d)}/{len(c)})",
            frac([f.escalated is not None for f in h]),
            frac([f.unexplained is not None for f in h]),
            frac([f.pruned is not None for f in h]),
            frac([f.escalated is not None for _, f in d]),
            frac([f.escalated is not None and f.escalated < td for td, f in late]),
            frac([f.pruned is not None for _, f in d]),
            frac([f.pruned is not None and f.pruned < td for td, f in late]),
            f"{_lead(d, 'escalated')} / {_lead(d, 'pruned')}" if d else "–",
            f"{frac([f.escalated is not None for f in c])} / {frac([f.pruned is not None for f in c])}" if c else "–",
        ])  # fmt: skip
    return _markdown(list(FAMILY_COLUMNS), rows)


#: A blow-up (issue 18): this many losses in a row at least ``BLOWUP_FACTOR`` x the first loss;
#: it must escalate within ``BLOWUP_WITHIN`` steps of the first of them.
BLOWUP_RUN = 3
BLOWUP_FACTOR = 5.0
BLOWUP_WITHIN = 5
#: The detector's default warm-up (``AnomalyDetector(warmup_steps=20)``).
WARMUP = 20


def blowup_onset(trace: Trace) -> int | None:
    """The first step of ``BLOWUP_RUN`` losses in a row ``BLOWUP_FACTOR`` x the run's start, or the
    first non-finite loss or gradient norm, whichever comes first (None: neither).

    The start is ``init_loss``, the mean loss over 8 batches at initialisation (the label's own
    blow-up bar, ``labels.EXPLODE``), never one batch: MSE over 2 examples has first batches 4-6x
    below the median of the next ones, and 3 ordinary batches then read as a blow-up."""
    loss = np.asarray(trace.arrays["loss"], dtype=np.float64)
    bad = ~np.isfinite(loss) | ~np.isfinite(trace.arrays["grad_norm"])
    start = trace.init_loss
    high = np.where(np.isfinite(loss), loss, np.inf) > BLOWUP_FACTOR * start if start > 0 else bad
    runs = [t for t in range(len(loss) - BLOWUP_RUN + 1) if high[t : t + BLOWUP_RUN].all()]
    onsets = [t for t in (runs[0] if runs else None, int(np.flatnonzero(bad)[0]) if bad.any() else None) if t is not None]
    return min(onsets) if onsets else None


def format_blowups(traces: Sequence[Trace], firings: Sequence[Firing], source: dict[str, str] | None = None) -> str:
    """Per family: blow-ups (see ``blowup_onset``) escalated within ``BLOWUP_WITHIN`` steps of
    their onset, and pruned at all, for those that begin in the warm-up (``WARMUP`` steps, where
    ``loss_spike`` escalates them) and later (where the level rules wait out bursts of up to 6
    corrupted batches); runs that ended failed at a finite loss (collapsed or diverged) escalated;
    and, with ``source`` (trace name -> the parameter its NaN began in), the live run's first
    non-finite escalation naming it."""
    families: dict[str, list[int]] = {}
    for i, t in enumerate(traces):
        families.setdefault(t.family, []).append(i)

    def cells(blown: list[tuple[int, Firing]]) -> list[str]:
        if not blown:
            return ["–", "–"]
        soon = sum(f.escalated is not None and f.escalated <= o + BLOWUP_WITHIN for o, f in blown)
        pruned = sum(f.pruned is not None for _, f in blown)
        return [f"{soon}/{len(blown)}", f"{pruned}/{len(blown)}"]

    rows = []
    for fam, idx in families.items():
        onsets = [(blowup_onset(traces[i]), firings[i]) for i in idx]
        early = [(o, f) for o, f in onsets if o is not None and o < WARMUP]
        late = [(o, f) for o, f in onsets if o is not None and o >= WARMUP]
        dead = [
            i for i in idx if traces[i].label in ("collapsed", "diverged") and np.isfinite(traces[i].arrays["loss"][-1])
        ]
        caught = sum(firings[i].escalated is not None for i in dead)
        named_cell = "–"
        if source:
            nan_runs = [traces[i] for i in idx if traces[i].name in source]
            named = sum(
                t.live_nonfinite is not None and f"gradients of {source[t.name]} " in t.live_nonfinite for t in nan_runs
            )
            named_cell = f"{named}/{len(nan_runs)}" if nan_runs else "–"
        rows.append([fam, *cells(early), *cells(late), f"{caught}/{len(dead)}" if dead else "–", named_cell])
    header = [
        "family",
        f"warm-up blow-ups escalated within {BLOWUP_WITHIN}",
        "pruned",
        f"later blow-ups escalated within {BLOWUP_WITHIN}",
        "pruned",
        "ended failed (finite loss), escalated",
        "NaN source named",
    ]
    return _markdown(header, rows)
