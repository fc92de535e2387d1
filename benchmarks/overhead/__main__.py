"""``python -m benchmarks.overhead [--quick] [--models M ...] [--device D] [--profile] [--threads N] [--budget S] [--counts-only] [--update-counts]``.

Times whole AdamW training steps of four models, interleaved in one process (A B A B ...),
for the bare step and every variant in ``variants.VARIANTS``; prints per model a table of
ratios to the bare step and extra time per step with 95% bootstrap intervals, the in-step time
of each variant's own work, the issue's targets (met / missed, by how much), the breakdown of
the monitor's in-step time (hook and norms; judging; W&B rows), the monitor's memory, and with
``--profile`` where the monitor's time goes. Last, the hot path's operation counts per step
against the budget in ``budget.json`` (``budget.py``): the exit status is 1 when a count is
over its ceiling. ``--counts-only`` runs just that check (seconds, CI); ``--update-counts``
writes the measured counts (plus headroom) as the new budget.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wandb_gradema.errors import GrademaWarning

from . import budget, report
from .breakdown import measure_breakdown
from .clock import isolated_step_clock
from .memory import Footprint, footprint, package_bytes
from .models import DEFAULT_MODELS, MODELS, Batch, ModelSpec
from .profiling import component_lines, format_profile
from .timing import Estimate, estimate, run_chain, warm_up
from .variants import CLOCK, MONITOR_WARMUP, PHASES, VARIANTS, Phase, Trainer, open_run

#: Seconds of timing for all four models (each model gets its ``weight`` share).
DEFAULT_BUDGET_S = 210.0
QUICK_BUDGET_S = 6.0
#: A timed block lasts at least this long: short steps are timed 10, 20, ... at a time.
BLOCK_S = 0.02
#: Windows whose two bare blocks differ by more than this are dropped.
DEFAULT_TOLERANCE = 0.15
#: Models profiled by --profile: few tensors and many tensors.
PROFILED = ("mlp-100k", "transformer-5m")
#: Memory is checked on models whose step is at most this long.
MEMORY_MAX_STEP_S = 0.5


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), help="models to run (default: the four of the README table; --quick: mlp-100k)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds per model: checks that everything runs"
    )
    parser.add_argument(
        "--profile", action="store_true", help=f"cProfile of the monitor on {', '.join(PROFILED)}"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: stable timings on a shared machine, a core left to W&B's service)",
    )
    parser.add_argument(
        "--budget", type=float, help=f"timing seconds for all four models (default {DEFAULT_BUDGET_S:.0f})"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what timings read: wall time (default) or this thread's CPU time (a shared, busy CPU machine)",
    )
    parser.add_argument(
        "--counts-only", action="store_true", help="only the per-step operation counts against budget.json (seconds)"
    )
    parser.add_argument(
        "--update-counts", action="store_true", help="write the measured counts (+5%%) as the new budget.json"
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="busy-window threshold")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="where the models train: cpu (default) or cuda (blocks end with a device sync)"
    )
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = ["mlp-100k"] if args.quick else list(DEFAULT_MODELS)
    if args.budget is None:
        args.budget = QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S
    return args


def _configure(threads: int) -> None:
    """Fixed threads, quiet W&B, and the monitor's "no run" / escalation warnings silenced."""
    torch.set_num_threads(threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        os.environ.pop(var, None)
    warnings.filterwarnings("ignore", category=GrademaWarning)  # escalations are counted and reported


class Bench:
    """One model's benchmark: its bare trainer, calibration and phases."""

    def __init__(self, spec: ModelSpec, args: argparse.Namespace, root: Path) -> None:
        self.spec = spec
        self.args = args
        self.root = root
        torch.manual_seed(args.seed)
        device = torch.device(args.device)
        self.base = spec.build().to(device)
        self.batches: list[Batch] = [
            (x.to(device), y.to(device)) for x, y in spec.batches(torch.Generator().manual_seed(args.seed))
        ]
        self.n_params = sum(p.numel() for p in self.base.parameters())
        self.n_tensors = len(list(self.base.parameters()))
        self.rng = random.Random(args.seed)
        self.np_rng = np.random.default_rng(args.seed)
        self.bare = Trainer(self.base, spec, self.batches)
        self.step_s = self._calibrate()
        self.block = 1 if self.step_s >= BLOCK_S else 10 * math.ceil(BLOCK_S / self.step_s / 10)
        warm_s = 0.2 if args.quick else 1.0
        self.warm = min(120, max(2, math.ceil(warm_s / self.step_s)))
        total_weight = sum(MODELS[k].weight for k in DEFAULT_MODELS)  # the budget is for the default four
        self.budget_s = args.budget * spec.weight / total_weight

    def _calibrate(self) -> float:
        """Warm the bare trainer up; return the median time of one bare step (s)."""
        deadline = time.monotonic() + (0.3 if self.args.quick else 1.0)
        n = 0
        while n < 3 or time.monotonic() < deadline:
            self.bare.step()
            n += 1
        return statistics.median(self.bare.timed(1)[0] for _ in range(5 if n > 10 else 2)) / 1e9

    def title(self) -> str:
        """The table's heading: model, size, batch, step time, block and drop rule."""
        s = self.spec
        return (
            f"## {s.key}: {s.description}; {self.n_params:,} parameters in {self.n_tensors} tensors; "
            f"batch {s.batch}; AdamW(lr=1e-3), torch defaults\n"
            f"bare step ≈ {self.step_s * 1e3:.2f} ms; {self.block} step(s) per timed block; "
            f"{self.warm} warm-up steps per copy (monitors: at least {MONITOR_WARMUP}); windows dropped when their two bare blocks differ "
            f"by > {self.args.tolerance:.0%}; timing budget {self.budget_s:.0f} s"
        )

    def run(self) -> tuple[dict[str, Estimate | None], list[str]]:
        """Every phase, in order; their estimates and notes."""
        estimates: dict[str, Estimate | None] = {}
        notes: list[str] = []
        for phase in PHASES:
            ests, phase_notes = self._phase(phase)
            estimates.update(ests)
            notes += phase_notes
        return estimates, notes

    def _phase(self, phase: Phase) -> tuple[dict[str, Estimate | None], list[str]]:
        """Time one phase's variants against the bare step, with its own offline run if needed."""
        run = open_run(self.root, f"{self.spec.key}-{phase.key}") if phase.needs_run else None
        trainers = {key: Trainer(self.base, self.spec, self.batches) for key in phase.variants}
        try:
            for key, t in trainers.items():
                VARIANTS[key].install(t, run)
            for key, t in trainers.items():
                warm_up({key: t}, max(self.warm, VARIANTS[key].min_warmup))
            warm_up({"bare": self.bare}, 1)
            for key, t in trainers.items():
                after = VARIANTS[key].after_warmup
                if after is not None:
                    after(t)
            before = {key: (t.steps, t.rows) for key, t in trainers.items()}
            gc.collect()
            gc.freeze()  # full collections then skip the long-lived heap: less noise, same costs
            try:
                samples = run_chain(
                    self.bare,
                    trainers,
                    block=self.block,
                    budget_s=self.budget_s * phase.share,
                    min_rounds=5 if self.args.quick else 3,
                    max_rounds=100_000,
                    rng=self.rng,
                )
            finally:
                gc.unfreeze()
            notes = [n for key, t in trainers.items() if (n := _escalation_note(key, t))]
            notes += [n for key, t in trainers.items() if (n := _rows_note(key, t, *before[key]))]
        finally:
            for t in trainers.values():
                t.close()
            if run is not None:
                run.finish()
        ests = {key: estimate(samples[key], self.args.tolerance, self.np_rng) for key in phase.variants}
        return ests, notes

    def memory(self) -> str:
        """Footprint and tracemalloc of ``watch()`` at defaults with an offline run, N vs M steps."""
        if self.step_s > MEMORY_MAX_STEP_S:
            return (
                f"memory: skipped (a step takes {self.step_s:.1f} s; the monitor's memory depends on the "
                "number of parameter tensors, not their size)"
            )
        first = 10 if self.args.quick else 25
        second = min(10 * first, first + max(25, int(8.0 / self.step_s)))
        run = open_run(self.root, f"{self.spec.key}-memory")
        tracemalloc.start(16)
        try:
            t = Trainer(self.base, self.spec, self.batches)
            VARIANTS["defaults"].install(t, run)
            snaps = []
            for target in (first, second):
                while t.steps < target:
                    t.step()
                gc.collect()
                assert t.monitor is not None
                snaps.append((tracemalloc.take_snapshot(), footprint(t.monitor)))
            t.close()
        finally:
            tracemalloc.stop()
            run.finish()
        return _memory_lines(first, second, snaps)

    def breakdown(self) -> str:
        """Hook and norms, judging, W&B rows: ``watch()`` at defaults with an offline run."""
        steps = min(1000, max(50, int(2.0 / self.step_s)))
        run = open_run(self.root, f"{self.spec.key}-breakdown")
        t = Trainer(self.base, self.spec, self.batches)
        try:
            VARIANTS["defaults"].install(t, run)
            warm_up({"defaults": t}, max(self.warm, VARIANTS["defaults"].min_warmup))
            return measure_breakdown(t, steps).line()
        finally:
            t.close()
            run.finish()

    def profile(self) -> str:
        """cProfile of the monitor's work: defaults with an offline run, then the hot path."""
        out = []
        steps = min(500, max(20, int(3.0 / self.step_s)))
        for key in ("defaults", "hot"):
            run = open_run(self.root, f"{self.spec.key}-profile") if key == "defaults" else None
            t = Trainer(self.base, self.spec, self.batches)
            try:
                VARIANTS[key].install(t, run)
                warm_up({key: t}, max(self.warm, VARIANTS[key].min_warmup))
                direct_us = t.timed(steps)[1] / steps / 1e3  # unprofiled, for scale
                t.profiler = profiler = cProfile.Profile()
                warm_up({key: t}, steps)
                t.profiler = None
                out.append(f"### profile, {self.spec.key}, {VARIANTS[key].label}")
                out.append(format_profile(profiler, steps, direct_us))
                if key == "hot":
                    out.append(component_lines(t))
            finally:
                t.close()
                if run is not None:
                    run.finish()
        return "\n".join(out)


def _escalation_note(key: str, t: Trainer) -> str | None:
    """A monitor that escalated while timed logged per-layer telemetry: say so."""
    if t.monitor is None or not t.monitor.events:
        return None
    first = t.monitor.events[0]
    return (
        f"  note: {VARIANTS[key].label}: {len(t.monitor.events)} escalation(s) while timed, "
        f"first at step {first.step}: {first.reason}"
    )


def _rows_note(key: str, t: Trainer, steps: int, rows: int) -> str | None:
    """How often a monitor logged while timed (its cadence drives the logging cost)."""
    if t.monitor is None:
        return None
    n_steps, n_rows = t.steps - steps, t.rows - rows
    every = f"one every {n_steps / n_rows:.1f} steps" if n_rows else "none"
    return f"  {VARIANTS[key].label}: {n_rows} rows logged over {n_steps} timed steps ({every})"


def _memory_lines(first: int, second: int, snaps: list[tuple[Any, Footprint]]) -> str:
    (s1, f1), (s2, f2) = snaps
    own = [package_bytes(s) for s in (s1, s2)]
    through = [package_bytes(s, all_frames=True) for s in (s1, s2)]
    per_tensor = f2.tensor_elements / f2.n_param_tensors if f2.n_param_tensors else 0.0
    return "\n".join(
        [
            f"memory of watch() at defaults with an offline run, after {first} and {second} steps:",
            f"  objects reachable from the monitor: {f1.python_bytes:,} -> {f2.python_bytes:,} bytes, "
            f"{f1.container_items} -> {f2.container_items} container items",
            f"  tensors it holds (not parameters, gradients or AdamW state): {f1.tensor_elements} -> "
            f"{f2.tensor_elements} elements, {f2.tensor_bytes:,} bytes = {per_tensor:.2f} scalars per "
            f"parameter tensor ({f2.n_param_tensors} tensors; target ≤ 1)",
            f"  tracemalloc, live allocations made in wandb_gradema's files: {own[0]:,} -> {own[1]:,} bytes; "
            f"with anything allocated below its calls (W&B included): {through[0]:,} -> {through[1]:,} bytes",
        ]
    )


def _bench_model(spec: ModelSpec, args: argparse.Namespace, root: Path) -> None:
    bench = Bench(spec, args, root)
    print(bench.title(), flush=True)
    started = time.monotonic()
    estimates, notes = bench.run()
    extra = [
        n
        for n in (
            report.hot_floor_ratio(estimates.get("hot"), estimates.get("floor")),
            report.watch1000_note(estimates.get("watch1000"), estimates.get("watch1")),
        )
        if n
    ]
    print(report.format_table("", estimates, extra + notes))
    print("targets:")
    for line in report.Targets(estimates, bench.n_params).lines():
        print(f"  {line}")
    print(bench.breakdown())
    if not args.no_memory:
        print(bench.memory())
    print(f"({time.monotonic() - started:.0f} s for this model)\n", flush=True)
    if args.profile and spec.key in PROFILED:
        print(bench.profile(), "\n", flush=True)


def _counts(args: argparse.Namespace) -> int:
    """The per-step operation counts against the budget; 1 when one is over."""
    with tempfile.TemporaryDirectory(prefix="gradema-counts-") as root:
        measured = {key: budget.count(case, Path(root)) for key, case in budget.CASES.items()}
    if args.update_counts:
        budget.save_budget(measured)
        print(f"budget written: {budget.BUDGET_FILE}")
    ceilings = budget.load_budget()
    print(
        f"operations per steady-state step of the monitor (mlp-100k, after {budget.WARMUP_STEPS} steps, mean of "
        f"{budget.COUNTED_STEPS}; counted / budget in {budget.BUDGET_FILE.name}):"
    )
    print("\n".join(budget.lines(measured, ceilings)))
    over = budget.check(measured, ceilings)
    if over:
        print("OVER BUDGET (the hot path grew; if deliberate, --update-counts):\n  " + "\n  ".join(over))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    _configure(args.threads)
    if args.counts_only or args.update_counts:
        return _counts(args)
    if args.clock == "cpu":
        CLOCK.use_cpu_time()
    print(
        "# wandb_gradema overhead per training step (python -m benchmarks.overhead"
        f"{' ' + ' '.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ''})"
    )
    print(report.header(args.threads, args.device), "\n", flush=True)
    if args.clock == "cpu":
        print("timings: this thread's CPU time (--clock cpu), not wall time\n", flush=True)
    clock = report.CpuClock()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gradema-overhead-") as root, isolated_step_clock() as isolated:
        print(
            "monitor's step clock: "
            + (
                "per trainer (its adaptive log cadence sees its own steps, not the interleaving)"
                if isolated
                else "NOT isolated (wandb_gradema.cadence or .decisions has no `time` module): interleaving "
                "makes its steps look longer, and an adaptive cadence log more often"
            ),
            "\n",
            flush=True,
        )
        for key in args.models:
            _bench_model(MODELS[key], args, Path(root))
    print(clock.summary(time.monotonic() - started))
    return _counts(args)


if __name__ == "__main__":
    sys.exit(main())
