"""Where the monitor's in-step time goes: hook and norms, judging, W&B rows.

The monitor's work inside a training step (its step pre-hook and ``observe_loss``, bracketed by
the trainer's probes) is split by timing two of its parts on the instance, unprofiled:
``Decisions.judge_queue`` (read-back, tracker, detector, escalation policy, cadence) minus the
rows it builds (``LogAggregator.row``), and the rows: built and written
(``Decisions.write_rows``). The rest is the hook and the norms (measuring, queueing, the
loss). Each wrapper adds a fraction of a microsecond per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .variants import CLOCK, Trainer

__all__ = ["Breakdown", "measure_breakdown"]


@dataclass(frozen=True)
class Breakdown:
    """Microseconds per step of each part of the monitor's in-step time."""

    steps: int
    total_us: float
    judging_us: float
    rows_us: float
    rows: int

    @property
    def hook_us(self) -> float:
        """Hook and norms: measuring, queueing, the loss (what is not judging or rows)."""
        return self.total_us - self.judging_us - self.rows_us

    def line(self) -> str:
        """One line: the three parts, in µs per step and shares."""
        total = self.total_us or 1e-9
        parts = (("hook and norms", self.hook_us), ("judging", self.judging_us), ("W&B rows", self.rows_us))
        shown = "; ".join(f"{name} {us:.1f} µs ({us / total:.0%})" for name, us in parts)
        return (
            f"breakdown of watch() at defaults + offline run, in-step over {self.steps} steps: {self.total_us:.1f} µs "
            f"per step = {shown} ({self.rows} rows)"
        )


def _timed(obj: Any, name: str, into: list[int], rows: list[int] | None = None) -> Callable[[], None]:
    """Wrap ``obj.name`` (on the instance) to add its time to ``into[0]``; returns the undo."""
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = CLOCK.now_ns()
        try:
            return original(*args, **kwargs)
        finally:
            into[0] += CLOCK.now_ns() - t0
            if rows is not None:
                rows[0] += 1

    setattr(obj, name, wrapper)
    return lambda: delattr(obj, name)


def measure_breakdown(t: Trainer, steps: int) -> Breakdown:
    """Run ``steps`` steps of ``t`` (a warmed-up monitor variant) with its parts timed."""
    monitor = t.monitor
    assert monitor is not None
    judging, built, written, rows = [0], [0], [0], [0]
    undo = [
        _timed(monitor.decisions, "judge_queue", judging),
        _timed(monitor.judge.aggregator, "row", built, rows),
        _timed(monitor.decisions, "write_rows", written),
    ]
    direct = t.direct_ns
    try:
        for _ in range(steps):
            t.step()
    finally:
        for u in undo:
            u()
    total = (t.direct_ns - direct) / steps / 1e3
    return Breakdown(
        steps=steps,
        total_us=total,
        judging_us=(judging[0] - built[0]) / steps / 1e3,
        rows_us=(built[0] + written[0]) / steps / 1e3,
        rows=rows[0],
    )
