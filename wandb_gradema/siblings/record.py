"""SiblingRecord: a run's compact trajectory (what the detector reads), thinned to stay small.

Every ``stride`` optimizer steps the builder emits one ``SiblingPoint``: the loss level (median
of the recent losses), its per-step noise (robust spread of successive differences, so a trend
does not count as noise), the total-norm level, the active share and the LR. When the record
holds ``2 * max_points`` points every other one is dropped and the stride doubles, so a
100k-step run keeps at most ``2 * max_points`` points, spread evenly over the run.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FORMAT", "RecordBuilder", "SiblingPoint", "SiblingRecord", "robust_noise"]

#: Version of the record's JSON form.
FORMAT = 1
#: Recent losses kept for the level and the noise.
RECENT = 32
#: Losses the level is the median of.
LEVEL_OF = 16


@dataclass(frozen=True)
class SiblingPoint:
    """One thinned point of a run's trajectory (NaN where unknown).

    Attributes:
        step: the optimizer step (0-based) the point ends at.
        loss: the loss level (median of the last ``LEVEL_OF`` finite losses).
        noise: per-step loss noise (robust spread of successive differences).
        norm: the total gradient norm level (median of the recent finite norms).
        active: the share of gradient tensors with a live gradient (mean over the stride).
        lr: the learning rate at ``step``.
        nonfinite: a non-finite loss or norm was seen since the previous point.
    """

    step: int
    loss: float
    noise: float
    norm: float
    active: float
    lr: float
    nonfinite: bool = False


@dataclass
class SiblingRecord:
    """A run as its siblings see it: thinned trajectory, end state and key config.

    Attributes:
        run_id: the run's id (W&B run id, Optuna trial number...).
        state: ``"running"``, ``"finished"``, ``"pruned"`` or ``"failed"``.
        final_metric: the sweep metric it ended with (None: not known).
        config: the run's key config (``batch_size``, ``lr``...), plain values.
        points: the thinned trajectory.
        steps: optimizer steps observed.
        cause: why it was pruned (``"behind"``, ``"dead"``, ``"diverged"``, a rule name) or "".
    """

    run_id: str
    state: str = "running"
    final_metric: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    points: list[SiblingPoint] = field(default_factory=list)
    steps: int = 0
    cause: str = ""

    @property
    def pruned(self) -> bool:
        return self.state == "pruned"

    @property
    def healthy(self) -> bool:
        """Finished, not pruned, with a finite end (its metric, else its last loss level)."""
        if self.state != "finished" or not self.points:
            return False
        end = self.final_metric if self.final_metric is not None else self.points[-1].loss
        return isinstance(end, (int, float)) and math.isfinite(end) and not any(p.nonfinite for p in self.points[-3:])

    def to_json(self) -> dict[str, Any]:
        """Plain values (points as lists, to stay compact)."""
        body = asdict(self)
        body["points"] = [[p.step, p.loss, p.noise, p.norm, p.active, p.lr, int(p.nonfinite)] for p in self.points]
        body["format"] = FORMAT
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SiblingRecord:
        """The inverse of ``to_json`` (raises ``ValueError`` on a record it cannot read)."""
        if not isinstance(body, dict) or body.get("format") != FORMAT or "run_id" not in body:
            raise ValueError("not a sibling record of this format")
        points = [
            SiblingPoint(int(p[0]), float(p[1]), float(p[2]), float(p[3]), float(p[4]), float(p[5]), bool(p[6]))
            for p in body.get("points", [])
        ]
        metric = body.get("final_metric")
        return cls(
            run_id=str(body["run_id"]),
            state=str(body.get("state", "running")),
            final_metric=float(metric) if isinstance(metric, (int, float)) else None,
            config=dict(body.get("config") or {}),
            points=points,
            steps=int(body.get("steps", 0)),
            cause=str(body.get("cause", "")),
        )


def robust_noise(values: list[float]) -> float:
    """Per-step noise of a series: 1.4826 * median |successive difference| / sqrt(2)."""
    diffs = sorted(abs(b - a) for a, b in zip(values, values[1:], strict=False))
    if not diffs:
        return math.nan
    return 1.4826 * _median(diffs) / math.sqrt(2)


def _median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


class RecordBuilder:
    """Builds a ``SiblingRecord`` step by step; O(1) per step, a sort of 32 values per point.

    Args:
        run_id: the record's run id.
        config: the run's key config.
        stride: steps between points at the start.
        max_points: points kept before thinning halves them (and doubles the stride).
    """

    def __init__(self, run_id: str, config: dict[str, Any] | None = None, *, stride: int = 4, max_points: int = 128) -> None:
        self.record = SiblingRecord(run_id=run_id, config=dict(config or {}))
        self.stride = stride
        self.max_points = max_points
        self._losses: deque[float] = deque(maxlen=RECENT)
        self._norms: deque[float] = deque(maxlen=LEVEL_OF)
        self._active_sum = 0.0
        self._count = 0
        self._nonfinite = False
        self._lr = math.nan

    def observe(self, step: int, loss: float | None, norm: float, active: float, lr: float | None) -> SiblingPoint | None:
        """Add one step; returns the point emitted on this step, if any."""
        self.record.steps = step + 1
        if loss is not None:
            if math.isfinite(loss):
                self._losses.append(float(loss))
            else:
                self._nonfinite = True
        if math.isfinite(norm):
            self._norms.append(float(norm))
        else:
            self._nonfinite = True
        self._active_sum += active
        self._count += 1
        if lr is not None:
            self._lr = float(lr)
        if (step + 1) % self.stride:
            return None
        return self._emit(step)

    def _emit(self, step: int) -> SiblingPoint:
        recent = list(self._losses)
        level = _median(sorted(recent[-LEVEL_OF:])) if recent else math.nan
        norm = _median(sorted(self._norms)) if self._norms else math.nan
        point = SiblingPoint(
            step=step,
            loss=level,
            noise=robust_noise(recent),
            norm=norm,
            active=self._active_sum / self._count if self._count else math.nan,
            lr=self._lr,
            nonfinite=self._nonfinite,
        )
        self._active_sum, self._count, self._nonfinite = 0.0, 0, False
        points = self.record.points
        points.append(point)
        if len(points) >= 2 * self.max_points:
            self.record.points = points[::2] if points[-1] is points[::2][-1] else [*points[::2], points[-1]]
            self.stride *= 2
        return point
