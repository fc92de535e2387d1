"""EscalationPolicy: turns per-step anomaly reports into escalation events, with patience.

Two bars: an escalation (telemetry, summary, alert, warning: cheap, reversible) fires after
``patience`` anomalous steps in a row; a *confirmed* escalation, the only kind the monitor
prunes on, needs a prune-grade report (``AnomalyReport.confirmed``: critical, persistent or
corroborated) and may fire even inside the cooldown of an earlier unconfirmed escalation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._validate import check_int, check_state_keys
from .detector import AnomalyReport

__all__ = ["EscalationEvent", "EscalationPolicy"]


@dataclass(frozen=True)
class EscalationEvent:
    """One escalation: drift judged real.

    Attributes:
        step: the optimizer step it fired on.
        reasons: one sentence per rule behind it, the most recent wording of each.
        anomaly_types: the rules behind it (``"nonfinite"``, ``"grad_explosion"``...).
        score: the detector's score on the firing step.
        first_anomaly_step: where the run of anomalous steps that led here began.
        confirmed: prune-grade evidence (critical, persistent or corroborated; see
            ``AnomalyDetector``). The monitor prunes only on confirmed events.
    """

    step: int
    reasons: tuple[str, ...]
    anomaly_types: tuple[str, ...]
    score: float
    first_anomaly_step: int
    confirmed: bool = False

    @property
    def reason(self) -> str:
        """The reasons as one line."""
        return " ".join(self.reasons)


class EscalationPolicy:
    """Escalates after ``patience`` consecutive anomalous steps, or at once on critical (and
    immediate) ones.

    After an escalation, no new one fires for ``cooldown_steps`` steps, and detailed
    telemetry (per-layer gradient norms) stays on for ``telemetry_steps`` steps.

    **Prune bar**: an event is ``confirmed`` when the report it fires on is (critical reports
    always are). A confirmed report arriving during the cooldown of an *unconfirmed*
    escalation fires one confirmed event there and then (so the prune is not delayed by the
    cheaper alert before it); after a confirmed event, nothing fires for ``cooldown_steps``.

    Args:
        patience: consecutive anomalous steps needed, >= 1. Default 3.
        cooldown_steps: quiet steps after an escalation, >= 0. Default 100.
        telemetry_steps: steps of per-layer telemetry after an escalation, >= 0. Default 50.
    """

    def __init__(self, patience: int = 3, cooldown_steps: int = 100, telemetry_steps: int = 50) -> None:
        self.patience = check_int("patience", patience, minimum=1)
        self.cooldown_steps = check_int("cooldown_steps", cooldown_steps, minimum=0)
        self.telemetry_steps = check_int("telemetry_steps", telemetry_steps, minimum=0)
        self.reset()

    def reset(self) -> None:
        """Forget the streak, cooldowns and telemetry window."""
        self._streak = 0
        self._streak_start = -1
        self._streak_reasons: dict[str, str] = {}
        self._quiet_until = -1  # last step of the cooldown after any escalation
        self._confirmed_quiet_until = -1  # last step of the cooldown after a confirmed one
        self._telemetry_until = -1  # last step of the telemetry window

    def telemetry_active(self, step: int) -> bool:
        """True while detailed telemetry is on for ``step``."""
        return step <= self._telemetry_until

    def quiet(self) -> None:
        """``update`` with a report of no anomaly (the monitor's quiet step: no report built)."""
        self._streak = 0
        if self._streak_reasons:
            self._streak_reasons = {}

    def update(self, report: AnomalyReport) -> EscalationEvent | None:
        """Fold one report in; return an event when escalation fires on this step."""
        if not report.has_anomaly:
            self._streak = 0
            if self._streak_reasons:  # a quiet step allocates nothing
                self._streak_reasons = {}
            return None
        if self._streak == 0:
            self._streak_start = report.step
        self._streak += 1
        self._streak_reasons.update(report.details)
        confirmed = report.confirmed or report.critical
        due = report.critical or report.immediate or self._streak >= self.patience
        step = report.step
        if not (due and step > self._quiet_until) and not (confirmed and step > self._confirmed_quiet_until):
            return None
        event = EscalationEvent(
            step=step,
            reasons=tuple(self._streak_reasons.values()),
            anomaly_types=tuple(self._streak_reasons),
            score=report.score,
            first_anomaly_step=self._streak_start,
            confirmed=confirmed,
        )
        self._quiet_until = step + self.cooldown_steps
        if confirmed:
            self._confirmed_quiet_until = self._quiet_until
        self._telemetry_until = max(self._telemetry_until, step + self.telemetry_steps)
        self._streak = 0
        self._streak_reasons = {}
        return event

    def adopt(self, step: int, *, confirmed: bool = False) -> None:
        """Take on an escalation decided at ``step`` elsewhere (another rank): same windows."""
        self._quiet_until = step + self.cooldown_steps
        if confirmed:
            self._confirmed_quiet_until = self._quiet_until
        self._telemetry_until = step + self.telemetry_steps
        self._streak = 0
        self._streak_reasons = {}

    def state_dict(self) -> dict[str, Any]:
        """The streak, cooldowns and telemetry window, as plain Python values."""
        return {
            "streak": self._streak,
            "streak_start": self._streak_start,
            "streak_reasons": dict(self._streak_reasons),
            "quiet_until": self._quiet_until,
            "confirmed_quiet_until": self._confirmed_quiet_until,
            "telemetry_until": self._telemetry_until,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        check_state_keys("EscalationPolicy", state, tuple(self.state_dict()))
        self._streak = int(state["streak"])
        self._streak_start = int(state["streak_start"])
        self._streak_reasons = dict(state["streak_reasons"])
        self._quiet_until = int(state["quiet_until"])
        self._confirmed_quiet_until = int(state["confirmed_quiet_until"])
        self._telemetry_until = int(state["telemetry_until"])
