"""``python -m benchmarks.overhead.compare REV [--models M ...] [--budget S] [--clock cpu] [--sync-every N ...]``.

Before and after, side by side: the package as it was at git revision ``REV`` (exported with
``git archive`` into a temporary directory and imported as ``wandb_gradema_rev``: its modules
import each other relatively) and the working tree's, each ``watch()``-ed at defaults and fed
``observe_loss``, timed interleaved with the bare step and the foreach floor in one process
(the same chain and estimates as ``python -m benchmarks.overhead``). No W&B run: hook, norms and
judging, not rows. Prints per model the ratio to the bare step with its 95% interval and the
in-step time of each; ``--sync-every 16`` also times the working tree's monitor with
``sync_every=16`` (on CPU: the deferred path, judging a queue of steps at a time).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import random
import subprocess
import sys
import tarfile
import tempfile
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import wandb_gradema

from .clock import isolated_step_clock
from .models import MODELS
from .timing import estimate, run_chain, warm_up
from .variants import CLOCK, MONITOR_WARMUP, Trainer, foreach_floor

REPO = Path(__file__).resolve().parents[2]


def load_revision(rev: str, root: Path) -> types.ModuleType:
    """``wandb_gradema`` as of ``rev``, importable as ``wandb_gradema_rev``."""
    blob = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "wandb_gradema"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(root, filter="data")
    (root / "wandb_gradema").rename(root / "wandb_gradema_rev")
    sys.path.insert(0, str(root))
    return importlib.import_module("wandb_gradema_rev")


def _watched(package: types.ModuleType, **options: Any) -> Callable[[Trainer], None]:
    def install(t: Trainer) -> None:
        monitor = t.bracket(lambda: package.watch(t.optimizer, model=t.model, **options))
        t.monitor = monitor
        t.before_step = monitor.observe_loss
        t.on_close(monitor.remove)

    return install


def _floor(t: Trainer) -> None:
    t.before_step = lambda loss: foreach_floor(t.params)


def compare(
    key: str, rev: str, old: types.ModuleType, budget_s: float, seed: int = 0, sync_every: Sequence[int] = ()
) -> list[str]:
    """Lines of the side-by-side table for model ``key`` (``sync_every``: the working tree's
    monitor again at each of these ``sync_every``, e.g. the deferred path on CPU)."""
    spec = MODELS[key]
    torch.manual_seed(seed)
    base = spec.build()
    batches = spec.batches(torch.Generator().manual_seed(seed))
    bare = Trainer(base, spec, batches)
    warm_up({"bare": bare}, 5)
    step_s = float(np.median([bare.timed(1)[0] for _ in range(7)])) / 1e9
    block = max(1, int(np.ceil(0.02 / step_s)))
    installs = {"floor": _floor, f"watch() at {rev}": _watched(old), "watch() now": _watched(wandb_gradema)}
    for n in sync_every:
        installs[f"now, sync_every={n}"] = _watched(wandb_gradema, sync_every=n)
    trainers = {name: Trainer(base, spec, batches) for name in installs}
    try:
        for name, t in trainers.items():
            installs[name](t)
        warm_up(trainers, max(MONITOR_WARMUP, min(150, int(1.0 / step_s))))
        gc.collect()
        gc.freeze()
        try:
            samples = run_chain(
                bare, trainers, block=block, budget_s=budget_s, min_rounds=3, max_rounds=10**6, rng=random.Random(seed)
            )
        finally:
            gc.unfreeze()
    finally:
        for t in trainers.values():
            t.close()
    rng = np.random.default_rng(seed)
    lines = [f"## {key}: bare step ≈ {step_s * 1e3:.2f} ms, {block} step(s) per block"]
    for name in installs:
        e = estimate(samples[name], 0.15, rng)
        if e is None:
            lines.append(f"  {name:24} (every window dropped: the machine was busy)")
            continue
        lines.append(
            f"  {name:24} {e.ratio:.3f} [{e.ratio_ci[0]:.3f}, {e.ratio_ci[1]:.3f}]  in-step {e.direct_us:8.1f} µs  "
            f"windows {e.kept}/{e.total}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead.compare", description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with (e.g. main, HEAD~3)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["mlp-100k"])
    parser.add_argument("--budget", type=float, default=60.0, help="timing seconds per model")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--sync-every", type=int, nargs="*", default=[], help="also time the working tree's monitor at these sync_every"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # "no run", escalations: both monitors alike
    if args.clock == "cpu":
        CLOCK.use_cpu_time()
    with tempfile.TemporaryDirectory(prefix="gradema-rev-") as root, isolated_step_clock():
        old = load_revision(args.rev, Path(root))
        print(f"# watch() at {args.rev} vs now, interleaved ({args.clock} time, one torch thread, no W&B run)")
        for key in args.models:
            print("\n".join(compare(key, args.rev, old, args.budget, sync_every=args.sync_every)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
