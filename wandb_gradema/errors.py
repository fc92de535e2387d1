"""Exceptions and warnings raised by wandb_gradema."""

from __future__ import annotations

__all__ = ["GrademaError", "GrademaWarning", "EscalationError", "RunPruned"]


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
