"""``python -m benchmarks.detection [--split NAME|all] [--retrain] [--quick] [--details] [--no-families]``.

Prints, per split, the class counts and one table: the product's default detector (escalations,
then prunes: its first *confirmed* escalation), gradients only, and every reference rule, scored
with the shared README's metrics; then one row per scenario family, escalations and prunes side
by side, and the blow-up table (``evaluate.format_blowups``: blow-ups escalated within 5 steps,
runs that ended failed escalated, NaN sources named). Traces are trained on first use (at most two processes) and cached under
``benchmarks/detection/out/``.
"""

from __future__ import annotations

import argparse
import sys
import time

from .detectors import all_detectors, fire, product
from .evaluate import counts_line, format_blowups, format_families, format_table, score
from .suite import MAX_JOBS, load_split

SPLITS = (
    "dev", "test", "holdout", "holdout2", "holdout3", "holdout4", "shared-dev",
    "ext-dev", "ext-test", "ext-holdout", "ext-holdout2", "ext-holdout3", "ext-holdout4",
    "blowup-dev", "blowup-holdout", "blowup-holdout2", "blowup-holdout3", "blowup-holdout4",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    parser.add_argument("--retrain", action="store_true", help="train every run again, ignoring the cache")
    parser.add_argument("--quick", action="store_true", help="a handful of scenarios only (CI)")
    parser.add_argument("--jobs", type=int, default=MAX_JOBS, help=f"training processes (at most {MAX_JOBS})")
    parser.add_argument("--details", action="store_true", help="list every run's label and default fire steps")
    parser.add_argument("--no-families", action="store_true", help="skip the per-family tables")
    args = parser.parse_args(argv)

    splits = ("quick",) if args.quick else SPLITS if args.split == "all" else (args.split,)
    start = time.perf_counter()
    for split in splits:
        traces = load_split(split, retrain=args.retrain, jobs=args.jobs, progress=_progress)
        firings = {name: [fire(det, t) for t in traces] for name, det in all_detectors().items()}
        results = {name: score(traces, f) for name, f in firings.items()}
        print(f"\n## {counts_line(split, next(iter(results.values())))}\n")
        print(format_table(results))
        ambiguous = [t.name for t in traces if t.label == "ambiguous"]
        if ambiguous:
            print(f"\nambiguous (excluded): {', '.join(ambiguous)}")
        if not args.no_families:
            for name in ("gradema (default)", "gradema (gradients only)"):
                print(f"\n{split}, {name}, per family:\n")
                print(format_families(traces, firings[name]))
        if not args.no_families:
            print(f"\n{split}, gradema (default), blow-ups (issue 18):\n")
            print(format_blowups(traces, firings["gradema (default)"], nan_sources(traces)))
        if args.details:
            default = product()
            print(f"\n{'run':24} {'label':9} {'t_div':>5} {'escalated':>9} {'pruned':>6}")
            for t in traces:
                f = fire(default, t)
                print(f"{t.name:24} {t.label:9} {t.t_div!s:>5} {f.escalated!s:>9} {f.pruned!s:>6}")
    print(f"\n{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def nan_sources(traces: list) -> dict[str, str]:
    """Trace name -> the parameter its ``gradnan`` fault poisons (by the model's own names)."""
    from .models import build_model
    from .tasks import load_task

    out = {}
    for t in traces:
        faults = [f for f in t.spec["faults"] if f[1] == "gradnan"]
        if faults:
            names = [n for n, _ in build_model(t.spec, load_task(t.spec["task"])).named_parameters()]
            out[t.name] = names[int(faults[0][2])]
    return out


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
