"""Exceptions and warnings raised by wandb_gradema."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["GrademaError", "GrademaWarning", "EscalationError", "RunPruned", "warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_TORCH = os.path.dirname(os.path.abspath(sys.modules["torch"].__file__ or "")) if "torch" in sys.modules else None
#: W&B's package: our history writer warns from inside the user's run.log() call.
_WANDB = os.sep + "wandb" + os.sep


class GrademaError(Exception):
    """Base class of wandb_gradema's errors."""


class GrademaWarning(UserWarning):
    """Warnings from wandb_gradema: escalations, logging switched off, internal errors."""


class EscalationError(GrademaError, RuntimeError):
    """Raised from ``optimizer.step()`` when ``on_escalation="raise"`` and escalation fires.

    Attributes:
        step: the optimizer step the escalation fired on.
        reason: one sentence saying why.
    """

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"Gradient drift escalated at step {step}: {reason}")
        self.step = step
        self.reason = reason


class RunPruned(SystemExit):
    """Raised from ``optimizer.step()`` to stop a pruned run at once.

    Why ``SystemExit`` and not ``Exception``: the W&B run has already been marked *failed*
    with the reason; what is left is to unwind the training loop so that the sweep agent sees a
    clean end. Uncaught in a script, it exits the process with status 0 (``wandb agent`` counts
    a success, so repeated prunes never trip its flapping check); escaping a function run by
    ``wandb.agent(function=...)``, it ends that thread quietly. ``finally:`` blocks still run,
    and training code's ``except Exception:`` handlers do not swallow it.

    Attributes:
        step: the optimizer step the run was pruned at.
        reason: one sentence saying why.
    """

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(0)
        self.step = step
        self.reason = reason

    def __str__(self) -> str:
        return f"Run pruned at step {self.step}: {self.reason}"


def warn(message: str) -> None:
    """Issue a ``GrademaWarning`` pointing at the user's line (``opt.step()``, ``watch()``...).

    Warnings raised inside the optimizer hook would otherwise point into this package or into
    torch's hook machinery (or W&B's ``log()``); the stack level is found by skipping them. Warning filters that turn
    every warning into an error (``python -W error``, pytest's ``filterwarnings = error``) never
    make ours raise inside training: the warning is shown instead. Only a filter naming
    ``GrademaWarning`` itself (an explicit opt-in) makes it raise.
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        inside = path.startswith(_PACKAGE) or (_TORCH is not None and path.startswith(_TORCH))
        if not inside and "contextlib" not in path and _WANDB not in path:
            break
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    try:
        warnings.warn(message, GrademaWarning, stacklevel=level + 1)
    except GrademaWarning:
        if _raises_explicitly(message):
            raise
        where = frame if frame is not None else sys._getframe(0)
        warnings.showwarning(GrademaWarning(message), GrademaWarning, where.f_code.co_filename, where.f_lineno)


def _raises_explicitly(message: str) -> bool:
    """The first warning filter matching ``message`` is an ``error`` filter for GrademaWarning
    (or a subclass of it), not one for all warnings."""
    for action, regex, category, _module, _lineno in warnings.filters:
        if not issubclass(GrademaWarning, category) or (regex is not None and not regex.match(message)):
            continue
        return action == "error" and isinstance(category, type) and issubclass(category, GrademaWarning)
    return False
