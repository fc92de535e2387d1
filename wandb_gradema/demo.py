"""``wandb-gradema demo``: a small real training run that drifts and escalates, logged offline.

An MLP learns a synthetic classification task with SGD and a linear learning-rate warm-up to
``--peak-lr`` over ``--warmup-steps``. The default peak is 3x too high (0.1 trains fine): the run
learns, then turns unstable while the LR is still rising, and dies at chance level with dead
ReLUs. The monitor is attached with one line, the loop is an ordinary PyTorch loop, and the W&B
run is written in offline mode so it can be viewed with ``wandb leet`` or uploaded later with
``wandb sync``.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["DemoResult", "add_arguments", "run", "train"]


@dataclass
class DemoResult:
    """What the demo run did."""

    steps: int
    events: list[Any]
    pruned: Any
    run_dir: str | None
    final_loss: float


def train(
    *,
    steps: int = 300,
    peak_lr: float = 0.3,
    warmup_steps: int = 200,
    seed: int = 0,
    prune: bool = False,
    project: str = "gradema-demo",
    wandb_dir: str | None = None,
) -> DemoResult:
    """Train the demo model with ``watch()`` attached and an offline W&B run; return a summary."""
    import torch
    import wandb

    import wandb_gradema

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 32, generator=gen)
    labels = torch.randint(0, 10, (4096,), generator=gen)
    inputs = centers[labels] + torch.randn(4096, 32, generator=gen)

    model = torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps))
    run = wandb.init(
        project=project,
        mode="offline",
        dir=wandb_dir,
        config={"lr": peak_lr, "warmup_steps": warmup_steps, "steps": steps},
    )
    # The one line. log_every=1: a row per step, so the report draws the whole story (by default
    # rows are spaced to cost ~1% of training time, which for steps this tiny is sparse).
    monitor = wandb_gradema.watch(opt, model=model, on_escalation="prune" if prune else "warn", log_every=1)
    loss_fn = torch.nn.CrossEntropyLoss()
    step = 0
    loss = torch.tensor(float("nan"))
    try:
        for step in range(steps):
            idx = torch.randint(0, len(inputs), (32,), generator=gen)
            loss = loss_fn(model(inputs[idx]), labels[idx])
            monitor.observe_loss(loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            if step % 10 == 0:
                run.log({"train/loss": loss.item(), "train/step": step})
        step += 1
    finally:
        monitor.remove()
        run_dir = os.path.abspath(os.path.dirname(run.dir)) if run.dir else None
        wandb.finish()  # a no-op when the prune already finished the run as failed
    return DemoResult(step, list(monitor.events), monitor.pruned, run_dir, float(loss.detach()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options."""
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument("--peak-lr", type=float, default=0.3, help="LR at the end of warm-up (default 0.3; 0.1 is healthy)")
    parser.add_argument("--warmup-steps", type=int, default=200, help="linear warm-up length (default 200)")
    parser.add_argument("--prune", action="store_true", help="prune the run on escalation, as in a sweep")
    parser.add_argument("--dir", default=None, help="where W&B writes the offline run (default ./wandb)")
    parser.add_argument("--figure", default=None, metavar="PNG",
                        help="also draw the run's report picture to this file (the README's figure)")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print what happened, where the run is, and how to look at it."""
    from .errors import GrademaWarning, RunPruned

    warnings.filterwarnings("ignore", category=GrademaWarning)  # printed below instead
    os.environ.setdefault("WANDB_SILENT", "true")
    import torch

    torch.set_num_threads(1)  # a tiny model: more threads only contend
    print(
        f"Training an MLP for {args.steps} steps, warming the LR up to {args.peak_lr:g} over "
        f"{args.warmup_steps} steps (0.1 trains fine)."
    )
    try:
        result = train(
            steps=args.steps,
            peak_lr=args.peak_lr,
            warmup_steps=args.warmup_steps,
            prune=args.prune,
            wandb_dir=args.dir,
        )
    except RunPruned as pruned:  # only with --prune, raised from optimizer.step()
        import wandb

        print(f"\nPRUNED: {pruned}")
        print("The W&B run is marked failed with the reason; training stopped inside optimizer.step().")
        del wandb
        _print_where(_latest_run_dir(args.dir))
        return 0
    would_prune = next((e for e in result.events if e.confirmed), None)
    for e in result.events:
        grade = "prune-grade: --prune (or a sweep) stops the run here" if e.confirmed else "alert only, not prune-grade"
        if e.confirmed and e is not would_prune:
            grade = "prune-grade"
        print(f"\nESCALATED at step {e.step} (drift first seen at step {e.first_anomaly_step}; {grade}):")
        for reason in e.reasons:
            print(f"  - {reason}")
    if result.events:
        print("\nEach escalation logged per-layer gradient norms under gradema/layers/ for the following steps.")
        if would_prune is not None:
            print(f"With --prune (or inside a W&B sweep) the run would have stopped at step {would_prune.step}.")
    else:
        print("\nNo escalation: training stayed healthy.")
    print(f"Trained {result.steps} steps; final loss {result.final_loss:.4g}{_chance_note(result.final_loss)}.")
    _print_where(result.run_dir)
    if args.figure and result.run_dir:
        _draw(result.run_dir, args.figure)
    return 0


def _draw(run_dir: str, png: str) -> None:
    """The report's picture of the demo run, written to ``png``."""
    from .offline import read_run
    from .report import run_figure

    run_figure(read_run(run_dir)).savefig(png, dpi=110)
    print(f"\nPicture: {os.path.abspath(png)}")


#: Cross-entropy of a uniform guess over the demo's 10 classes.
CHANCE_LOSS = math.log(10)


def _chance_note(loss: float) -> str:
    """Say when a final loss is chance level: the run learned nothing that lasted."""
    if math.isfinite(loss) and abs(loss - CHANCE_LOSS) < 0.02:
        return f" = chance level (ln 10 = {CHANCE_LOSS:.3f} for 10 classes): the run died"
    return ""


def _latest_run_dir(root: str | None) -> str | None:
    from .offline import find_runs

    runs = find_runs(os.path.join(root or ".", "wandb"))
    return os.path.abspath(runs[-1]) if runs else None


def _print_where(run_dir: str | None) -> None:
    if run_dir is None:
        return
    print(f"\nOffline W&B run: {run_dir}")
    print(f"  charts in the terminal:  wandb leet {run_dir}")
    print(f"  summary as JSON:         wandb leet inspect --summary --json {run_dir}")
    print(f"  upload to W&B later:     wandb sync {run_dir}")
    print(f"  the picture (PNG+HTML):  wandb-gradema report {run_dir}")
