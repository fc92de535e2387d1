"""InstancePatch: replace one method on one object, undoably, without touching its class.

And ``weak_method``: a callback to an object that does not keep it alive.

The monitor patches ``GradScaler.step`` and the W&B run's history callback; the framework
adapters patch their frameworks' methods. One way of doing it, here.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["InstancePatch", "undo_all", "weak_method"]


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


def weak_method(method: Callable[[], None]) -> Callable[[], None]:
    """A callable standing for a bound ``method`` through a weak reference (a no-op once its
    object is gone): an object's parts can call back into it without a reference cycle, so
    plain reference counting frees it."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call
