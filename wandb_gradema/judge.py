"""StepJudge: one read-back step through the tracker, the detector and the escalation policy.

The host side of the dataflow, one step at a time and in order: the health score from the
stats row (``norms``), the classic drift indicators (``GradientEMATracker``), the anomaly
report (``AnomalyDetector``), the escalation decision of this rank (``EscalationPolicy``) and,
when the logging cadence or an escalation asks for it, the step's W&B row (``LogAggregator``).
It holds no tensors and decides nothing across ranks: the monitor does that.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import norms
from ._validate import check_state_keys
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
#: Parameters named in the sentence on where a non-finite gradient began.
MAX_NAMED = 4

Row = tuple[int, dict[str, Any]]


class StepJudge:
    """Judges steps in order; keeps the running statistics and the last judged step.

    Args:
        tracker, detector, policy: the three judges, fed in this order.
        cadence: picks the steps whose rows are logged.
        max_skipped_steps: GradScaler-skipped steps in a row that escalate (critical).
        params_finite: says whether the watched parameters are all finite (asked only on a
            non-finite step that follows another); None: never asked.

    Non-finite steps: the first of a run of them names the parameters whose gradient norms went
    non-finite (from the per-tensor norms, in the report, the event and the row's
    ``nonfinite_source``); once the parameters themselves are non-finite, one warning says so
    ("parameters non-finite since step N"; ``params_nonfinite_since`` in the summary), and the
    steps after it are logged and counted but escalate nothing new: it is one incident, not one
    every ``cooldown_steps``.
    """

    def __init__(
        self,
        tracker: GradientEMATracker,
        detector: AnomalyDetector,
        policy: EscalationPolicy,
        cadence: LogCadence,
        max_skipped_steps: int,
        params_finite: Callable[[], bool] | None = None,
    ) -> None:
        self.tracker = tracker
        self.detector = detector
        self.policy = policy
        self.cadence = cadence
        self.max_skipped_steps = max_skipped_steps
        self.aggregator = LogAggregator()
        self.skip_streak = 0
        self._last: tuple[Observation, DriftUpdate, AnomalyReport] | None = None
        self._quiet: tuple[Any, ...] | None = None  # the last step's values when it was quiet (built on demand)
        self._last_norm = math.nan  # the last judged step's gradient norm
        # The package's own judges (not subclasses): a quiet step goes through their field-wise
        # calls and builds its Observation, DriftUpdate and AnomalyReport only when asked for.
        # (Any object with the methods the object path calls may stand in: looked up with a default.)
        self._lean = all(
            getattr(type(obj), name, None) is getattr(cls, name)
            for obj, cls, name in (
                (tracker, GradientEMATracker, "fold"),
                (tracker, GradientEMATracker, "update"),
                (detector, AnomalyDetector, "check"),
                (detector, AnomalyDetector, "check_fields"),
                (policy, EscalationPolicy, "update"),
            )
        )
        self._same_norm = 0  # steps in a row with exactly the previous norm (clipping before step())
        self._hinted = False
        self.params_finite = params_finite
        self.nonfinite_since = -1  # first step of the current run of non-finite steps (-1: none)
        self.nonfinite_source = ""  # the parameters it began in (a sentence's list)
        self.params_nonfinite_since = -1  # the parameters are non-finite, since this step (-1: not)
        self.params_told = False  # ... and the user has been told (``Decisions.params_notice``)
        self.unrecorded: dict[int, str] = {}  # incidents' first steps -> source, for the summary

    @property
    def last(self) -> tuple[Observation, DriftUpdate, AnomalyReport] | None:
        """The last judged step: its observation, drift indicators and anomaly report."""
        quiet = self._quiet
        if quiet is not None:  # a quiet step's objects, built now
            self._quiet = None
            step, g, health, loss, lr, active, n_nonfinite, groups, n_tensors, fields, score = quiet
            self._last = (
                Observation(step, g, health, loss, lr, active, n_nonfinite, groups, n_tensors),
                DriftUpdate(*fields),
                AnomalyReport(step, False, (), {}, score),
            )
        return self._last

    @last.setter
    def last(self, value: tuple[Observation, DriftUpdate, AnomalyReport] | None) -> None:
        self._last, self._quiet = value, None
        self._last_norm = value[0].grad_norm if value is not None else math.nan

    def last_inputs(self) -> tuple[int, float | None, float, float, float | None] | None:
        """The last judged step's ``(step, loss, grad_norm, active_share, lr)``, without building
        its objects (the sweep-aware judgement reads these on every step)."""
        quiet = self._quiet
        if quiet is not None:
            return quiet[0], quiet[3], quiet[1], quiet[5], quiet[4]
        if self._last is None:
            return None
        obs = self._last[0]
        return obs.step, obs.loss, obs.grad_norm, obs.active_share, obs.lr

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
            self.aggregator.counters["steps"] += 1  # update, counted but not judged ...
            if v.loss is not None and not math.isfinite(v.loss):  # ... but a non-finite loss counts
                return self._nonfinite(self.detector.nonfinite_loss(v.step, v.loss), v, names), None
            return None, None
        grad_norm = row.grad_norm
        health, active, _ = norms.health_score(n_tensors, row.n_active, grad_norm, row.max_tensor_norm)
        step, loss, lr, groups = v.step, v.loss, v.lr, v.param_groups
        n_nonfinite = n_tensors - int(row.n_finite)
        if not self._hinted:  # the norm repeats exactly (clipping before step()): see _check_clipped
            if grad_norm > 0 and abs(grad_norm - self._last_norm) <= 1e-6 * grad_norm:
                self._check_clipped(grad_norm)
            elif self._same_norm:
                self._same_norm = 0
        detector = self.detector
        # The package's own tracker, detector and policy (and no ``check`` set on the detector
        # itself, as a test injecting a fault does): a quiet step builds no object.
        if self._lean and "check" not in detector.__dict__:
            fields = self.tracker.fold(grad_norm, health)
            report: AnomalyReport | None = detector.check_fields(step, grad_norm, active, loss, lr, groups)
            if report is None and self.nonfinite_since < 0:  # quiet: what ``update`` and ``add`` would do
                score = detector.score
                self.policy.quiet()
                self.aggregator.add_values(grad_norm, health, fields[2], fields[3], score)
                self._last = None
                self._last_norm = grad_norm
                self._quiet = (step, grad_norm, health, loss, lr, active, n_nonfinite, groups, n_tensors, fields, score)
                telemetry = self.policy.telemetry_active(step)
                if not telemetry and not self.cadence.due(step):
                    return None, None
                if not (logging() if callable(logging) else logging):  # no run takes rows: nothing built
                    return None, None
                last = self.last
                assert last is not None
                return None, self._row(v, names, last[0], last[1], last[2], None, telemetry, True)
            obs = Observation(step, grad_norm, health, loss, lr, active, n_nonfinite, groups, n_tensors)
            drift = DriftUpdate(*fields)
            if report is None:
                report = AnomalyReport(step, False, (), {}, detector.score)
        else:
            # Positional (step, grad_norm, health, loss, lr, active_share, n_nonfinite, param_groups,
            # n_tensors): a frozen dataclass's keyword call costs a third more.
            obs = Observation(step, grad_norm, health, loss, lr, active, n_nonfinite, groups, n_tensors)
            drift = self.tracker.update(grad_norm, health)
            report = detector.check(obs)
        if report.critical or self.nonfinite_since >= 0:
            event = self._nonfinite(report, v, names)
        else:
            event = self.policy.update(report)
        self.aggregator.add(obs, drift, report)
        self.last = (obs, drift, report)
        telemetry = self.policy.telemetry_active(step)
        if event is None and not telemetry and not self.cadence.due(step):
            return event, None
        return event, self._row(v, names, obs, drift, report, event, telemetry, logging)

    def _row(
        self,
        v: StepValues,
        names: Sequence[str],
        obs: Observation,
        drift: DriftUpdate,
        report: AnomalyReport,
        event: EscalationEvent | None,
        telemetry: bool,
        logging: bool | Callable[[], bool],
    ) -> Row | None:
        """The row of a judged step that is due one (None: no run takes rows)."""
        if not (logging() if callable(logging) else logging):
            return None
        extra: dict[str, Any] | None = _layer_metrics(v, names) if telemetry or event is not None else None
        if self.nonfinite_since == obs.step and self.nonfinite_source:
            extra = {**(extra or {}), "nonfinite_source": self.nonfinite_source}
        metrics = self.aggregator.row(obs, drift, report, escalated=telemetry, event=event is not None, extra=extra)
        self.cadence.logged(obs.step)
        return obs.step, metrics

    def _nonfinite(self, report: AnomalyReport, v: StepValues, names: Sequence[str]) -> EscalationEvent | None:
        """Follow a run of non-finite steps (see the class docstring); the step's escalation."""
        if "nonfinite" not in report.details:  # finite again: the run is over
            self.nonfinite_since = self.params_nonfinite_since = -1
            self.nonfinite_source = ""
            return self.policy.update(report)
        if self.nonfinite_since < 0:  # the first non-finite step: where did it begin?
            self.nonfinite_since = v.step
            self.nonfinite_source, where = _nonfinite_source(v, names)
            self.unrecorded[v.step] = self.nonfinite_source or "loss"
            details = {**report.details, "nonfinite": f"{report.details['nonfinite']} {where}".rstrip()}
            report = dataclasses.replace(report, details=details)
            event = self.policy.update(report)
            if event is None:  # inside an earlier escalation's cooldown: a NaN is a new incident
                event = EscalationEvent(
                    step=v.step,
                    reasons=tuple(details.values()),
                    anomaly_types=tuple(details),
                    score=report.score,
                    first_anomaly_step=v.step,
                    confirmed=True,
                )
                self.policy.adopt(v.step, confirmed=True)
            return event
        if self.params_nonfinite_since >= 0:
            return None  # said once: the same incident, not a new one
        if self.params_finite is None or self.params_finite():
            return self.policy.update(report)  # a loop that skips bad batches: each one counts
        self.params_nonfinite_since = self.nonfinite_since  # said by the decisions, once
        return None

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
        previous = self._last_norm
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
            "nonfinite": {
                "since": self.nonfinite_since,
                "source": self.nonfinite_source,
                "params_since": self.params_nonfinite_since,
                "params_told": self.params_told,
                "unrecorded": [[step, source] for step, source in self.unrecorded.items()],
            },
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
        nonfinite = state["nonfinite"]
        check_state_keys(
            "StepJudge['nonfinite']", nonfinite, ("since", "source", "params_since", "params_told", "unrecorded")
        )
        self.unrecorded = {int(step): str(source) for step, source in nonfinite["unrecorded"]}
        self.nonfinite_since, self.nonfinite_source = int(nonfinite["since"]), str(nonfinite["source"])
        self.params_nonfinite_since = int(nonfinite["params_since"])
        self.params_told = bool(nonfinite["params_told"])


def _nonfinite_source(v: StepValues, names: Sequence[str]) -> tuple[str, str]:
    """The parameters whose gradient norms are non-finite on step ``v`` (the source of a NaN), as a
    list for the row and a sentence for the report; empty without per-tensor norms."""
    if v.layer_norms is None or not names:
        return "", ""
    bad = [names[i] for i, value in zip(v.layer_index, v.layer_norms) if not math.isfinite(value) and i < len(names)]
    if not bad:  # the gradients are finite: the loss alone was not
        return "", "The gradients are finite: it began in the loss."
    shown = ", ".join(bad[:MAX_NAMED]) + (f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else "")
    total = len(v.layer_norms)
    if len(bad) == total:
        where = (
            f"Every parameter's gradient is non-finite ({total} of {total}; nearest the output: {bad[-1]}): "
            "it came in through the forward pass or the loss."
        )
    else:
        where = f"It began in the gradients of {shown} ({len(bad)} of {total}; nearest the output: {bad[-1]})."
    return ", ".join(bad), where


def _layer_metrics(v: StepValues, names: Sequence[str]) -> dict[str, float]:
    """Per-parameter norms of a step (telemetry), the largest ``MAX_TELEMETRY_LAYERS`` first."""
    if v.layer_norms is None:
        return {}
    pairs = [(names[i], value) for i, value in zip(v.layer_index, v.layer_norms) if i < len(names)]
    if len(pairs) > MAX_TELEMETRY_LAYERS:
        pairs.sort(key=lambda kv: -math.inf if not math.isfinite(kv[1]) else -kv[1])
        pairs = pairs[:MAX_TELEMETRY_LAYERS]
    return {f"layers/{name}": value for name, value in pairs}
