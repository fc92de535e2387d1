"""LogCadence: which decided steps get a W&B row.

A fixed ``log_every`` logs every N-th step. The adaptive default spaces rows so that logging
takes about ``LOG_BUDGET`` of training time, never more than ``MAX_LOG_INTERVAL`` steps apart.
The cadence only picks rows among steps already decided; it never makes a step a decision step
(that is a function of the step count alone, the same on every rank).
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["LOG_BUDGET", "MAX_LOG_INTERVAL", "LogCadence", "log_interval"]

#: Share of training time logging may take with the adaptive cadence.
LOG_BUDGET = 0.01
#: The longest gap between two rows with the adaptive cadence, in steps.
MAX_LOG_INTERVAL = 100
#: What one row costs before it has been measured (seconds).
_DEFAULT_ROW_SECONDS = 1e-3


def log_interval(log_seconds: float, step_seconds: float | None) -> int:
    """Steps between rows so that logging takes at most ``LOG_BUDGET`` of training time.

    A row that costs ``log_seconds`` is worth one every ``log_seconds / (LOG_BUDGET *
    step_seconds)`` steps, clamped to [1, ``MAX_LOG_INTERVAL``]; 10 until a step time is known.

    Example:
        >>> log_interval(0.0006, 0.005)  # a 0.6 ms row beside 5 ms steps
        12
        >>> log_interval(0.0006, 0.5)  # beside 0.5 s steps: every step
        1
    """
    if step_seconds is None or step_seconds <= 0:
        return 10
    return min(max(math.ceil(log_seconds / (LOG_BUDGET * step_seconds)), 1), MAX_LOG_INTERVAL)


class LogCadence:
    """Decides whether a decided step's row is logged.

    Args:
        log_every: a fixed interval in steps, or None for the adaptive cadence.
    """

    def __init__(self, log_every: int | None) -> None:
        self.log_every = log_every
        self.next_log = 0  # adaptive: the step of the next regular row
        self.step_seconds: float | None = None  # EMA of the wall time between optimizer steps
        self.row_seconds: float | None = None  # EMA of what writing one row costs
        self._last_tick: float | None = None

    def tick(self) -> None:
        """Called once per optimizer step: keeps the step-time estimate (adaptive only)."""
        if self.log_every is not None:
            return
        now = time.perf_counter()
        if self._last_tick is not None:
            dt = now - self._last_tick
            if self.step_seconds is None:
                self.step_seconds = dt
            else:  # a pause (evaluation, checkpoint) counts as two steps at most
                self.step_seconds = 0.8 * self.step_seconds + 0.2 * min(dt, 2.0 * self.step_seconds)
        self._last_tick = now

    def due(self, step: int) -> bool:
        """A regular row is due at ``step``."""
        return step % self.log_every == 0 if self.log_every is not None else step >= self.next_log

    def logged(self, step: int) -> None:
        """A row was built for ``step``: schedule the next regular one (adaptive only)."""
        if self.log_every is None:
            cost = self.row_seconds if self.row_seconds is not None else _DEFAULT_ROW_SECONDS
            self.next_log = step + log_interval(cost, self.step_seconds)

    def measured(self, seconds: float, rows: int) -> None:
        """Writing ``rows`` rows took ``seconds``: update the per-row cost."""
        if rows <= 0:
            return
        per_row = seconds / rows
        self.row_seconds = per_row if self.row_seconds is None else 0.7 * self.row_seconds + 0.3 * per_row

    def state_dict(self) -> dict[str, Any]:
        """The schedule (timings are wall-clock estimates, not state)."""
        return {"next_log": self.next_log}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``."""
        self.next_log = int(state["next_log"])
