"""Optimizers inside framework wrappers: find the one that steps, and its GradScaler.

Hugging Face Accelerate's ``AcceleratedOptimizer`` and Lightning's ``LightningOptimizer`` wrap
a torch optimizer without calling ``Optimizer.__init__``, so they carry no hooks of their own.
``watch()`` watches the optimizer inside: its ``step()`` runs once per real update (Accelerate
skips it on accumulation micro-steps and on GradScaler overflows), and the wrapper's GradScaler
is the one whose skipped steps are counted.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["inner_scaler", "not_an_optimizer", "unwrap_optimizer"]


def not_an_optimizer(obj: Any) -> TypeError:
    """The error for something ``watch()`` cannot hook, saying what to pass instead."""
    return TypeError(
        f"watch() expects a torch.optim.Optimizer, got {type(obj).__name__}. "
        "Pass the optimizer whose step() runs the update (for Lightning, use the "
        "wandb_gradema.integrations.lightning callback)."
    )


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (or ``optimizer`` itself).

    Raises:
        TypeError: nothing inside is a ``torch.optim.Optimizer``.
    """
    seen = 0
    while not _is_plain_optimizer(optimizer) and seen < 8:
        inner = getattr(optimizer, "_optimizer", None) or getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise not_an_optimizer(optimizer)
    return optimizer


def inner_scaler(wrapper: Any) -> Any:
    """The enabled GradScaler a wrapper steps its optimizer with (Accelerate's), or None."""
    scaler = getattr(wrapper, "scaler", None)
    if scaler is None or not callable(getattr(scaler, "step", None)):
        return None
    enabled = getattr(scaler, "is_enabled", None)
    return scaler if not callable(enabled) or enabled() else None


def _is_plain_optimizer(optimizer: Any) -> bool:
    """A torch optimizer that is not itself a wrapper around another one."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return False
    inner = getattr(optimizer, "optimizer", None)
    return not isinstance(inner, torch.optim.Optimizer) and hasattr(optimizer, "_optimizer_step_pre_hooks")
