"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch


def train_loop(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    *,
    monitor: Any = None,
    start: int = 0,
    nan_at: Any = (),
    ref_norms: list[float] | None = None,
    log: Callable[[int, float], None] | None = None,
) -> int:
    """An ordinary training loop; returns the steps done.

    Poisons the gradients with NaN at the steps in ``nan_at``, records torch's own total norm
    before each update in ``ref_norms``, and calls ``log(step, loss)`` after each update.
    """
    for i in range(start, start + steps):
        x, y = batch(i)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if monitor is not None:
            monitor.observe_loss(loss)
        loss.backward()
        if i in nan_at:
            next(model.parameters()).grad.fill_(float("nan"))
        if ref_norms is not None:
            ref_norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        opt.step()
        opt.zero_grad()
        if log is not None:
            log(i, loss.item())
    return steps


def nan_safe(value: Any) -> Any:
    """``value`` with NaN replaced by a marker, so that == compares NaN as equal."""
    if isinstance(value, dict):
        return {k: nan_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_safe(v) for v in value]
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def decided_at(step: int, sync_every: int) -> int:
    """The step whose ``step()`` decides on ``step``: the last of its decision interval."""
    return (step // sync_every + 1) * sync_every - 1


def import_without(monkeypatch: pytest.MonkeyPatch, package: str, module: str) -> ModuleType:
    """Import ``module`` afresh as if ``package`` were not installed (for the optional extras)."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.delitem(sys.modules, module)
    return importlib.import_module(module)
