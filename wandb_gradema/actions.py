"""EscalationActions: what a decided escalation does: warn, prune, raise or the user's callable.

Recording an escalation in W&B (summary, alert) and pruning (summary block, tag, sweep metric,
finishing the run *failed*) are written by the ``WandbSink``; this module decides which of them
happen. A prune is irreversible, so it needs a *confirmed* escalation (see
``EscalationEvent.confirmed``); an unconfirmed one in prune mode warns and keeps training.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .errors import EscalationError, RunPruned, warn
from .escalation import EscalationEvent
from .options import OnEscalation
from .pruning import SweepMetricPenalty
from .wandb_sink import WandbSink

__all__ = ["EscalationActions"]


class EscalationActions:
    """Acts on decided escalations of one monitor.

    Args:
        sink: the monitor's W&B sink.
        on_escalation: ``"auto"`` (prune inside a W&B sweep, else warn), ``"warn"``, ``"prune"``,
            ``"raise"`` or a callable taking the ``EscalationEvent``.
        alerts: send W&B alerts.
        penalty: the sweep metric a pruned run records, or None.
        distributed: under torch.distributed every rank must agree on "in a sweep" without a
            run: the agent's ``WANDB_SWEEP_ID`` decides there.
        summary: writes the monitor's counters into the run summary (before a prune finishes it).
    """

    def __init__(
        self,
        sink: WandbSink,
        on_escalation: OnEscalation,
        *,
        alerts: bool,
        penalty: SweepMetricPenalty | None,
        distributed: bool,
        summary: Callable[[], None],
    ) -> None:
        self.sink = sink
        self.on_escalation = on_escalation
        self.alerts = alerts
        self.penalty = penalty
        self.distributed = distributed
        self._summary = summary
        self.pruned: RunPruned | None = None

    @property
    def mode(self) -> str:
        """The action in force: ``"warn"``, ``"prune"``, ``"raise"`` or ``"callable"``."""
        action = self.on_escalation
        if callable(action):
            return "callable"
        if action == "auto":
            return "prune" if self.in_sweep() else "warn"
        return str(action)

    def in_sweep(self) -> bool:
        """Inside a W&B sweep: the run says so, or (on every rank alike) the agent's env var."""
        if self.distributed:
            return bool(os.environ.get("WANDB_SWEEP_ID"))
        try:
            return bool(self.sink.sweep_id)
        except Exception:  # noqa: BLE001 - a run that cannot say is not a sweep run
            return False

    def announce(self, event: EscalationEvent, events: list[EscalationEvent]) -> None:
        """Record a decided escalation in W&B (summary and, at most every 5 minutes, an alert)."""
        self.sink.announce(event, events, alert=self.alerts)

    def act(self, event: EscalationEvent, stop_step: int) -> None:
        """Warn, prune (confirmed escalations only), raise or call the user's handler.

        Raises:
            RunPruned: the run was pruned (it is finished, failed, in W&B).
            EscalationError: ``on_escalation="raise"``.
        """
        action = self.on_escalation
        if callable(action):
            action(event)
            return
        mode = self.mode
        if mode == "raise":
            raise EscalationError(event.step, event.reason)
        if mode == "prune" and event.confirmed:
            self.prune(event, stop_step)
        suffix = "" if mode == "warn" else " (not pruned: the evidence is below the prune bar so far)"
        warn(f"wandb_gradema: gradient drift escalated at step {event.step}: {event.reason}{suffix}")

    def prune(self, event: EscalationEvent, stop_step: int) -> None:
        """Mark the run pruned and failed in W&B, then stop training with ``RunPruned``."""
        pruned = RunPruned(stop_step, event.reason)
        sink = self.sink
        sink.mark_pruned(stop_step, event, alert=self.alerts)
        if self.penalty is not None:  # a bounded score instead of bayes imputing 0.0
            self.penalty.record(sink)
        self._summary()
        warn(f"wandb_gradema: {pruned}")
        sink.finish(exit_code=1)  # W&B state *failed*; the sink writes nothing after this
        self.pruned = pruned
        raise pruned

    def found_at_removal(self, event: EscalationEvent) -> None:
        """An escalation found after the last decision step: recorded and reported, not acted on."""
        if callable(self.on_escalation):
            return
        warn(
            f"wandb_gradema: gradient drift escalated at step {event.step}, after the last decision "
            f"step (recorded, not acted on): {event.reason}"
        )

