"""Train one run from its spec on CPU, monitored live by ``wandb_gradema.watch`` as a user would.

The monitor is attached with a recording ``on_escalation`` callable, so training always runs
all steps (the label needs the whole trajectory); the first escalation is the live fire step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

import wandb_gradema
from wandb_gradema import EscalationEvent, GrademaWarning, Observation

from .models import build_model
from .spec import Spec, lr_factor
from .tasks import Task, load_task
from .trace import Trace, to_arrays

INIT_BATCHES = 8
INIT_BATCH_SIZE = 32


def train(spec: Spec, name: str = "", split: str = "") -> Trace:
    """Run ``spec`` for ``spec['steps']`` optimizer steps and return its trace (deterministic)."""
    torch.set_num_threads(1)
    task = load_task(spec["task"], spec["unscaled"])
    torch.manual_seed(spec["seed"])
    model = build_model(spec, task)
    init_loss = _init_loss(model, task, spec["seed"])
    opt = _optimizer(spec, model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(spec))
    clip, via = spec["clip"], spec["clip_via"]
    events: list[EscalationEvent] = []
    monitor = wandb_gradema.watch(
        opt, model=model, on_escalation=events.append, max_norm=clip if via == "watch" else None
    )
    faults = {int(t): (kind, arg) for t, kind, arg in spec["faults"]}
    gen = torch.Generator().manual_seed(spec["seed"])
    rows: list[Observation] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No active W&B run", GrademaWarning)
        for t in range(spec["steps"]):
            x, y = _inject(task, faults.get(t), *task.sample(spec["batch_size"], gen))
            loss = task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None and via == "monitor":
                monitor.clip_grad_norm_(clip)
            monitor.observe_loss(loss)
            opt.step()
            sched.step()
            assert monitor.last is not None
            rows.append(monitor.last[0])
        monitor.remove()
    return Trace(
        name=name,
        split=split,
        spec=spec,
        init_loss=init_loss,
        chance_loss=task.chance_loss,
        n_params=sum(p.numel() for p in model.parameters()),
        arrays=to_arrays(rows),
        live_fire=events[0].step if events else None,
    )


@torch.no_grad()
def _init_loss(model: torch.nn.Module, task: Task, seed: int) -> float:
    """L0: the mean loss over ``INIT_BATCHES`` batches at initialisation (own RNG stream)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    losses = [
        task.loss(model(x), y).item()
        for x, y in (task.sample(INIT_BATCH_SIZE, gen) for _ in range(INIT_BATCHES))
    ]
    return float(np.mean(losses))


def _optimizer(spec: Spec, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    kind, lr, wd = spec["optimizer"], spec["lr"], spec["weight_decay"]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec["momentum"], weight_decay=wd)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}")


def _inject(task: Task, fault: tuple[str, float] | None, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """A corrupted batch: ``yshuffle`` rolls targets across the batch, ``xscale`` scales inputs."""
    if fault is None:
        return x, y
    kind, arg = fault
    if kind == "yshuffle":
        return x, torch.roll(y, 1, dims=0)
    if kind == "xscale" and not task.is_lm:
        return x * arg, y
    raise ValueError(f"fault {kind!r} does not apply to task {task.name!r}")
