"""ScalerWatch: notices the optimizer steps a ``GradScaler`` skips.

``GradScaler.step`` calls ``optimizer.step()`` only when the unscaled gradients are finite, so
the monitor's step pre-hook never sees an overflow step. Wrapping ``scaler.step`` on the
instance shows them: a call that did not reach the optimizer's hook was skipped.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ._patch import InstancePatch

__all__ = ["ScalerWatch"]


class ScalerWatch:
    """Calls ``on_skipped()`` after each ``scaler.step(optimizer)`` that skipped the update.

    Args:
        scaler: the ``torch.amp.GradScaler`` (or anything with a ``step(optimizer, ...)``).
        optimizer: the watched optimizer; steps of other optimizers are ignored.
        steps_seen: returns how many steps the optimizer's hook has observed so far.
        on_skipped: called once per skipped step.

    Only weak references to the optimizer and the callbacks' owner are kept, so the patch on
    the scaler keeps neither alive.
    """

    def __init__(
        self,
        scaler: Any,
        optimizer: Any,
        steps_seen: Callable[[], int],
        on_skipped: Callable[[], None],
    ) -> None:
        self.scaler = scaler
        self._optimizer = weakref.ref(optimizer)
        self._steps_seen = weakref.WeakMethod(steps_seen)
        self._on_skipped = weakref.WeakMethod(on_skipped)
        self._patch = InstancePatch(scaler, "step", self._step)

    def _step(self, original: Callable[..., Any], optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        steps_seen, on_skipped = self._steps_seen(), self._on_skipped()
        if steps_seen is None or on_skipped is None or optimizer is not self._optimizer():
            return original(optimizer, *args, **kwargs)
        before = steps_seen()
        out = original(optimizer, *args, **kwargs)
        if steps_seen() == before:  # the optimizer's step (and our pre-hook) never ran
            on_skipped()
        return out

    def unscale(self, optimizer: Any) -> None:
        """``scaler.unscale_(optimizer)`` unless the scaler is off or already unscaled this step."""
        scaler = self.scaler
        enabled = getattr(scaler, "is_enabled", None)
        if callable(enabled) and not enabled():
            return
        state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
        stage = getattr(state.get("stage") if isinstance(state, dict) else None, "name", "READY")
        if stage == "READY" and callable(getattr(scaler, "unscale_", None)):
            scaler.unscale_(optimizer)

    def undo(self) -> None:
        """Take the wrapper off (or make it a pass-through if someone wrapped on top)."""
        self._patch.undo()
