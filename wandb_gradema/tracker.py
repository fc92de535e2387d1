"""GradientEMATracker: the classic EMA drift indicators of gradient norm and health."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._validate import check_float, check_state_keys

__all__ = ["DriftUpdate", "GradientEMATracker"]


@dataclass(frozen=True, slots=True)
class DriftUpdate:
    """What one ``GradientEMATracker.update`` returns.

    Attributes:
        norm_ema: EMA of the gradient norm after this update.
        health_ema: EMA of the health score after this update.
        norm_drift: ``|grad_norm - ema| / (ema + eps)`` against the EMA *before* the update.
        health_drift: the same for the health score.
        updated: False when the input was non-finite and the EMA was left as it was.
    """

    norm_ema: float
    health_ema: float
    norm_drift: float
    health_drift: float
    updated: bool


class GradientEMATracker:
    """Exponential moving averages of gradient norm and health, and their relative drift.

    ``ema_t = decay * ema_{t-1} + (1 - decay) * x_t``; the first update sets ``ema = x``.
    ``drift_t = |x_t - ema_{t-1}| / (ema_{t-1} + eps)``, computed before the EMA moves, so a
    sudden jump shows at full size on the step it happens. These are the indicators users of
    the original tracker know; they are logged, while the decision to escalate belongs to
    ``AnomalyDetector``, because drift alone fires on ordinary noise.

    Non-finite gradients: a NaN or Inf norm or health gives ``norm_drift = inf`` and leaves both
    EMAs untouched, so one bad step never poisons the baseline.

    Args:
        decay: EMA decay in [0, 1). Default 0.99.
        eps: added to the EMA in the drift denominator, > 0. Default 1e-8.

    Example:
        >>> t = GradientEMATracker(decay=0.9)
        >>> t.update(1.0, 1.0).norm_drift
        0.0
        >>> round(t.update(2.0, 1.0).norm_drift, 3)
        1.0
    """

    def __init__(self, decay: float = 0.99, eps: float = 1e-8) -> None:
        decay = check_float("decay", decay, low=0.0, high=1.0, high_open=True)
        eps = check_float("eps", eps, low=0.0, low_open=True)
        self.decay = decay
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        """Forget every observation."""
        self.norm_ema: float | None = None
        self.health_ema: float | None = None
        self.count = 0

    def update(self, grad_norm: float, grad_health: float) -> DriftUpdate:
        """Fold one step's gradient norm and health score in; return EMAs and drift."""
        return DriftUpdate(*self.fold(grad_norm, grad_health))

    def fold(self, grad_norm: float, grad_health: float) -> tuple[float, float, float, float, bool]:
        """``update`` with the ``DriftUpdate`` fields as a plain tuple: the monitor's per-step
        call, which builds a quiet step's objects only when they are asked for."""
        grad_norm = float(grad_norm)
        grad_health = float(grad_health)
        norm_ema, health_ema = self.norm_ema, self.health_ema
        if not (math.isfinite(grad_norm) and math.isfinite(grad_health)):
            return (
                math.nan if norm_ema is None else norm_ema,
                math.nan if health_ema is None else health_ema,
                math.inf,
                math.inf,
                False,
            )
        if norm_ema is None or health_ema is None:
            self.norm_ema, self.health_ema = grad_norm, grad_health
            self.count = 1
            return grad_norm, grad_health, 0.0, 0.0, True
        eps = self.eps
        norm_drift = abs(grad_norm - norm_ema) / (norm_ema + eps)
        health_drift = abs(grad_health - health_ema) / (health_ema + eps)
        d = self.decay
        r = 1.0 - d
        self.norm_ema = norm_ema = d * norm_ema + r * grad_norm
        self.health_ema = health_ema = d * health_ema + r * grad_health
        self.count += 1
        return norm_ema, health_ema, norm_drift, health_drift, True

    def state_dict(self) -> dict[str, Any]:
        """The EMAs and count, as plain Python values."""
        return {"norm_ema": self.norm_ema, "health_ema": self.health_ema, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        check_state_keys("GradientEMATracker", state, ("norm_ema", "health_ema", "count"))
        self.norm_ema = state["norm_ema"]
        self.health_ema = state["health_ema"]
        self.count = int(state["count"])

