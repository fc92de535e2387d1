"""StepJudge: one read-back step through the tracker, the detector and the escalation policy.

The host side of the dataflow, one step at a time and in order: the health score from the
stats row (``norms``), the classic drift indicators (``GradientEMATracker``), the anomaly
report (``AnomalyDetector``), the escalation decision of this rank (``EscalationPolicy``) and,
when the logging cadence or an escalation asks for it, the step's W&B row (``LogAggregator``).
It holds no tensors and decides nothing across ranks: the monitor does that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import norms
from .aggregate import LogAggregator
from .cadence import LogCadence
from .detector import AnomalyDetector, AnomalyReport, Observation
from .errors import warn
from .escalation import EscalationEvent, EscalationPolicy
from .readback import StepValues
from .tracker import DriftUpdate, GradientEMATracker

__all__ = ["MAX_TELEMETRY_LAYERS", "StepJudge"]

#: Per-layer norms logged on a telemetry step, largest first (non-finite ones lead).
MAX_TELEMETRY_LAYERS = 128
#: Steps in a row with the same gradient norm that mean the gradients were clipped before step().
CLIPPED_RUN = 25

Row = tuple[int, dict[str, Any]]


class StepJudge:
    """Judges steps in order; keeps the running statistics and the last judged step.

    Args:
        tracker, detector, policy: the three judges, fed in this order.
        cadence: picks the steps whose rows are logged.
        max_skipped_steps: GradScaler-skipped steps in a row that escalate (critical).
    """

    def __init__(
        self,
        tracker: GradientEMATracker,
        detector: AnomalyDetector,
        policy: EscalationPolicy,
        cadence: LogCadence,
        max_skipped_steps: int,
    ) -> None:
        self.tracker = tracker
        self.detector = detector
        self.policy = policy
        self.cadence = cadence
        self.max_skipped_steps = max_skipped_steps
        self.aggregator = LogAggregator()
        self.skip_streak = 0
        self.last: tuple[Observation, DriftUpdate, AnomalyReport] | None = None
        self._same_norm = 0  # steps in a row with exactly the previous norm (clipping before step())
        self._hinted = False

    def judge(
        self, v: StepValues, names: Sequence[str], *, logging: bool | Callable[[], bool]
    ) -> tuple[EscalationEvent | None, Row | None]:
        """Judge one step; its escalation (this rank's) and its row when one is due.

        ``logging``: rows are wanted (a W&B run takes them), or a callable asked only when a
        row is due (most steps log nothing, and looking the run up costs more than judging).
        """
        row = v.row
        if row is None:
            return self.skipped(v.step), None
        self.skip_streak = 0
        n_tensors = len(v.layer_index)
        if n_tensors == 0:  # no parameter had a gradient (step() without backward()): a no-op
            self.aggregator.counters["steps"] += 1  # update, counted but not judged
            return None, None
        grad_norm = row.grad_norm
        health, active, _ = norms.health_score(n_tensors, row.n_active, grad_norm, row.max_tensor_norm)
        step = v.step
        obs = Observation(
            step=step,
            grad_norm=grad_norm,
            health=health,
            loss=v.loss,
            lr=v.lr,
            active_share=active,
            n_nonfinite=n_tensors - int(row.n_finite),
            param_groups=v.param_groups,
            n_tensors=n_tensors,
        )
        if not self._hinted:
            self._check_clipped(grad_norm)
        drift = self.tracker.update(grad_norm, health)
        report = self.detector.check(obs)
        event = self.policy.update(report)
        self.aggregator.add(obs, drift, report)
        self.last = (obs, drift, report)
        telemetry = self.policy.telemetry_active(step)
        if event is None and not telemetry and not self.cadence.due(step):
            return event, None
        if not (logging() if callable(logging) else logging):
            return event, None
        extra = _layer_metrics(v, names) if telemetry or event is not None else None
        metrics = self.aggregator.row(obs, drift, report, escalated=telemetry, event=event is not None, extra=extra)
        self.cadence.logged(obs.step)
        return event, (obs.step, metrics)

    def skipped(self, step: int) -> EscalationEvent | None:
        """Count one step the GradScaler skipped; ``max_skipped_steps`` in a row escalate."""
        self.aggregator.counters["skipped_steps"] += 1
        self.skip_streak += 1
        if self.skip_streak < self.max_skipped_steps:
            return None
        report = AnomalyReport(
            step=step,
            has_anomaly=True,
            anomaly_types=("skipped_steps",),
            details={
                "skipped_steps": f"{self.skip_streak} optimizer steps in a row skipped by the "
                "GradScaler (inf/NaN gradients at every loss scale)."
            },
            score=math.inf,
            critical=True,
        )
        self.skip_streak = 0
        return self.policy.update(report)

    def last_row(self) -> Row | None:
        """A row for the last judged step (the end of a run with the adaptive cadence)."""
        if self.last is None:
            return None
        obs, drift, report = self.last
        telemetry = self.policy.telemetry_active(obs.step)
        return obs.step, self.aggregator.row(obs, drift, report, escalated=telemetry, event=False)

    def _check_clipped(self, grad_norm: float) -> None:
        """Warn once when the norm repeats exactly: the script clips before ``step()``."""
        if self._hinted:
            return
        previous = self.last[0].grad_norm if self.last is not None else math.nan
        same = grad_norm > 0 and math.isfinite(grad_norm) and abs(grad_norm - previous) <= 1e-6 * grad_norm
        self._same_norm = self._same_norm + 1 if same else 0
        if self._same_norm >= CLIPPED_RUN:
            self._hinted = True
            warn(
                f"wandb_gradema: the gradient norm has been {grad_norm:.6g} on {CLIPPED_RUN} steps in a "
                "row: the gradients look clipped before optimizer.step(), so gradema sees post-clip "
                "norms and its gradient rules cannot see an explosion. Clip with "
                "monitor.clip_grad_norm_(max_norm) or watch(..., max_norm=...) instead: the same "
                "clipping, with the pre-clip norm tracked."
            )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The running statistics, by the monitor's state keys."""
        return {
            "skip_streak": self.skip_streak,
            "cadence": self.cadence.state_dict(),
            "tracker": self.tracker.state_dict(),
            "detector": self.detector.state_dict(),
            "policy": self.policy.state_dict(),
            "aggregator": self.aggregator.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, detector: bool = True) -> None:
        """Restore ``state_dict()``'s keys; ``detector=False`` leaves the detector fresh."""
        if detector:
            self.detector.load_state_dict(state["detector"])
        self.tracker.load_state_dict(state["tracker"])
        self.policy.load_state_dict(state["policy"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.cadence.load_state_dict(state["cadence"])
        self.skip_streak = int(state["skip_streak"])


def _layer_metrics(v: StepValues, names: Sequence[str]) -> dict[str, float]:
    """Per-parameter norms of a step (telemetry), the largest ``MAX_TELEMETRY_LAYERS`` first."""
    if v.layer_norms is None:
        return {}
    pairs = [(names[i], value) for i, value in zip(v.layer_index, v.layer_norms) if i < len(names)]
    if len(pairs) > MAX_TELEMETRY_LAYERS:
        pairs.sort(key=lambda kv: -math.inf if not math.isfinite(kv[1]) else -kv[1])
        pairs = pairs[:MAX_TELEMETRY_LAYERS]
    return {f"layers/{name}": value for name, value in pairs}
