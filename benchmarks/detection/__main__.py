"""``python -m benchmarks.detection [--split dev|test|holdout|shared-dev|all] [--retrain] [--quick] [--details]``.

Prints, per split, the class counts and one table: the product's default detector and every
reference rule, scored with the shared README's metrics. Traces are trained on first use (at
most two processes) and cached under ``benchmarks/detection/out/``.
"""

from __future__ import annotations

import argparse
import sys
import time

from .detectors import all_detectors, product
from .evaluate import counts_line, evaluate, format_table
from .suite import MAX_JOBS, load_split

SPLITS = ("dev", "test", "holdout", "shared-dev")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    parser.add_argument("--retrain", action="store_true", help="train every run again, ignoring the cache")
    parser.add_argument("--quick", action="store_true", help="a handful of scenarios only (CI)")
    parser.add_argument("--jobs", type=int, default=MAX_JOBS, help=f"training processes (at most {MAX_JOBS})")
    parser.add_argument("--details", action="store_true", help="list every run's label and default fire step")
    args = parser.parse_args(argv)

    splits = ("quick",) if args.quick else SPLITS if args.split == "all" else (args.split,)
    start = time.perf_counter()
    for split in splits:
        traces = load_split(split, retrain=args.retrain, jobs=args.jobs, progress=_progress)
        results = {name: evaluate(traces, det) for name, det in all_detectors().items()}
        print(f"\n## {counts_line(split, next(iter(results.values())))}\n")
        print(format_table(results))
        ambiguous = [t.name for t in traces if t.label == "ambiguous"]
        if ambiguous:
            print(f"\nambiguous (excluded): {', '.join(ambiguous)}")
        if args.details:
            print(f"\n{'run':24} {'label':9} {'t_div':>5} {'fire':>5}")
            default = product()
            for t in traces:
                print(f"{t.name:24} {t.label:9} {t.t_div!s:>5} {default(t)!s:>5}")
    print(f"\n{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
