"""``python -m benchmarks.sweep.plateaus``: what the sibling record shows of runs still at the
untrained level at one step, late learners against never-learners (issue 17's open question).

For every run of the looked-at splits that had made less than a tenth of its sweep's
chance-to-best range by ``--step`` (and was finite so far), the features the sibling judgement
could read at that step, from the run's own ``SiblingRecord`` points (as its siblings see it)
and its sweep's runs that had learned clearly by then. A *late learner* ends good (within a
quarter of the range from the best); a *never-learner* ends at chance (within a tenth of it, or
non-finite). Per task and class: the quantiles of each feature, and the share of
never-learners inside the late learners' range (1.0: the feature cannot tell them apart).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np

from benchmarks.detection.trace import Trace
from wandb_gradema.siblings.record import RecordBuilder, SiblingPoint
from wandb_gradema.siblings.reference import level_noise

from .space import SPLITS, final_level, load_sweep

#: Never replayed while tuning: the latest pass's holdouts (replayed once, by ``__main__``).
HOLDOUTS = ("holdout7", "regress-holdout6", "holdout8", "regress-holdout7")
FEATURES = {
    "noise": "level noise / the sweep's chance-to-best range",
    "moved": "start minus level, in level noises",
    "norm": "log10 norm level / its first level",
    "norm_half": "log10 norm level / its level at half the step",
    "lr": "log10 LR / the learners' median LR",
    "update": "log10 LR x norm / the learners' median LR x norm",
}


def points(trace: Trace) -> list[SiblingPoint]:
    """The run's record points (the builder the monitor uses, fed the recorded observations)."""
    builder = RecordBuilder(trace.name)
    for obs in trace.observations():
        builder.observe(obs.step, obs.loss, obs.grad_norm, obs.active_share, obs.lr)
    return builder.record.points


def at(pts: Sequence[SiblingPoint], step: int) -> SiblingPoint:
    """The last point at or before ``step``."""
    return [p for p in pts if p.step <= step][-1]


def sweep_rows(traces: Sequence[Trace], step: int) -> list[tuple[str, str, dict[str, float]]]:
    """(name, class, features) of the sweep's runs still at the untrained level at ``step``."""
    finals = [final_level(t) for t in traces]
    best, chance = min(f for f in finals if math.isfinite(f)), traces[0].chance_loss
    span = chance - best
    recs = [points(t) for t in traces]
    learners = []
    for pts in recs:
        p, start = at(pts, step), pts[0].loss
        if math.isfinite(p.loss) and start - p.loss > max(4 * level_noise(p.noise), 0.05 * abs(start)):
            learners.append(p)
    if len(learners) < 2:
        return []
    lr_med = float(np.median([p.lr for p in learners]))
    upd_med = float(np.median([p.lr * p.norm for p in learners]))
    rows = []
    for trace, final, pts in zip(traces, finals, recs, strict=True):
        p, first, half = at(pts, step), pts[0], at(pts, step // 2)
        if any(q.nonfinite or not math.isfinite(q.loss) for q in pts if q.step <= step) or first.loss - p.loss > 0.1 * span:
            continue
        good, at_chance = final <= best + 0.25 * span, not math.isfinite(final) or final >= chance - 0.1 * span
        if not (good or at_chance):
            continue
        noise = max(level_noise(p.noise), 1e-12)
        feats = {
            "noise": noise / span,
            "moved": (first.loss - p.loss) / noise,
            "norm": math.log10(p.norm / first.norm),
            "norm_half": math.log10(p.norm / half.norm),
            "lr": math.log10(p.lr / lr_med),
            "update": math.log10(p.lr * p.norm / upd_med),
        }
        rows.append((trace.name, "late" if good else "never", feats))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep.plateaus", description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=43, help="the step judged (default 43: holdout5's stop)")
    parser.add_argument("--list", action="store_true", help="also list every late learner's features")
    args = parser.parse_args(argv)
    by_task: dict[str, list[tuple[str, str, dict[str, float]]]] = {}
    for split, sweeps in SPLITS.items():
        if split in HOLDOUTS:
            continue
        for task, seed in sweeps:
            by_task.setdefault(task, []).extend(sweep_rows(load_sweep(seed, task=task), args.step))
    for task, rows in by_task.items():
        late = [f for _, c, f in rows if c == "late"]
        never = [f for _, c, f in rows if c == "never"]
        print(f"### {task}: at step {args.step}, {len(late)} late learners, {len(never)} never-learners\n")
        print("| feature | late learners (min / median / max) | never-learners (10% / median / 90%) | never-learners in the late range |")
        print("|---|---|---|---|")
        for key, what in FEATURES.items():
            lv, nv = np.array([f[key] for f in late]), np.array([f[key] for f in never])
            inside = float(np.mean((nv >= lv.min()) & (nv <= lv.max()))) if len(lv) and len(nv) else math.nan
            lq = f"{lv.min():.3g} / {np.median(lv):.3g} / {lv.max():.3g}" if len(lv) else "-"
            nq = f"{np.quantile(nv, 0.1):.3g} / {np.median(nv):.3g} / {np.quantile(nv, 0.9):.3g}" if len(nv) else "-"
            print(f"| {what} | {lq} | {nq} | {inside:.0%} |")
        if args.list:
            print()
            for name, cls, f in rows:
                if cls == "late":
                    print(f"- {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in f.items()))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
