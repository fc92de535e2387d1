"""Train one run from its spec on CPU, monitored live by ``wandb_gradema.watch`` as a user would.

The monitor is attached with a recording ``on_escalation`` callable, so training always runs
all steps (the label needs the whole trajectory); the first escalation is the live fire step.

A fine-tune (``pretrain_steps > 0``) first trains the model, unmonitored, with Adam at
``pretrain_lr`` on its own batch stream, then starts the monitored run from that state with a
fresh optimizer; its L0 is measured on the pretrained model. With ``unfreeze_at`` only the output
layer is optimised at first; at that step the rest of the model joins as a new param group
(``optimizer.add_param_group``) with ``unfreeze_lr``, as when unfreezing a backbone.
"""

from __future__ import annotations

import dataclasses
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
MEDIAN_BATCHES = 256


def train(spec: Spec, name: str = "", split: str = "") -> Trace:
    """Run ``spec`` for ``spec['steps']`` optimizer steps and return its trace (deterministic)."""
    torch.set_num_threads(1)
    task = load_task(spec["task"], spec["unscaled"])
    torch.manual_seed(spec["seed"])
    model = build_model(spec, task)
    if spec.get("pretrain_steps", 0):
        _pretrain(model, task, spec)
    init_loss = _init_loss(model, task, spec["seed"])
    median_ratio = _median_ratio(model, task, spec)
    unfreeze_at = spec.get("unfreeze_at")
    body: list[Tensor] = []
    if unfreeze_at is not None:
        head = set(map(id, _output_layer(model).parameters()))
        body = [p for p in model.parameters() if id(p) not in head]
        for p in body:
            p.requires_grad_(False)
    opt = _optimizer(spec, [p for p in model.parameters() if p.requires_grad])
    # LambdaLR cannot follow a param group added later: unfreezing runs keep constant LRs.
    sched = None if unfreeze_at is not None else torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(spec))
    clip, via = spec["clip"], spec["clip_via"]
    events: list[EscalationEvent] = []
    monitor = wandb_gradema.watch(
        opt, model=model, on_escalation=events.append, max_norm=clip if via == "watch" else None
    )
    n_tensors = sum(1 for g in opt.param_groups for _ in g["params"])
    faults = {int(t): (kind, arg) for t, kind, arg in spec["faults"]}
    gen = torch.Generator().manual_seed(spec["seed"])
    rows: list[Observation] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No active W&B run", GrademaWarning)
        for t in range(spec["steps"]):
            if t == unfreeze_at:
                for p in body:
                    p.requires_grad_(True)
                opt.add_param_group({"params": body, "lr": spec["unfreeze_lr"]})
            x, y = _inject(task, faults.get(t), *task.sample(spec["batch_size"], gen), seed=spec["seed"] * 7919 + t)
            loss = task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _poison(model, faults.get(t))
            if clip is not None and via == "monitor":
                monitor.clip_grad_norm_(clip)
            monitor.observe_loss(loss)
            opt.step()
            if sched is not None:
                sched.step()
            assert monitor.last is not None
            # The monitor does not fill ``param_groups`` and ``n_tensors`` yet: recorded here as
            # it will (it measures the parameters the optimizer held when watched).
            rows.append(
                dataclasses.replace(monitor.last[0], param_groups=len(opt.param_groups), n_tensors=n_tensors)
            )
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
        median_ratio=median_ratio,
        live_nonfinite=next((e.reason for e in events if "nonfinite" in e.anomaly_types), None),
    )


def _pretrain(model: torch.nn.Module, task: Task, spec: Spec) -> None:
    """Train ``model`` with Adam at ``pretrain_lr`` for ``pretrain_steps`` (own batch stream)."""
    opt = torch.optim.Adam(model.parameters(), lr=spec["pretrain_lr"])
    gen = torch.Generator().manual_seed(20_000 + spec["seed"])
    for _ in range(spec["pretrain_steps"]):
        x, y = task.sample(max(spec["batch_size"], 32), gen)
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)


def _output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last module holding parameters directly (the output layer)."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))][-1]


@torch.no_grad()
def _init_loss(model: torch.nn.Module, task: Task, seed: int) -> float:
    """L0: the mean loss over ``INIT_BATCHES`` batches at initialisation (own RNG stream)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    losses = [
        task.loss(model(x), y).item()
        for x, y in (task.sample(INIT_BATCH_SIZE, gen) for _ in range(INIT_BATCHES))
    ]
    return float(np.mean(losses))


@torch.no_grad()
def _median_ratio(model: torch.nn.Module, task: Task, spec: Spec) -> float:
    """Median / mean of ``MEDIAN_BATCHES`` batch losses at the run's batch size, before training."""
    gen = torch.Generator().manual_seed(30_000 + spec["seed"])
    losses = [task.loss(model(x), y).item() for x, y in (task.sample(spec["batch_size"], gen) for _ in range(MEDIAN_BATCHES))]
    mean = float(np.mean(losses))
    return float(np.median(losses)) / mean if mean > 0 else 1.0


def _optimizer(spec: Spec, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    kind, lr, wd = spec["optimizer"], spec["lr"], spec["weight_decay"]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec["momentum"], weight_decay=wd)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}")


def _poison(model: torch.nn.Module, fault: tuple[str, float] | None) -> None:
    """``gradnan``: a NaN in the gradient of parameter number ``arg`` (``model.parameters()``
    order) only, after backward: a NaN that begins in that layer; the update spreads it."""
    if fault is None or fault[0] != "gradnan":
        return
    grad = list(model.parameters())[int(fault[1])].grad
    if grad is not None:
        grad.view(-1)[0] = float("nan")


def _inject(
    task: Task, fault: tuple[str, float] | None, x: Tensor, y: Tensor, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A corrupted batch: ``yshuffle`` rolls targets across the batch, ``xscale`` scales inputs,
    ``ynoise`` adds noise of standard deviation ``arg`` to regression targets (``gradnan``: see
    ``_poison``)."""
    if fault is None or fault[0] == "gradnan":
        return x, y
    kind, arg = fault
    if kind == "yshuffle":
        return x, torch.roll(y, 1, dims=0)
    if kind == "xscale" and not task.is_lm:
        return x * arg, y
    if kind == "ynoise" and task.kind == "mse":
        return x, y + arg * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"fault {kind!r} does not apply to task {task.name!r}")
