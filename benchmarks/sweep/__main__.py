"""``python -m benchmarks.sweep``: whole sweeps replayed through each pruner, side by side.

Per split (``dev``: the sweeps looked at while developing; ``holdout``, ``holdout2``: not tuned
on, see ``space.SPLITS``), every
sweep is replayed in ``--orders`` random orders, one run at a time, through every method. A run
is *good* when its final loss is within a quarter of the best-to-chance range of the sweep's
best; it *ends at chance* when its final loss is within a tenth of that range of chance, or not
finite. Steps saved are measured against the sweep's budget; the ideal stops every run that ends
at chance at its fifth percent.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from benchmarks.detection.trace import Trace

from .replay import EXTRA, METHODS, PARALLEL, Stops
from .space import SPLITS, final_level, load_sweep


@dataclass
class Score:
    """Totals of one method over a split's replays."""

    good: int = 0
    good_stopped: int = 0
    best_kept: int = 0
    replays: int = 0
    chance: int = 0
    chance_by_half: int = 0
    budget: int = 0
    saved: int = 0
    ideal: int = 0
    stopped_steps: list[int] = field(default_factory=list)

    def merge(self, other: Score) -> None:
        """Add another split's totals (the per-family tables)."""
        for f in fields(self):  # every total, whatever fields are added later
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def add(self, traces: Sequence[Trace], stops: Stops) -> None:
        finals = [final_level(t) for t in traces]
        finite = [f for f in finals if math.isfinite(f)]
        best = min(finite)
        chance = traces[0].chance_loss
        span = chance - best
        best_i = finals.index(best)
        self.replays += 1
        self.best_kept += stops[best_i] is None
        for trace, final, stop in zip(traces, finals, stops, strict=True):
            n = trace.steps
            self.budget += n
            if stop is not None:
                self.saved += n - stop - 1
            good = final <= best + 0.25 * span
            at_chance = not math.isfinite(final) or final >= chance - 0.1 * span
            self.good += good
            self.good_stopped += good and stop is not None
            if at_chance:
                self.chance += 1
                self.chance_by_half += stop is not None and stop < n // 2
                self.ideal += n - n // 20


def run_split(
    sweeps: Sequence[tuple[str, int]],
    orders: int,
    progress: bool,
    extra: bool = False,
    misses: list[str] | None = None,
    parallel: bool = False,
) -> dict[str, Score]:
    methods = {**METHODS, **(EXTRA if extra else {}), **(PARALLEL if parallel else {})}
    scores = {name: Score() for name in methods}
    for task, seed in sweeps:
        traces = load_sweep(seed, progress=print if progress else None, task=task)
        rng = random.Random(seed)
        for k in range(orders):
            order = list(traces) if k == 0 else rng.sample(traces, len(traces))
            for name, method in methods.items():
                stops = method(order)
                scores[name].add(order, stops)
                if misses is not None and name.startswith("sweep-aware (defaults)"):
                    misses.extend(miss_lines(order, stops, f"{task} {seed} order {k}"))
    return scores


def miss_lines(traces: Sequence[Trace], stops: Stops, where: str) -> list[str]:
    """Runs ending at chance not stopped by half budget and good runs stopped, with their place
    in the order and the siblings that had ended before them (healthy: ran to the end)."""
    finals = [final_level(t) for t in traces]
    best = min(f for f in finals if math.isfinite(f))
    chance = traces[0].chance_loss
    span = chance - best
    healthy = good_before = 0
    out = []
    for i, (trace, final, stop) in enumerate(zip(traces, finals, stops, strict=True)):
        good = final <= best + 0.25 * span
        at_chance = not math.isfinite(final) or final >= chance - 0.1 * span
        spec = trace.spec
        config = f"lr {spec['lr']:.2g} {spec['optimizer']} {spec['act']} depth {spec['depth']} batch {spec['batch_size']}"
        if at_chance and (stop is None or stop >= trace.steps // 2):
            out.append(f"missed  {where} #{i:2d} {trace.name} ({config}): stop {stop}, final {final:.3g}; {healthy} healthy siblings before, {good_before} good")
        if good and stop is not None:
            out.append(f"GOOD STOPPED {where} #{i:2d} {trace.name} ({config}) at step {stop}")
        if stop is None:
            healthy += 1
            good_before += good
    return out


def table(title: str, scores: dict[str, Score]) -> str:
    hb = next((s for n, s in scores.items() if "hyperband" in n), None)
    lines = [
        f"### {title}",
        "",
        "| method | good runs stopped | best kept | runs ending at chance stopped by half budget | steps saved | of the ideal | vs hyperband |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in scores.items():
        vs = f"{s.saved / hb.saved:.1f}x" if hb is not None and hb.saved else "-"
        lines.append(
            f"| {name} | {s.good_stopped} / {s.good} | {s.best_kept} / {s.replays} | "
            f"{s.chance_by_half} / {s.chance} ({s.chance_by_half / max(s.chance, 1):.0%}) | "
            f"{s.saved / s.budget:.0%} | {s.saved / max(s.ideal, 1):.0%} | {vs} |"
        )
    any_score = next(iter(scores.values()))
    ideal = any_score.ideal / max(any_score.budget, 1)
    hb_part = f"; twice hyperband's saving: {2 * hb.saved / max(hb.budget, 1):.0%}" if hb is not None else ""
    lines.append("")
    lines.append(f"Ideal saving (every run that ends at chance stopped at 5% of its budget): {ideal:.0%} of the steps{hb_part}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    parser.add_argument("--orders", type=int, default=3, help="random orders per sweep (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no training progress lines")
    parser.add_argument("--parallel", action="store_true", help="also the sweep-aware replay with 4 concurrent agents")
    parser.add_argument("--misses", action="store_true", help="list sweep-aware's misses and good runs stopped")
    parser.add_argument("--extra", action="store_true", help="also hyperband checked every 200 steps and on a per-step loss (slow)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    families: dict[str, dict[str, Score]] = {}
    splits: dict[str, list[str]] = {}
    for split, sweeps in SPLITS.items():
        if args.split in (split, "all"):
            misses: list[str] | None = [] if args.misses else None
            scores = run_split(sweeps, args.orders, not args.quiet, args.extra, misses, args.parallel)
            named = ", ".join(f"{task} {seed}" for task, seed in sweeps)
            print(table(f"{split} sweeps ({named}; {args.orders} orders each)", scores))
            if misses:
                print("\n" + "\n".join(misses))
            print()
            task = sweeps[0][0]
            splits.setdefault(task, []).append(split)
            for name, score in scores.items():
                families.setdefault(task, {}).setdefault(name, Score()).merge(score)
    if sum(len(v) for v in splits.values()) > 1:
        for task, scores in families.items():
            print(table(f"all {task} splits together ({', '.join(splits[task])})", scores))
            print()
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
