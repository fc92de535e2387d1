"""Plumbing shared by the framework adapters: option checks, instance patches, closures.

Nothing here decides anything about gradients; it only lets an adapter build the same monitor
``wandb_gradema.watch()`` builds and call it at the right moment of a framework's loop.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._validate import reject_unknown
from ..monitor import GradientMonitor
from ..options import DETECTOR_OPTIONS

#: Every keyword ``watch()`` accepts.
WATCH_OPTIONS = (
    tuple(n for n in inspect.signature(GradientMonitor.__init__).parameters if n not in ("self", "optimizer"))
    + DETECTOR_OPTIONS
)


def check_options(where: str, options: Mapping[str, Any], reserved: Mapping[str, str]) -> None:
    """Validate ``watch()`` options now, with ``watch()``'s own checks and messages.

    Why: an adapter builds its monitor when training starts; a typo should fail when the adapter
    is created, not minutes later. ``reserved`` maps the options the adapter sets itself to the
    reason, which the error repeats.

    Raises:
        TypeError: an option is unknown, reserved or mistyped.
        ValueError: an option is out of range.
    """
    for name, why in reserved.items():
        if name in options:
            raise TypeError(f"{where} sets `{name}` itself ({why}); do not pass it.")
    reject_unknown(where, options, [n for n in WATCH_OPTIONS if n not in reserved])
    # A throwaway monitor on a throwaway optimizer runs every check watch() runs. Its sink is
    # switched off before anything could reach W&B; ``object()`` as run carries no config
    # (the real run is checked when the adapter calls watch()).
    from .. import watch

    checked = {k: v for k, v in options.items() if k != "run"}
    probe = watch(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0),
        run=object(),
        **{"save_with_optimizer": False, **checked},
    )
    probe.sink.enabled = False
    probe.remove()


class InstancePatch:
    """Replaces ``obj.<name>`` on one instance by ``wrapper(original, *args, **kwargs)``.

    Why: the frameworks call ``optimizer.step`` / ``scaler.step`` / their own methods at fixed
    points we cannot hook otherwise. The patch is bound like a method (torch's LR scheduler
    wraps ``optimizer.step.__func__``), stacks with other instance patches, and ``undo()``
    restores what was there, or turns itself into a pass-through if someone patched on top.
    """

    def __init__(self, obj: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self._obj = obj
        self._name = name
        self._had_own = name in vars(obj)
        self._previous = vars(obj).get(name)
        original = getattr(obj, name)
        self.active = True
        patch = self

        def patched(_self: Any, *args: Any, **kwargs: Any) -> Any:
            if patch.active:
                return wrapper(original, *args, **kwargs)
            return original(*args, **kwargs)

        # Keep markers others set on the method (torch's LR scheduler checks `_wrapped_by_lr_sched`).
        patched.__dict__.update(getattr(original, "__dict__", {}))
        self._bound = types.MethodType(patched, obj)
        setattr(obj, name, self._bound)

    def undo(self) -> None:
        """Take the patch off (idempotent)."""
        if not self.active:
            return
        self.active = False
        if vars(self._obj).get(self._name) is self._bound:
            if self._had_own:
                setattr(self._obj, self._name, self._previous)
            else:
                delattr(self._obj, self._name)


def undo_all(patches: list[InstancePatch]) -> None:
    """Undo ``patches`` newest first and empty the list."""
    while patches:
        patches.pop().undo()


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (LightningOptimizer, AcceleratedOptimizer)."""
    seen = 0
    while not _is_plain_optimizer(optimizer) and seen < 8:
        inner = getattr(optimizer, "_optimizer", None) or getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Expected a torch.optim.Optimizer inside {type(optimizer).__name__}.")
    return optimizer


def _is_plain_optimizer(optimizer: Any) -> bool:
    """A torch optimizer that is not itself a wrapper around another one."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return False
    inner = getattr(optimizer, "optimizer", None)
    return not isinstance(inner, torch.optim.Optimizer)
