"""LogAggregator: what happened between two logged rows, so thinned logging loses nothing."""

from __future__ import annotations

import math
from typing import Any

from ._validate import check_state_keys
from .detector import AnomalyReport, Observation
from .tracker import DriftUpdate

__all__ = ["LogAggregator"]

_NAN = math.nan


def _max(a: float, b: float) -> float:
    """max() where NaN loses and Inf wins: a non-finite drift must show in the maximum."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return a if a >= b else b


class LogAggregator:
    """Keeps per-window maxima and run-long counters; builds the row for one W&B log call.

    Window values (reset after each logged row): the largest norm drift, health drift,
    detector score and gradient norm, and the lowest health seen since the previous row.
    Counters (never reset): steps observed, steps with non-finite gradients, steps skipped by
    a GradScaler, escalations.
    """

    _WINDOW = ("norm_drift_max", "health_drift_max", "score_max", "grad_norm_max", "health_min")
    _COUNTERS = ("steps", "nonfinite_steps", "skipped_steps", "escalations")

    def __init__(self) -> None:
        self.window: dict[str, float] = {}
        self.counters: dict[str, int] = dict.fromkeys(self._COUNTERS, 0)
        self._reset_window()

    def _reset_window(self) -> None:
        self.window = dict.fromkeys(self._WINDOW, _NAN)

    def add(self, obs: Observation, drift: DriftUpdate, report: AnomalyReport) -> None:
        """Fold one processed step in."""
        w = self.window
        w["norm_drift_max"] = _max(w["norm_drift_max"], drift.norm_drift)
        w["health_drift_max"] = _max(w["health_drift_max"], drift.health_drift)
        w["score_max"] = _max(w["score_max"], report.score)
        w["grad_norm_max"] = _max(w["grad_norm_max"], obs.grad_norm)
        h = w["health_min"]
        w["health_min"] = obs.health if math.isnan(h) or obs.health < h else h
        self.counters["steps"] += 1
        if not math.isfinite(obs.grad_norm):
            self.counters["nonfinite_steps"] += 1

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
            **self.window,
            **{k: v for k, v in self.counters.items() if k != "steps"},
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
        return {"window": dict(self.window), "counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        check_state_keys("LogAggregator", state, ("window", "counters"))
        check_state_keys("LogAggregator.window", state["window"], self._WINDOW)
        check_state_keys("LogAggregator.counters", state["counters"], self._COUNTERS)
        self.window = {k: float(v) for k, v in state["window"].items()}
        self.counters = {k: int(v) for k, v in state["counters"].items()}
