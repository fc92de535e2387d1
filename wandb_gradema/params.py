"""WatchedParams: the optimizer's parameters as the monitor measures them, kept up to date.

Why a class: ``optimizer.add_param_group(...)`` after ``watch()`` (unfreezing layers while
fine-tuning) adds parameters that must be measured and named too. A cheap signature of the
param groups (their count and sizes) is compared on every step; the list is rebuilt only when
it changes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WatchedParams", "check_materialized", "is_sharded", "largest_lr"]


def is_sharded(param: torch.Tensor) -> bool:
    """True for a parameter whose gradient holds only this rank's shard.

    FSDP2 parameters are ``DTensor``s; FSDP1 marks its ``FlatParameter``s and, with
    ``use_orig_params=True``, the original parameters (views into the local shard) with
    ``_fsdp_flattened``.
    """
    return type(param).__name__ in ("DTensor", "FlatParameter") or bool(getattr(param, "_fsdp_flattened", False))


def check_materialized(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None) -> None:
    """Refuse parameters on the meta device (a shape without data: no gradient to measure).

    Raises:
        ValueError: naming the first such parameter and how to materialize the model.
    """
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    for gi, g in enumerate(optimizer.param_groups):
        for pi, p in enumerate(g["params"]):
            if p.device.type == "meta":
                raise ValueError(
                    f"watch(): parameter '{names.get(id(p), f'group{gi}.param{pi}')}' is on the meta device "
                    "(a shape without data): there are no gradients to measure. Materialize the model first "
                    "(model.to_empty(device=...), then load or initialise the weights), build the optimizer "
                    "over those parameters, then call watch()."
                )


class WatchedParams:
    """The parameters of ``optimizer``'s groups, in order, with a readable name for each.

    Args:
        optimizer: the optimizer whose ``param_groups`` are read (not kept: the caller passes it
            to ``refresh``).
        model: names parameters (``model.named_parameters()``); others are ``group<g>.param<i>``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None) -> None:
        self._model_names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self._signature: list[int] = []
        self.refresh(optimizer)

    def refresh(self, optimizer: torch.optim.Optimizer) -> bool:
        """Re-read the param groups if they changed; True when they did."""
        groups = optimizer.param_groups
        signature = [len(g["params"]) for g in groups]  # a list comprehension: checked every step
        if signature == self._signature:
            return False
        self._signature = signature
        # Zero-size parameters (a rank-0 adapter) have nothing to measure: left out, or every
        # one would count as a dead tensor.
        named = [
            (p, self._model_names.get(id(p), f"group{gi}.param{pi}"))
            for gi, g in enumerate(groups)
            for pi, p in enumerate(g["params"])
            if p.numel() > 0
        ]
        self.params = [p for p, _ in named]
        self.names = [name for _, name in named]
        return True

    @property
    def on_cpu(self) -> bool:
        """Every parameter lives on the CPU (reading values back costs nothing)."""
        return all(p.device.type == "cpu" for p in self.params)

    @property
    def uniform(self) -> bool:
        """One device and one dtype for all: the foreach kernels need no grouping."""
        return len({(p.device, p.dtype) for p in self.params}) <= 1

    @property
    def any_sharded(self) -> bool:
        """Some parameter is an FSDP shard (see ``is_sharded``)."""
        return any(is_sharded(p) for p in self.params)


def largest_lr(optimizer: torch.optim.Optimizer, *, host: bool) -> float | Tensor | None:
    """The largest learning rate of the param groups (None when none has one).

    Tensor LRs (capturable optimizers) on an accelerator stay there: a 0-d tensor read back
    with the step's other values, never a sync of its own. ``host``: read them now.
    """
    groups = optimizer.param_groups
    if len(groups) == 1:  # the common case, every step: no lists
        lr = groups[0].get("lr")
        if isinstance(lr, float):
            return lr
    lrs = [g.get("lr") for g in groups]
    floats = [float(v) for v in lrs if isinstance(v, (int, float))]
    tensors = [v for v in lrs if isinstance(v, Tensor)]
    if not tensors:
        return max(floats) if floats else None
    if host or all(t.device.type == "cpu" for t in tensors):
        return max(floats + [float(t) for t in tensors])
    dev = tensors[0].device
    stacked = torch.stack([t.detach().to(dev).float().reshape(()) for t in tensors]).amax()
    return torch.maximum(stacked, torch.tensor(max(floats), device=dev)) if floats else stacked
