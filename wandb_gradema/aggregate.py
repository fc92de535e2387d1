"""LogAggregator: what happened between two logged rows, so thinned logging loses nothing."""

from __future__ import annotations

import math
from typing import Any

from ._validate import check_state_keys
from .detector import AnomalyReport, Observation
from .tracker import DriftUpdate

__all__ = ["LogAggregator"]

_NAN = math.nan


class LogAggregator:
    """Keeps per-window maxima and run-long counters; builds the row for one W&B log call.

    Window values (reset after each logged row): the largest norm drift, health drift,
    detector score and gradient norm, and the lowest health seen since the previous row.
    Counters (never reset): steps observed, steps with non-finite gradients, steps skipped by
    a GradScaler, escalations.

    ``add`` runs on every judged step, so the window is kept in plain attributes (no dict, no
    call per value); ``window`` builds the dict only for a row or a checkpoint.
    """

    _WINDOW = ("norm_drift_max", "health_drift_max", "score_max", "grad_norm_max", "health_min")
    _COUNTERS = ("steps", "nonfinite_steps", "skipped_steps", "escalations")

    def __init__(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(self._COUNTERS, 0)
        self._reset_window()

    def _reset_window(self) -> None:
        self._norm_drift_max = self._health_drift_max = self._score_max = _NAN
        self._grad_norm_max = self._health_min = _NAN

    @property
    def window(self) -> dict[str, float]:
        """The window values by name (a new dict)."""
        return {
            "norm_drift_max": self._norm_drift_max,
            "health_drift_max": self._health_drift_max,
            "score_max": self._score_max,
            "grad_norm_max": self._grad_norm_max,
            "health_min": self._health_min,
        }

    @window.setter
    def window(self, values: dict[str, float]) -> None:
        self._norm_drift_max = values["norm_drift_max"]
        self._health_drift_max = values["health_drift_max"]
        self._score_max = values["score_max"]
        self._grad_norm_max = values["grad_norm_max"]
        self._health_min = values["health_min"]

    def add(self, obs: Observation, drift: DriftUpdate, report: AnomalyReport) -> None:
        """Fold one processed step in."""
        self.add_values(obs.grad_norm, obs.health, drift.norm_drift, drift.health_drift, report.score)

    def add_values(self, g: float, health: float, norm_drift: float, health_drift: float, score: float) -> None:
        """``add`` from the fields it reads (``_max`` inlined: NaN loses, Inf wins)."""
        a = self._norm_drift_max
        if a != a or norm_drift > a:
            self._norm_drift_max = norm_drift
        a = self._health_drift_max
        if a != a or health_drift > a:
            self._health_drift_max = health_drift
        a = self._score_max
        if a != a or score > a:
            self._score_max = score
        a = self._grad_norm_max
        if a != a or g > a:
            self._grad_norm_max = g
        h = self._health_min
        if h != h or health < h:
            self._health_min = health
        counters = self.counters
        counters["steps"] += 1
        if not math.isfinite(g):
            counters["nonfinite_steps"] += 1

    def row(
        self,
        obs: Observation,
        drift: DriftUpdate,
        report: AnomalyReport,
        *,
        escalated: bool,
        event: bool,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The metrics of one logged row (unprefixed names); starts a new window."""
        counters = self.counters
        row: dict[str, Any] = {
            "grad_norm": obs.grad_norm,
            "grad_norm_ema": drift.norm_ema,
            "norm_drift": drift.norm_drift,
            "health": obs.health,
            "health_ema": drift.health_ema,
            "health_drift": drift.health_drift,
            "active_share": obs.active_share,
            "score": report.score,
            "escalated": int(escalated),
            "escalation_event": int(event),
            "norm_drift_max": self._norm_drift_max,
            "health_drift_max": self._health_drift_max,
            "score_max": self._score_max,
            "grad_norm_max": self._grad_norm_max,
            "health_min": self._health_min,
            "nonfinite_steps": counters["nonfinite_steps"],
            "skipped_steps": counters["skipped_steps"],
            "escalations": counters["escalations"],
        }
        if obs.lr is not None:
            row["lr"] = obs.lr
        if obs.loss is not None:
            row["loss"] = obs.loss
        if extra:
            row.update(extra)
        self._reset_window()
        return row

    def state_dict(self) -> dict[str, Any]:
        """Window and counters, as plain Python values."""
        return {"window": self.window, "counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        check_state_keys("LogAggregator", state, ("window", "counters"))
        check_state_keys("LogAggregator.window", state["window"], self._WINDOW)
        check_state_keys("LogAggregator.counters", state["counters"], self._COUNTERS)
        self.window = {k: float(v) for k, v in state["window"].items()}
        self.counters = {k: int(v) for k, v in state["counters"].items()}
